"""Fine-tune a ViT with GTA or a comparison method: :func:`train`, top to bottom.

It builds the run (:func:`build_training`: data, networks, objective, optimizer), resumes it from its
checkpoint when asked, runs the loop, and evaluates. One optimizer step is :func:`optimizer_step`:
``accum_steps`` micro-batches through :meth:`gtaseg.objective.Objective.loss`, gradients averaged across
torchrun's ranks on the last one. Under torchrun every rank calls :func:`train`; rank 0 writes the files.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from gtaseg import distributed
from gtaseg.checkpointing import load_state, restore, save_checkpoint, set_rng_state
from gtaseg.config import TrainConfig, changed_options, resolve
from gtaseg.data.pipeline import (BadImages, Batches, has_validation, run_split, train_dataset,
                                  train_split as load_train_split)
from gtaseg.data.split import Split
from gtaseg.errors import CheckpointError, GtasegError
from gtaseg.evaluation.end_of_run import DriftProbe, attention_quality, split_accuracy, split_scores
from gtaseg.methods import METHODS
from gtaseg.models import ModelInfo, load_model, save_model
from gtaseg.objective import Objective, check_source, renormalizer
from gtaseg.optim import build_optimizer, build_scheduler
from gtaseg.rundir import CONFIG, RunDir
from gtaseg.stopping import FiniteGuard, Interrupted, NonFiniteLoss, StopSignals
from gtaseg.transmix import TransMix

# Under torchrun a stop signal is polled every this many steps: polling costs a collective and a host sync.
SIGNAL_POLL_STEPS = 10


@dataclass
class Training:
    """What a run is built from (:func:`build_training`); the loop, the checkpoint and the evaluation use it."""

    cfg: TrainConfig
    device: torch.device
    train_split: Split
    test_split: Split
    model: nn.Module  # the target, bare: the optimizer, saving and evaluation use it
    info: ModelInfo
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    bad_images: BadImages
    probe: DriftProbe
    train_set: torch.utils.data.Dataset

    @property
    def classes(self) -> list[str]:
        return self.train_split.classes


def build_training(cfg: TrainConfig) -> Training:
    """Data, networks, objective and optimizer of a run of ``cfg``, at step 0, on ``cfg.device`` (this rank's GPU
    under torchrun). The order is fixed: each piece that draws from torch's RNG (the new head, a random init, the
    loader) draws what it drew in every earlier run."""
    cfg, ctx = resolve(cfg), distributed.current()
    device = distributed.device_for(cfg.device, ctx)
    torch.manual_seed(cfg.seed)
    method = METHODS[cfg.method]

    # ------------------------------------------------------------------------------------ data
    split = load_train_split(cfg)
    classes = split.classes

    # -------------------------------------------------------------------------------- networks
    model, info = load_model(cfg.init, arch=cfg.arch, num_classes=len(classes))
    # The run's eval settings travel with the weights, so that eval-acc reproduces final.json.
    info = replace(info, classes=classes, image_size=cfg.image_size, eval_crop_pct=cfg.eval_crop_pct)
    model.to(device).train()
    method.freeze(model)
    source, renormalize = None, None
    if method.needs_source:
        # The default source is the target's own starting point, copied rather than reloaded (a random:<name>
        # spec would draw other weights).
        if cfg.source == cfg.init:
            source = copy.deepcopy(model)
        else:
            source, source_info = load_model(cfg.source, arch=cfg.arch)
            check_source(model, info, source, source_info)
            renormalize = renormalizer(info, source_info)
        source.to(device).eval().requires_grad_(False)

    # ------------------------------------------------------------------------------- objective
    objective = Objective(model, method, source=source, lam=cfg.lam, reduction=cfg.lam_reduction, blocks=cfg.blocks,
                          transmix=TransMix(len(classes), seed=cfg.seed) if cfg.transmix else None,
                          patch_size=info.patch_size, renormalize=renormalize,
                          autocast=torch.bfloat16 if device.type == "cuda" else None)
    if ctx.enabled:
        objective.distribute(device)
    if cfg.compile:
        objective.compile()

    # ------------------------------------------------------------------------------- optimizer
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.head_lr_scale)
    scheduler = build_scheduler(optimizer, cfg.steps)

    # -------------------------------------------------------------------- datasets, drift probe
    bad_images = BadImages(cfg.on_bad_image)
    train_set = train_dataset(split, cfg, info.mean, info.std)
    test = run_split(cfg, "test")
    probe = DriftProbe(model, info, test, image_size=cfg.image_size, crop_pct=cfg.eval_crop_pct, device=device,
                       bad_images=bad_images)
    return Training(cfg, device, split, test, model, info, objective, optimizer, scheduler, bad_images, probe,
                    train_set)


def optimizer_step(objective: Objective, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                   batches: Iterator[tuple[Tensor, Tensor]], accum_steps: int) -> dict[str, Tensor]:
    """One optimizer step over ``accum_steps`` micro-batches; returns the loss terms averaged over them."""
    device = next(objective.target.parameters()).device
    totals: dict[str, Tensor] = {}
    for i in range(accum_steps):
        images, labels = next(batches)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        # Across ranks, gradients are averaged once per optimizer step: on the last micro-batch.
        with nullcontext() if i == accum_steps - 1 else objective.no_sync():
            loss, terms = objective.loss(images, labels)
            (loss / accum_steps).backward()
        for k, v in {"loss": loss.detach(), **terms}.items():
            totals[k] = totals.get(k, 0) + v / accum_steps
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return totals


@dataclass
class Interval:
    """Running sums of the loss terms since the last metrics row (resumed with the checkpoint)."""

    sums: dict[str, Tensor] = field(default_factory=dict)
    count: int = 0

    def add(self, terms: dict[str, Tensor]) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0) + v
        self.count += 1


# ------------------------------------------------------------------------------------------ checkpoint

def save(t: Training, run: RunDir, step: int, batches: Batches, interval: Interval) -> None:
    """The whole training state into the run's checkpoint.pt (collectives on every rank; rank 0 writes)."""
    ctx = distributed.current()
    # The partial metrics sums become their mean over ranks: every rank resumes from that, and the interval's
    # row (a mean over ranks) comes out as if the run had not stopped.
    if ctx.enabled:
        interval.sums = distributed.all_reduce_mean(interval.sums)
    draws = distributed.gather_ints(batches.drawn)
    if not ctx.is_main:
        return
    transmix = t.objective.transmix
    save_checkpoint(run.checkpoint, {
        "step": step,
        "draws": draws,  # micro-batches each rank has drawn from the seeded stream: where it resumes
        "config": asdict(t.cfg),
        "log": {"sums": {k: torch.as_tensor(v).detach().cpu() for k, v in interval.sums.items()},
                "count": interval.count},
        "skipped": dict(t.bad_images.skipped),
        "transmix_rng": transmix.rng.bit_generator.state if transmix is not None else None,
    }, model=t.model, optimizer=t.optimizer, scheduler=t.scheduler)


def stream_draws(state: dict[str, Any], cfg: TrainConfig, path: Path) -> list[int]:
    """Micro-batches drawn per rank at the checkpoint, checked against this run's number of processes."""
    world_size = distributed.current().world_size
    if "draws" in state:
        draws = list(state["draws"])
    else:  # written before skipped batches were counted: every rank drew step × accum micro-batches
        per_rank = state["step"] * cfg.batch_size * cfg.accum_steps
        ranks = state["position"] // per_rank if per_rank else world_size
        draws = [state["step"] * cfg.accum_steps] * ranks
    if any(draws) and len(draws) != world_size:
        raise CheckpointError(f"{path}: written by a run of {len(draws)} processes; resume it with as many "
                              f"(torchrun --nproc_per_node {len(draws)}), not {world_size}")
    return draws if any(draws) else [0] * world_size


def verify_state(state: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """The checkpoint was written by this very run: its options match the run's config.json."""
    changed = changed_options(state["config"], cfg)
    if changed:
        raise CheckpointError(f"{path}: written by a run with other settings ({', '.join(changed)}) than its "
                              f"config.json")


def resume_state(t: Training, run: RunDir) -> tuple[int, int, Interval, dict | None]:
    """Bring freshly built ``t`` to the stopped run's checkpoint (none: start again from step 0, which gives the
    same result). Returns the step, this rank's stream draws, the metrics interval, and the global RNG states to
    restore once the loader exists (creating it draws from torch's RNG)."""
    run.check_train_files(t.train_split.samples, t.classes)
    if not run.checkpoint.exists():
        return 0, 0, Interval(), None
    state = load_state(run.checkpoint)
    verify_state(state, t.cfg, run.checkpoint)
    draws = stream_draws(state, t.cfg, run.checkpoint)
    restore(state, run.checkpoint, model=t.model, optimizer=t.optimizer, scheduler=t.scheduler)
    if t.objective.transmix is not None:
        t.objective.transmix.rng.bit_generator.state = state["transmix_rng"]
    t.bad_images.skipped = dict(state["skipped"])
    interval = Interval({k: v.to(t.device) for k, v in state["log"]["sums"].items()}, int(state["log"]["count"]))
    return int(state["step"]), draws[distributed.current().rank], interval, state["rng"]


# ------------------------------------------------------------------------------------------------ train

def train(cfg: TrainConfig, out: str | Path, resume: bool = False) -> dict:
    """Run a whole training job into ``out`` and return what ``final.json`` holds.

    ``resume``: ``out`` holds a run started with ``cfg`` (read it with :meth:`RunDir.resumed_config`); it
    continues from its last checkpoint and ends with the same weights and metrics as a run never stopped."""
    out, cfg = Path(out), resolve(cfg)  # bad options fail before the run directory exists
    run = RunDir(out)
    created = distributed.setup(cfg.device)  # joins torchrun's ranks; a no-op in a single process
    ctx = distributed.current()
    if (run / CONFIG).exists() and not resume:
        raise GtasegError(f"{out}: already holds a run (config.json); choose another --out, or --resume {out}")
    distributed.barrier()  # every rank has looked for an old run before rank 0 writes the new one
    out.mkdir(parents=True, exist_ok=True)
    t = build_training(cfg)

    step, drawn, interval, rng, checkpoint_step = 0, 0, Interval(), None, None
    if resume:
        step, drawn, interval, rng = resume_state(t, run)
        checkpoint_step = step if rng is not None else None
        if ctx.is_main:
            run.truncate_metrics(step)
    elif ctx.is_main:
        run.write_config(cfg, t.objective.lam_conversion(cfg.image_size))
        run.write_train_files(t.train_split.samples, t.classes)

    batches = Batches(t.train_set, cfg, t.bad_images, drawn=drawn, rank=ctx.rank, world_size=ctx.world_size,
                      pin_memory=t.device.type == "cuda")
    if rng is not None:
        set_rng_state(rng)  # only now: building the loader drew from torch's RNG, as it did in the first run
    images_per_step = cfg.batch_size * cfg.accum_steps * ctx.world_size  # over all ranks
    guard = FiniteGuard()
    tensorboard = None
    if cfg.tensorboard and ctx.is_main:
        from gtaseg.tensorboard import MetricsWriter

        tensorboard = MetricsWriter(out)
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.method}", unit="step", dynamic_ncols=True,
               disable=not ctx.is_main)

    def check_finite() -> None:
        """Stop if a loss since the start was NaN/inf (on any rank): one host sync, so only where the loop syncs
        anyway, before a metrics row or a checkpoint is written (never overwrite the last good one)."""
        bad = guard.bad_step()
        if any_rank(bad > 0):
            raise NonFiniteLoss(out, bad or step, checkpoint_step)

    t0 = time.perf_counter()
    try:
        with StopSignals() as stop:  # SIGINT/SIGTERM: finish the step, write a checkpoint, stop
            while step < cfg.steps:
                lr = t.scheduler.get_last_lr()[0]
                terms = optimizer_step(t.objective, t.optimizer, t.scheduler, batches, cfg.accum_steps)
                step += 1
                guard.update(terms["loss"], step)
                interval.add(terms)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    check_finite()
                    # One host sync (and, across ranks, one all-reduce) per log interval, not per step.
                    means = distributed.all_reduce_mean({k: v / interval.count for k, v in interval.sums.items()})
                    row = {"step": step, "lr": lr, **{k: round(float(v), 6) for k, v in means.items()},
                           "images_per_s": round(interval.count * images_per_step / (time.perf_counter() - t0), 2)}
                    if ctx.is_main:
                        drift = t.probe.drift(t.model)
                        row.update(drift=round(drift, 6), drift_per_entry=round(drift / t.probe.entries, 9))
                        run.append_metrics(row)
                        if tensorboard is not None:
                            tensorboard.write(row)
                    bar.set_postfix({k: row[k] for k in ("loss", "ce", "reg", "images_per_s")})
                    interval, t0 = Interval(), time.perf_counter()
                stopping = stop_requested(stop, step)
                if stopping or step == cfg.steps or (cfg.ckpt_every and step % cfg.ckpt_every == 0):
                    check_finite()
                    save(t, run, step, batches, interval)
                    checkpoint_step = step
                if stopping:
                    raise Interrupted(stop.signum or 15, step, out)
                bar.update(1)
    finally:
        bar.close()
        batches.close()  # its loader workers stop here, on success, error or signal alike
        if tensorboard is not None:
            tensorboard.close()

    final = None
    if ctx.is_main:
        save_model(run.model, t.model, t.info)
        final = evaluate(t, step, run)
        if t.bad_images.skipped:
            run.write_skipped(list(t.bad_images.skipped.values()))
        run.write_final(final)
    final = distributed.broadcast_object(final)
    distributed.cleanup(created)
    return final


def stop_requested(stop: StopSignals, step: int) -> bool:
    """A SIGINT/SIGTERM on any rank. Under torchrun every rank polls at the same steps (a collective each time),
    so all stop together."""
    if not distributed.current().enabled:
        return stop.signum is not None
    return step % SIGNAL_POLL_STEPS == 0 and any_rank(stop.signum is not None)


def any_rank(flag: bool) -> bool:
    """``flag`` on any rank (one collective under torchrun, nothing otherwise)."""
    if not distributed.current().enabled:
        return flag
    return float(distributed.all_reduce_mean({"flag": float(flag)})["flag"]) > 0


def evaluate(t: Training, step: int, run: RunDir) -> dict:
    """What final.json holds: test (and validation) accuracy, the run's settings, and its attention quality; the
    test predictions behind that top-1 go into the run's test_predictions.csv."""
    cfg = t.cfg
    common = dict(image_size=cfg.image_size, crop_pct=cfg.eval_crop_pct, batch_size=cfg.batch_size,
                  workers=cfg.workers, device=t.device, bad_images=t.bad_images)
    acc, predictions = split_scores(t.model, t.info, t.test_split, data=cfg.data, desc="eval test", **common)
    run.write_predictions(predictions)
    val = (split_accuracy(t.model, t.info, run_split(cfg, "val"), data=cfg.data, desc="eval val", **common)
           if has_validation(cfg.data, cfg.synthetic) else {})
    quality = attention_quality(t.model, t.info, t.test_split, data=cfg.data, image_size=cfg.image_size,
                                crop_pct=cfg.eval_crop_pct, batch_size=cfg.batch_size, workers=cfg.workers,
                                device=t.device, probe=t.probe, bad_images=t.bad_images)
    return {"top1": acc["top1"], "top5": acc["top5"], "val_top1": val.get("top1"), "method": cfg.method,
            "lam": cfg.lam, "lam_reduction": cfg.lam_reduction, "sampling_rate": cfg.sampling_rate, "seed": cfg.seed,
            "steps": step, "transmix": cfg.transmix, "data": cfg.data, "train_images": len(t.train_split),
            "test_images": acc["count"], "world_size": distributed.current().world_size, **quality,
            "skipped_images": len(t.bad_images.skipped)}

