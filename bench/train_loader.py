"""Does the training loader keep up with real JPEGs? ``gtaseg train``'s images/s on Stanford Cars against the same
step on in-memory tensors, at the same model, size, batch and thread count.

* ``train --workers W`` for each ``--workers`` value: the real command in a subprocess, on the photos of
  ``<data-root>/train`` (JPEG decoding, RandAugment, the collate, the loader's hand-off) with the objective's
  step. Its figure is the median ``images_per_s`` of ``metrics.jsonl`` over the log intervals after the first
  (the first holds the workers' start and the first batches).
* ``in-memory``: ``bench/train_step.py``'s step of the same method on one fixed batch of random tensors, no data
  on disk: the ceiling the loader is measured against. Its images/s is the batch over the median step.

The target (issue 19): every ``train`` figure at least 0.9 × the in-memory one (``--min-ratio``).

The run trains on a folder of links in a temporary directory: ``train/`` is the real one, ``test/`` holds one
photo per class, so the end-of-run evaluation that every ``gtaseg train`` does costs seconds, not minutes.
Nothing is copied. On the CPU with one thread (a few minutes per setting on a 2-core machine)::

    OMP_NUM_THREADS=1 python bench/train_loader.py --json bench/results-loader-cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CARS = Path(__file__).resolve().parents[2] / "shared" / "data" / "stanford-cars"
TRAIN_STEP = Path(__file__).resolve().parent / "train_step.py"


def linked_root(data_root: Path, into: Path) -> Path:
    """An ImageFolder root in ``into``: ``train`` links to the real one, ``test`` to one photo per class."""
    root = into / "data"
    root.mkdir()
    (root / "train").symlink_to(data_root.resolve() / "train", target_is_directory=True)
    for cls in sorted(p for p in (data_root / "train").iterdir() if p.is_dir()):
        first = min(cls.iterdir())
        (root / "test" / cls.name).mkdir(parents=True)
        (root / "test" / cls.name / first.name).symlink_to(first.resolve())
    return root


def train_rate(args, root: Path, workers: int, out: Path) -> dict:
    """``gtaseg train`` with ``workers`` loader processes: median images/s after the first log interval."""
    cmd = [sys.executable, "-m", "gtaseg.cli", "train", "--data", str(root), "--init", f"random:{args.arch}",
           "--method", args.method, "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
           "--steps", str(args.steps), "--log-every", str(args.log_every), "--workers", str(workers),
           "--device", args.device, "--out", str(out)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in rows[1:]]
    return {"images_per_s": statistics.median(rates), "intervals": rates, "first_interval": rows[0]["images_per_s"],
            "command": " ".join(cmd), "wall_s": round(time.perf_counter() - start, 1)}


def in_memory_rate(args, out: Path) -> dict:
    """bench/train_step.py's step of the same method and shapes on tensors: images/s of its median step."""
    cmd = [sys.executable, str(TRAIN_STEP), "--arch", args.arch, "--classes", str(args.classes), "--configs",
           args.method, "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
           "--threads", str(args.threads), "--steps", str(args.memory_steps), "--warmup", "2", "--memory", "none",
           "--eval-limit", "0", "--device", args.device, "--json", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    times = json.loads(out.read_text())["runs"]["eager"]["times"][args.method]
    return {"images_per_s": args.batch_size / times["median_s"], "median_step_s": times["median_s"],
            "steps_s": times["all_s"], "command": " ".join(cmd)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(CARS), help="ImageFolder with train/<class>/*.jpg")
    p.add_argument("--arch", default="vit_small_patch14_dinov2", help="timm ViT, randomly initialised in both")
    p.add_argument("--classes", type=int, default=196, help="the in-memory step's head (Cars: 196)")
    p.add_argument("--method", default="gta")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", default="0,1,2", help="gtaseg train --workers values, comma-separated")
    p.add_argument("--steps", type=int, default=24, help="gtaseg train --steps per setting")
    p.add_argument("--log-every", type=int, default=4, help="gtaseg train --log-every: one figure per interval")
    p.add_argument("--memory-steps", type=int, default=8, help="timed in-memory steps (after 2 warm-up)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of both")
    p.add_argument("--device", default="cpu")
    p.add_argument("--min-ratio", type=float, default=0.9, help="exit 1 when a train figure is below this × in-memory")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    data_root = Path(args.data_root)
    if not (data_root / "train").is_dir():
        sys.exit(f"{data_root}/train: not found (Stanford Cars beside the repository, ../shared/data/stanford-cars)")

    results: dict = {"settings": vars(args), "environment": {
        "python": platform.python_version(), "cpu_cores": os.cpu_count(), "load_average_at_start": os.getloadavg()}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = linked_root(data_root, tmp)
        results["in_memory"] = in_memory_rate(args, tmp / "step.json")
        ceiling = results["in_memory"]["images_per_s"]
        print(f"in-memory step: {ceiling:.2f} img/s", file=sys.stderr)
        results["train"] = {}
        for w in (int(x) for x in args.workers.split(",")):
            run = train_rate(args, root, w, tmp / f"run-w{w}")
            run["ratio"] = run["images_per_s"] / ceiling
            results["train"][f"workers={w}"] = run
            print(f"gtaseg train --workers {w}: {run['images_per_s']:.2f} img/s, {run['ratio']:.3f} x in-memory",
                  file=sys.stderr)
    results["environment"]["load_average_at_end"] = os.getloadavg()
    worst = min(r["ratio"] for r in results["train"].values())
    results["target"] = {"min_ratio": args.min_ratio, "worst_ratio": worst, "met": worst >= args.min_ratio}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if worst < args.min_ratio:
        print(f"FAIL: worst ratio {worst:.3f} below {args.min_ratio}", file=sys.stderr)
        sys.exit(1)
    return results


if __name__ == "__main__":
    main()
