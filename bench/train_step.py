"""Train-step cost of GTA against plain fine-tuning, the frozen source's forward and a naive GTA.

One process, one model, one fixed batch. Every timed round runs, in turn:

* ``baseline``: :func:`gtaseg.train.optimizer_step` of ``--method baseline`` (cross-entropy only);
* ``gta``: :func:`gtaseg.train.optimizer_step` of ``--method gta`` (this project's path: fused SDPA stays on, the [cls]
  row of each block is computed from the qkv projection by a forward hook);
* ``naive``: the same GTA trainer and step the way attention-visualisation code gets attention: fused
  attention turned off in target and source (each block builds its T×T softmax map), and the full
  pre-softmax T×T map q·kᵀ of every block computed in the qkv hook and kept until the step ends; the loss
  reads the [cls] row of those maps, so its value is the project path's;
* ``source``: the frozen source's forward alone, under ``torch.inference_mode()``.

On request (``--configs``, not run by default) the attention-transfer baselines (gtaseg/distill.py), the same
trainer and step as ``gta`` with their own term:

* ``attn-distill``: cross-entropy between source and target post-softmax maps of all queries, T×T per block
  formed from the captured q and k, in chunks of queries;
* ``cls-distill``: the same on the [cls] row only, from the capture GTA uses.

The floor of any GTA is ``baseline + source``. Times are medians over ``--steps`` rounds after ``--warmup``
rounds; the configurations are interleaved so that drift of the machine hits them all alike, and the
per-round ("paired") ratios are reported beside the ratios of medians.

Peak memory is measured in a separate child process per configuration: the process's peak RSS (VmHWM; peak
RSS is per process and never goes down), that peak minus the RSS just before the first step (the step's
working set), on the CPU torch's allocator view (tensors held between steps + the peak one step allocates,
from the profiler's memory events) and on a GPU ``torch.cuda.max_memory_allocated``.

CPU defaults (a few minutes on 2 idle cores)::

    python bench/train_step.py --json bench/results-cpu.json

GPU (bf16 autocast, fused SDPA, batch 256, torch.compile on and off)::

    python bench/train_step.py --device cuda --batch-size 256 --steps 20 --warmup 5 --compile both \\
        --eval-limit 328 --json bench/results-gpu.json
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

import gtaseg.attention as attention
from gtaseg.config import PRESETS, default
from gtaseg.methods import METHODS
from gtaseg.models import create_vit
from gtaseg.objective import Objective
from gtaseg.optim import build_optimizer, build_scheduler
from gtaseg.train import optimizer_step

CONFIGS = ("baseline", "gta", "naive", "source")
DISTILL = ("attn-distill", "cls-distill")  # measured only when --configs names them
TRAINED = ("gta", "naive", *DISTILL)  # configurations that a train step of a guided method times
HORSES = Path(__file__).resolve().parents[2] / "shared" / "data" / "weizmann-horses-voc"


@dataclass
class Step:
    """One method's objective and optimizer on a randomly initialised model, built from tensors (no data on disk):
    what one optimizer step of ``gtaseg train`` runs, with the paper preset's lr and the method's default λ."""

    method: str
    model: torch.nn.Module
    source: torch.nn.Module | None
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler

    def __call__(self, batches) -> dict:
        return optimizer_step(self.objective, self.optimizer, self.scheduler, batches, accum_steps=1)


def make_step(method: str, args) -> Step:
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = create_vit(args.arch, args.classes).to(device).train()
    spec = METHODS[method]
    spec.freeze(model)
    source = copy.deepcopy(model).eval().requires_grad_(False) if spec.needs_source else None
    objective = Objective(model, spec, source=source, lam=spec.default_lam, reduction=default("lam_reduction"),
                          autocast=torch.bfloat16 if device.type == "cuda" else None)
    if args.compile_now:
        objective.compile()
    paper = PRESETS["paper"]
    optimizer = build_optimizer(model, paper["lr"], default("weight_decay"), paper["head_lr_scale"])
    return Step(method, model, source, objective, optimizer, build_scheduler(optimizer, 10**6))


def fixed_batch(args, classes: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g)
    labels = torch.randint(0, classes, (args.batch_size,), generator=g)
    return images.to(device), labels.to(device)


@contextmanager
def naive_attention(trainer: Step, kept: list):
    """GTA the naive way, on the same trainer and step: fused attention off in target and source, and the
    full pre-softmax T×T map of every block computed (q·kᵀ) and kept in ``kept``; the loss reads the [cls]
    row of those maps, so the loss value is the same as the project's path."""
    def full_map_row(attn, qkv):
        B, T, _ = qkv.shape
        q, k, _v = qkv.reshape(B, T, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        full = (q * attn.scale) @ k.transpose(-2, -1)  # [B, H, T, T]
        kept.append(full)
        return full[:, :, 0, :]

    modules = [b.attn for m in (trainer.model, trainer.source) for b in m.blocks]
    fused = [a.fused_attn for a in modules]
    original = attention._cls_row_logits
    for a in modules:
        a.fused_attn = False
    attention._cls_row_logits = full_map_row
    try:
        yield
    finally:
        attention._cls_row_logits = original
        for a, f in zip(modules, fused):
            a.fused_attn = f


def step_functions(args, configs, all_trainers: bool = False) -> tuple[dict, Step | dict | None]:
    """A zero-argument callable per configuration that runs one step (or one source forward)."""
    device = torch.device(args.device)
    trainers = {}
    if "baseline" in configs:
        trainers["baseline"] = make_step("baseline", args)
    if {"gta", "naive", "source"} & set(configs):
        trainers["gta"] = make_step("gta", args)
    for method in DISTILL:
        if method in configs:
            trainers[method] = make_step(method, args)
    images, labels = fixed_batch(args, args.classes, device)
    for t in trainers.values():
        t.bench_batch = (images, labels)
    batches = itertools.repeat((images, labels))
    fns = {}
    if "baseline" in configs:
        fns["baseline"] = lambda: trainers["baseline"](batches)
    if "gta" in configs:
        fns["gta"] = lambda: trainers["gta"](batches)
    for method in DISTILL:
        if method in configs:
            fns[method] = lambda method=method: trainers[method](batches)
    if "naive" in configs:
        kept: list = []

        def naive():
            kept.clear()
            with naive_attention(trainers["gta"], kept):
                return trainers["gta"](batches)
        fns["naive"] = naive
    if "source" in configs:
        gta = trainers["gta"]

        def source():
            with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                return gta.objective.source_features(images)  # the objective's (compiled with --compile) source forward
        fns["source"] = source
    return fns, (trainers if all_trainers else trainers.get("gta"))


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_now_mb() -> float:
    return _status_mb("VmRSS")


def max_rss_mb() -> float:
    """Peak RSS of this process. VmHWM, not ``ru_maxrss``: Linux carries ``ru_maxrss`` over from the parent
    across fork+exec, so a child of a large benchmark process would report the parent's peak."""
    hwm = _status_mb("VmHWM")
    return hwm if hwm == hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tensor_bytes(*objects) -> int:
    """Bytes of the distinct storages held by modules' parameters, buffers and gradients and by optimizers'
    state: what the allocator holds between steps."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            key = (t.untyped_storage().data_ptr(), t.device)
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            for t in itertools.chain(obj.parameters(), obj.buffers()):
                add(t)
                add(t.grad)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                for t in state.values():
                    add(t)
        else:
            add(obj)
    return total


def allocator_peak_mb(fn) -> float:
    """Peak of the bytes torch's CPU allocator handed out during one call of ``fn``, above what was allocated
    when it started, from the profiler's memory events (allocations positive, frees negative)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    level = peak = 0
    for e in events:
        level += e.nbytes()
        peak = max(peak, level)
    return peak / 2**20


def time_configs(args, configs) -> dict:
    """Interleaved rounds of every configuration; per-configuration medians in seconds."""
    fns, _ = step_functions(args, configs)
    times = {c: [] for c in configs}
    cpu = {c: [] for c in configs}
    warm = {c: [] for c in configs}
    for r in range(args.warmup + args.steps):
        for c in configs:
            sync(args.device)
            t0, c0 = time.perf_counter(), time.process_time()
            out = fns[c]()
            if isinstance(out, dict):  # train_step's loss terms: make sure nothing is left queued
                out = {k: float(v) for k, v in out.items()}
            sync(args.device)
            if r >= args.warmup:
                times[c].append(time.perf_counter() - t0)
                cpu[c].append(time.process_time() - c0)
            else:
                warm[c].append(round(time.perf_counter() - t0, 3))
        print(f"  round {r + 1}/{args.warmup + args.steps}: " + "  ".join(
            f"{c} {(times[c] or warm[c])[-1]:.3f}s" for c in configs), file=sys.stderr)
    # Wall-clock medians are the figures; the process's CPU time (all its threads) is kept beside them because
    # on a shared machine other jobs stretch wall time but much less the CPU time this process itself used.
    return {c: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "all_s": [round(x, 4) for x in v],
                "cpu_median_s": statistics.median(cpu[c]), "images_per_s": args.batch_size / statistics.median(v),
                "warmup_s": warm[c]}  # the first warm-up round includes torch.compile's compile time
            for c, v in times.items()}


def child_memory(args, config: str) -> dict:
    """Run inside a fresh process: set up one configuration, then a few steps; report its peaks."""
    fns, trainers = step_functions(args, [config], all_trainers=True)
    cuda = torch.device(args.device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before_gpu = torch.cuda.memory_allocated() / 2**20
    before = rss_now_mb()
    for _ in range(args.memory_steps):
        out = fns[config]()
        if isinstance(out, dict):
            out = {k: float(v) for k, v in out.items()}
    sync(args.device)
    result = {"max_rss_mb": max_rss_mb(), "rss_before_steps_mb": before}
    result["step_rss_mb"] = result["max_rss_mb"] - before
    if not cuda:
        # Allocator view, free of malloc's caching and fragmentation: tensors held between steps (weights,
        # AdamW state, the source, the batch) plus the peak of what one more step allocates on top.
        held = tensor_bytes(*[x for t in trainers.values() for x in (t.model, t.source, t.optimizer)
                              if x is not None], *next(iter(trainers.values())).bench_batch) / 2**20
        step_peak = allocator_peak_mb(fns[config])
        result.update(alloc_held_mb=held, alloc_step_peak_mb=step_peak, alloc_peak_mb=held + step_peak)
    if cuda:
        result["gpu_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu_allocated_before_steps_mb"] = before_gpu
    return result


def measure_memory(args, configs) -> dict:
    out = {}
    for c in configs:
        cmd = [sys.executable, __file__, "--child", c, *args.forward_argv]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"memory child {c} failed:\n{proc.stderr}")
        out[c] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  memory {c}: " + ", ".join(f"{k} {v:.0f}" for k, v in out[c].items()), file=sys.stderr)
    return out


def eval_voc(args) -> dict:
    """Images/s of ``gtaseg eval-voc`` on the real horse photos (``--eval-limit`` of them), run as a user runs it."""
    root = Path(args.voc_root)
    from gtaseg.cli import main as cli

    if "eval-voc" not in cli.commands:
        return {"todo": "TODO: `gtaseg eval-voc` is not in this checkout; eval-voc images/s not measured"}
    if not (root / "ImageSets" / "Segmentation").is_dir():
        return {"todo": f"TODO: {root} not found; eval-voc images/s not measured"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval.json"
        cmd = [sys.executable, "-c", "from gtaseg.cli import main; main()", "eval-voc", "--ckpt", f"random:{args.arch}", "--voc-root", str(root),
               "--limit", str(args.eval_limit), "--device", args.device, "--batch-size", str(args.eval_batch_size),
               "--workers", str(args.eval_workers), "--out", str(out)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        shown = " ".join(["gtaseg", *cmd[3:]])
        if proc.returncode != 0:
            return {"todo": f"TODO: eval-voc failed ({shown}): {proc.stderr.strip()[-400:]}"}
        data = json.loads(out.read_text())
        return {"command": shown, "images": data.get("images"), "seconds": data.get("seconds"),
                "images_per_second": data.get("images_per_second"), "protocol": data.get("protocol"),
                "process_wall_s": round(wall, 2),
                "note": "images_per_second is eval-voc's own figure: data loading, model, masks and scoring, "
                        "after the model is loaded"}


def ratios(times: dict, memory: dict | None, key: str = "median_s", prefix: str = "") -> dict:
    med = {c: v[key] for c, v in times.items()}
    r = {}
    if "baseline" in med:
        for c in TRAINED:
            if c in med:
                r[f"{c}/baseline"] = med[c] / med["baseline"]
        if "source" in med:
            floor = med["baseline"] + med["source"]
            r["floor_s"] = floor
            r["floor/baseline"] = floor / med["baseline"]
            for c in TRAINED:
                if c in med:
                    r[f"{c}/(baseline+source)"] = med[c] / floor
    if "gta" in med:
        for c in DISTILL:
            if c in med:
                r[f"{c}/gta"] = med[c] / med["gta"]
    if not prefix and "baseline" in times:
        # Ratios taken within each round (the configurations ran back to back) and then their median: a
        # machine whose load drifts over the run moves both sides of each ratio together.
        rounds = {c: v["all_s"] for c, v in times.items()}
        for c in TRAINED:
            if c in rounds:
                r[f"paired {c}/baseline"] = statistics.median(x / b for x, b in zip(rounds[c], rounds["baseline"]))
                if "source" in rounds:
                    r[f"paired {c}/(baseline+source)"] = statistics.median(
                        x / (b + s) for x, b, s in zip(rounds[c], rounds["baseline"], rounds["source"]))
    r = {prefix + k: v for k, v in r.items()}
    if memory and "baseline" in memory:
        for key in ("max_rss_mb", "step_rss_mb", "alloc_peak_mb", "alloc_step_peak_mb", "gpu_max_allocated_mb"):
            for c in TRAINED:
                if c in memory and key in memory[c] and memory["baseline"].get(key):
                    r[f"memory {key} {c}/baseline"] = memory[c][key] / memory["baseline"][key]
            if "naive" in memory and "gta" in memory and key in memory["gta"] and memory["naive"].get(key):
                r[f"memory {key} gta/naive"] = memory["gta"][key] / memory["naive"][key]
            for c in DISTILL:
                if c in memory and "gta" in memory and key in memory[c] and memory["gta"].get(key):
                    r[f"memory {key} {c}/gta"] = memory[c][key] / memory["gta"][key]
    return {k: round(v, 4) for k, v in r.items()}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="vit_small_patch16_224", help="timm ViT, randomly initialised")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--classes", type=int, default=10, help="classes of the new head")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads [default: torch's]")
    p.add_argument("--steps", type=int, default=10, help="timed rounds")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help=f"comma-separated subset of {','.join(CONFIGS + DISTILL)} (the last two only when named)")
    p.add_argument("--memory", choices=("process", "none"), default="process",
                   help="peak memory from one child process per configuration, or skip it")
    p.add_argument("--memory-steps", type=int, default=3, help="steps each memory child runs")
    p.add_argument("--compile", choices=("off", "on", "both"), default="off",
                   help="torch.compile target and source (both: measure off, then on)")
    p.add_argument("--voc-root", default=str(HORSES), help="VOC-layout data for the eval-voc timing")
    p.add_argument("--eval-limit", type=int, default=16, help="images for the eval-voc timing (0: skip)")
    p.add_argument("--eval-batch-size", type=int, default=8, help="eval-voc --batch-size")
    p.add_argument("--eval-workers", type=int, default=2, help="eval-voc --workers")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--compile-now", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child_memory(args, args.child)))
        return {}
    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGS + DISTILL)
    if unknown:
        raise SystemExit(f"unknown --configs {sorted(unknown)}; choose from {CONFIGS + DISTILL}")
    results = {"settings": {k: v for k, v in vars(args).items() if k not in ("child", "compile_now")},
               "environment": {"torch": torch.__version__, "python": platform.python_version(),
                               "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                               "device": torch.cuda.get_device_name(torch.device(args.device))
                               if torch.device(args.device).type == "cuda" else "cpu",
                               "precision": "bf16 autocast" if torch.device(args.device).type == "cuda" else "fp32",
                               "cpu_cores": os.cpu_count(), "load_average_at_start": os.getloadavg()},
               "memory_method": "one child process per configuration: max_rss_mb = peak RSS of that process (VmHWM); "
                                "step_rss_mb = that peak minus the RSS just before the first step; "
                                "alloc_peak_mb (CPU) = torch's CPU allocator: bytes of the tensors held between "
                                "steps (weights, grads, AdamW state, source, batch) + the peak of what one more "
                                "step allocates (profiler memory events); "
                                "gpu_max_allocated_mb = torch.cuda.max_memory_allocated (GPU only)",
               "runs": {}}
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    for compiled in modes:
        name = "compiled" if compiled else "eager"
        args.compile_now = compiled
        run_configs = [c for c in configs if not (compiled and c == "naive")]  # naive is an eager reference
        print(f"[{name}] timing {', '.join(run_configs)}", file=sys.stderr)
        times = time_configs(args, run_configs)
        memory = None
        if args.memory == "process":
            args.forward_argv = [a for a in argv if a != "--compile-now"] + (["--compile-now"] if compiled else [])
            args.forward_argv = _without_option(args.forward_argv, "--compile")
            memory = measure_memory(args, run_configs)
        results["runs"][name] = {"times": times, "memory": memory, "ratios": ratios(times, memory),
                                 "cpu_time_ratios": ratios(times, None, "cpu_median_s", "cpu "),
                                 "min_ratios": ratios(times, None, "min_s", "min ")}
    if args.eval_limit > 0:
        results["eval_voc"] = eval_voc(args)
    else:
        results["eval_voc"] = {"todo": "skipped (--eval-limit 0)"}
    results["environment"]["load_average_at_end"] = os.getloadavg()
    report(results)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


def _without_option(argv: list[str], name: str) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == name:
            skip = True
            continue
        if a.startswith(name + "="):
            continue
        out.append(a)
    return out


def report(results: dict) -> None:
    env = results["environment"]
    s = results["settings"]
    print(f"\n{s['arch']} at {s['image_size']}, batch {s['batch_size']}, {env['device']} ({env['precision']}, "
          f"{env['threads']} threads), median of {s['steps']} after {s['warmup']} warm-up; load average "
          f"{env['load_average_at_start'][0]:.1f} at start, {env['load_average_at_end'][0]:.1f} at end "
          f"on {env['cpu_cores']} cores")
    for name, run in results["runs"].items():
        print(f"\n[{name}]")
        print(f"{'config':<10}{'median s':>10}{'CPU s':>9}{'img/s':>9}{'max RSS MB':>12}{'step RSS MB':>13}{'GPU peak MB':>13}")
        for c, t in run["times"].items():
            m = (run["memory"] or {}).get(c, {})
            print(f"{c:<10}{t['median_s']:>10.4f}{t['cpu_median_s']:>9.3f}{s['batch_size'] / t['median_s']:>9.1f}"
                  f"{m.get('max_rss_mb', float('nan')):>12.0f}{m.get('step_rss_mb', float('nan')):>13.0f}"
                  f"{m.get('gpu_max_allocated_mb', float('nan')):>13.0f}")
        for k, v in {**run["ratios"], **run["cpu_time_ratios"], **run["min_ratios"]}.items():
            print(f"  {k}: {v}")
    print(f"\neval-voc: {results['eval_voc']}")


if __name__ == "__main__":
    main()
