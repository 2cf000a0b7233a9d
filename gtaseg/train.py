"""Fine-tune a ViT with GTA or a comparison method: :func:`train`, top to bottom.

It builds the run (:func:`build_training`: data, networks, objective, optimizer), resumes it from its
checkpoint when asked, runs the loop, and evaluates. One optimizer step is :func:`optimizer_step`:
``accum_steps`` micro-batches through :meth:`gtaseg.objective.Objective.loss`, gradients averaged across
torchrun's ranks on the last one. Under torchrun every rank calls :func:`train`; rank 0 writes the files.
"""
from __future__ import annotations

import copy
import os
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from gtaseg import distributed
from gtaseg.checkpointing import load_state, restore, save_checkpoint, set_rng_state
from gtaseg.config import TrainConfig, changed_options, resolve
from gtaseg.data.pipeline import BadImages, Batches, LoaderSettings, load_run_splits, train_dataset
from gtaseg.data.sampling import describe_sample, realised_fraction
from gtaseg.data.split import Split
from gtaseg.data.synthetic import check_options as check_synthetic_options
from gtaseg.devices import training_workers
from gtaseg.errors import CheckpointError, GtasegError
from gtaseg.evaluation.end_of_run import DriftProbe, attention_quality, split_accuracy, split_scores
from gtaseg.head_probe import head_features, probe_head
from gtaseg.methods import METHODS
from gtaseg.models import ModelInfo, check_image_size, check_model_options, load_model, save_model, set_drop_path
from gtaseg.objective import Objective, check_source, renormalizer
from gtaseg.optim import build_optimizer, build_scheduler
from gtaseg.rundir import BEST, CONFIG, VAL_FILES, RunDir
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
    val_split: Split | None  # None: the data has no validation split
    val_origin: str | None  # "val" (the data's own) or "held out" (--val-fraction)
    test_split: Split
    model: nn.Module  # the target, bare: the optimizer, saving and evaluation use it
    info: ModelInfo
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loading: LoaderSettings  # how the probe, the validation and the end of run read their images
    probe: DriftProbe
    train_set: torch.utils.data.Dataset
    probe_top1: float | None  # --head-init probe: the probe's top-1 on the training images
    # When the run was built (this process's start; after a resume, the resume's): final.json's train_seconds.
    started: float = field(default_factory=time.perf_counter)

    @property
    def classes(self) -> list[str]:
        return self.train_split.classes

    @property
    def bad_images(self) -> BadImages:
        return self.loading.bad_images

    def batches(self) -> Batches:
        """The training stream of this rank, from its start (a checkpoint moves it on: ``load_state_dict``)."""
        ctx = distributed.current()
        workers = training_workers(self.cfg.workers, self.device)
        if workers != self.cfg.workers:
            threads = torch.get_num_threads()
            tqdm.write(f"--workers {self.cfg.workers}: {workers} on the CPU ({len(os.sched_getaffinity(0))} cores, "
                       f"{threads} thread{'s' if threads > 1 else ''} for the step; more workers would slow it)",
                       file=sys.stderr)
        return Batches(self.train_set, batch_size=self.cfg.batch_size, seed=self.cfg.seed, workers=workers,
                       bad_images=self.bad_images, rank=ctx.rank, world_size=ctx.world_size,
                       pin_memory=self.device.type == "cuda", gather=distributed.gather_ints)


def build_training(cfg: TrainConfig, probe_top1: float | None = None) -> Training:
    """Data, networks, objective and optimizer of a run of ``cfg`` (resolved: :func:`gtaseg.config.resolve`), at
    step 0, on ``cfg.device`` (this rank's GPU under torchrun). The order is fixed: each piece that draws from
    torch's RNG (the new head, a random init, the loader) draws what it drew in every earlier run.

    ``probe_top1``: ``--head-init probe`` resumed from a checkpoint that holds the probe's top-1; the head comes
    from the checkpoint, so the probe is not fitted again (nothing else sees it: the source runs its features
    only, L2-SP's starting point and the drift probe leave the head out)."""
    ctx = distributed.current()
    device = distributed.device_for(cfg.device, ctx)
    torch.manual_seed(cfg.seed)
    method = METHODS[cfg.method]

    # ------------------------------------------------------------------------------------ data
    splits = load_run_splits(cfg.data, data_root=cfg.data_root, synthetic=cfg.synthetic,
                             val_fraction=cfg.val_fraction, sampling_rate=cfg.sampling_rate, seed=cfg.seed,
                             classes=cfg.classes)
    split, classes = splits.train, splits.train.classes
    if cfg.eval_every and splits.val is None:
        raise GtasegError(f"--eval-every needs a validation split: {cfg.data} has none (add --val-fraction F, "
                          f"a val/ folder, or --synthetic val_per_class=N)")
    loading = LoaderSettings(cfg.image_size, cfg.eval_crop_pct, cfg.batch_size, cfg.workers, device,
                             BadImages(cfg.on_bad_image))

    # -------------------------------------------------------------------------------- networks
    model, info = load_model(cfg.init, arch=cfg.arch, num_classes=len(classes))
    # The run's eval settings travel with the weights, so that eval-acc reproduces final.json.
    info = replace(info, classes=classes, image_size=cfg.image_size, eval_crop_pct=cfg.eval_crop_pct)
    check_image_size(cfg.image_size, info.patch_size)  # weights whose spec does not name their architecture
    model.to(device).train()
    if cfg.head_init == "probe" and probe_top1 is None:
        probe_top1 = fit_head(model, info, split, loading)
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
    set_drop_path(model, cfg.drop_path)  # after the copy: the source runs in eval mode, where it does nothing

    # ------------------------------------------------------------------------------- objective
    objective = Objective(model, method, source=source, lam=cfg.lam, reduction=cfg.lam_reduction, blocks=cfg.blocks,
                          transmix=TransMix(len(classes), seed=cfg.seed) if cfg.transmix else None,
                          patch_size=info.patch_size, renormalize=renormalize,
                          autocast=torch.bfloat16 if device.type == "cuda" else None,
                          label_smoothing=cfg.label_smoothing)
    if ctx.enabled:
        objective.distribute(device)
    if cfg.compile:
        objective.compile()

    # ------------------------------------------------------------------------------- optimizer
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.head_lr_scale, cfg.layer_decay)
    scheduler = build_scheduler(optimizer, cfg.steps, cfg.warmup_steps)

    # -------------------------------------------------------------------- datasets, drift probe
    train_set = train_dataset(split, image_size=cfg.image_size, mean=info.mean, std=info.std,
                              crop_scale=cfg.crop_scale, randaugment=cfg.randaugment)
    probe = DriftProbe(model, info, splits.test, loading)
    return Training(cfg, device, split, splits.val, splits.val_origin, splits.test, model, info, objective,
                    optimizer, scheduler, loading, probe, train_set, probe_top1)


def fit_head(model: nn.Module, info: ModelInfo, split: Split, loading: LoaderSettings) -> float:
    """``--head-init probe``: the head fitted on the starting backbone's features of the training images, under the
    eval transform. Its loader's draw from torch's RNG is undone, so a run draws what it drew without it."""
    dataset = loading.dataset(split, info.mean, info.std)
    device = loading.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        batches = tqdm(loading.batches(dataset), total=loading.count(dataset), desc="probe head", unit="batch",
                       leave=False)
        features, labels = head_features(model, batches, device)
    return probe_head(model, features, labels)


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


class Interval:
    """Running sums of the loss terms since the last metrics row, on ``device``: where the metrics log stands
    within its interval (saved and restored with the checkpoint)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.count = 0

    def add(self, terms: dict[str, Tensor]) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0) + v
        self.count += 1

    def state_dict(self) -> dict:
        return {"sums": {k: torch.as_tensor(v).detach().cpu() for k, v in self.sums.items()}, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.sums = {k: v.to(self.device) for k, v in state["sums"].items()}
        self.count = int(state["count"])


class BestWeights:
    """``--keep best``: the weights of the evaluation with the highest validation top-1 so far, kept in the run's
    best.safetensors (on disk, so that a resumed run still has them); saved and restored with the checkpoint."""

    def __init__(self, path: Path):
        self.path, self.step, self.val_top1 = path, None, None

    def update(self, step: int, val_top1: float, model: nn.Module, info: ModelInfo) -> None:
        if self.val_top1 is None or val_top1 > self.val_top1:  # ties keep the earlier step
            save_model(self.path, model, info)
            self.step, self.val_top1 = step, val_top1

    def state_dict(self) -> dict:
        return {"step": self.step, "val_top1": self.val_top1}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.val_top1 = state["step"], state["val_top1"]


def validate(t: Training) -> dict[str, float]:
    """Top-1/top-5 on the validation split, the model back in training mode after, and torch's RNG as it was
    (a loader draws its seed from it), so that evaluating changes nothing the training would draw."""
    with torch.random.fork_rng(devices=[t.device] if t.device.type == "cuda" else []):
        acc = split_accuracy(t.model, t.info, t.val_split, t.loading, desc="eval val")
    t.model.train()
    return acc


# ------------------------------------------------------------------------------------------ checkpoint

def state_objects(t: Training, batches: Batches, interval: Interval, best: BestWeights | None) -> dict:
    """Everything of a run that saves and restores itself, under its name in the checkpoint."""
    transmix = t.objective.transmix
    return {"model": t.model, "optimizer": t.optimizer, "scheduler": t.scheduler, "batches": batches,
            "log": interval, "bad_images": t.bad_images, **({"transmix": transmix} if transmix is not None else {}),
            **({"best": best} if best is not None else {})}


def save(t: Training, run: RunDir, step: int, batches: Batches, interval: Interval, best: BestWeights | None) -> None:
    """The whole training state into the run's checkpoint.pt: built on every rank (the batch stream's state is
    every rank's count, a collective), written by rank 0."""
    # The partial metrics sums become their mean over ranks: every rank resumes from that, and the interval's
    # row (a mean over ranks) comes out as if the run had not stopped.
    if distributed.current().enabled:
        interval.sums = distributed.all_reduce_mean(interval.sums)
    save_checkpoint(run.checkpoint, {"step": step, "config": asdict(t.cfg), "probe_top1": t.probe_top1},
                    write=distributed.current().is_main, **state_objects(t, batches, interval, best))


def verify_state(state: dict, cfg: TrainConfig, path: Path) -> None:
    """The checkpoint was written by this very run: its options match the run's config.json."""
    changed = changed_options(state["config"], cfg)
    if changed:
        raise CheckpointError(f"{path}: written by a run with other settings ({', '.join(changed)}) than its "
                              f"config.json")


def stopped_state(run: RunDir, cfg: TrainConfig) -> dict | None:
    """The checkpoint of the stopped run in ``run``, checked against ``cfg`` (None: it stopped before its first
    checkpoint, and starts again from step 0, which gives the same result)."""
    if not run.checkpoint.exists():
        return None
    state = load_state(run.checkpoint)
    verify_state(state, cfg, run.checkpoint)
    return state


def resume_run(t: Training, run: RunDir, state: dict | None, batches: Batches, interval: Interval,
               best: BestWeights | None) -> int:
    """Bring freshly built ``t`` (and its stream, metrics interval and best weights) to the stopped run's
    checkpoint ``state``; returns its step. Call it once the stream exists: creating it draws from torch's RNG,
    as it did in the first run, and the RNGs are restored only after that."""
    run.check_train_files(t.train_split.samples, t.classes)
    if t.val_origin == "held out":
        run.check_train_files(t.val_split.samples, t.classes, VAL_FILES)
    if state is None:
        return 0
    restore(state, run.checkpoint, **state_objects(t, batches, interval, best))
    set_rng_state(state["rng"])
    return int(state["step"])


# ------------------------------------------------------------------------------------------------ train

def train(cfg: TrainConfig, out: str | Path, resume: bool = False) -> dict:
    """Run a whole training job into ``out`` and return what ``final.json`` holds.

    ``resume``: ``out`` holds a run started with ``cfg`` (read it with :meth:`RunDir.resumed_config`); it
    continues from its last checkpoint and ends with the same weights and metrics as a run never stopped.
    A new run that stops before its first checkpoint (bad data or weights, an unreadable image, a non-finite
    loss) leaves nothing in ``out``: there is nothing to resume, and the same command can take ``out`` again."""
    # The one place the config is resolved: bad options fail before the run directory exists.
    out, cfg = Path(out), resolve(cfg)
    check_synthetic_options(cfg.data, cfg.synthetic)
    check_model_options(cfg.init, cfg.arch, cfg.image_size)
    run = RunDir(out)
    if (run / CONFIG).exists() and not resume:
        raise GtasegError(f"{out}: already holds a run (config.json); choose another --out, or --resume {out}")
    if resume:
        return _train(cfg, run, resume=True)
    created = not out.exists()
    try:
        return _train(cfg, run, resume=False)
    except BaseException:
        if distributed.current().is_main and not run.checkpoint.exists():
            run.discard(created)
        raise


def _train(cfg: TrainConfig, run: RunDir, resume: bool) -> dict:
    """:func:`train` once ``cfg`` and ``run`` are checked: build, resume, the loop, evaluate."""
    out = run.path
    created = distributed.setup(cfg.device)  # joins torchrun's ranks; a no-op in a single process
    ctx = distributed.current()
    distributed.barrier()  # every rank has looked for an old run before rank 0 writes the new one
    state = stopped_state(run, cfg) if resume else None
    t = build_training(cfg, probe_top1=state.get("probe_top1") if state else None)
    out.mkdir(parents=True, exist_ok=True)  # only once the run is built: a start that fails leaves no folder
    if ctx.is_main:
        tqdm.write(describe_sample(t.train_split, cfg.sampling_rate), file=sys.stderr)
    best = BestWeights(run / BEST) if cfg.keep == "best" else None
    batches, interval = t.batches(), Interval(t.device)

    step, checkpoint_step = 0, None
    if resume:
        step = resume_run(t, run, state, batches, interval, best)
        checkpoint_step = step if state is not None else None
        if ctx.is_main:
            run.truncate_metrics(step)
    elif ctx.is_main:
        run.write_config(cfg, t.objective.lam_conversion(cfg.image_size))
        run.write_train_files(t.train_split.samples, t.classes)
        if t.val_origin == "held out":
            run.write_train_files(t.val_split.samples, t.classes, VAL_FILES)

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
                    interval.reset()
                    t0 = time.perf_counter()
                if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps) and ctx.is_main:
                    val = validate(t)
                    run.append_metrics({"step": step, "val_top1": val["top1"], "val_top5": val["top5"]})
                    if best is not None:
                        best.update(step, val["top1"], t.model, t.info)
                    t0 = time.perf_counter()  # the evaluation's time is not the training's images/s
                stopping = stop_requested(stop, step)
                if stopping or step == cfg.steps or (cfg.ckpt_every and step % cfg.ckpt_every == 0):
                    check_finite()
                    save(t, run, step, batches, interval, best)
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
        if best is not None:  # the end of run scores, and model.safetensors keeps, the step chosen on validation
            t.model.load_state_dict(load_model(str(best.path))[0].state_dict())
        save_model(run.model, t.model, t.info)
        final = evaluate(t, step, run, best)
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


def evaluate(t: Training, step: int, run: RunDir, best: BestWeights | None = None) -> dict:
    """What final.json holds: test (and validation) accuracy, the run's settings, its attention quality, and the
    wall-clock seconds of the training (since the run was built) and of this evaluation; the test predictions
    behind that top-1 go into the run's test_predictions.csv."""
    cfg, started = t.cfg, time.perf_counter()
    acc, predictions = split_scores(t.model, t.info, t.test_split, t.loading, desc="eval test")
    run.write_predictions(predictions)
    val = split_accuracy(t.model, t.info, t.val_split, t.loading, desc="eval val") if t.val_split is not None else {}
    quality = attention_quality(t.model, t.info, t.test_split, cfg.data, t.loading, t.probe)
    return {"top1": acc["top1"], "top5": acc["top5"], "val_top1": val.get("top1"), "val_top5": val.get("top5"),
            "val_images": val.get("count"), "val_origin": t.val_origin, "head_init": cfg.head_init,
            "probe_train_top1": t.probe_top1, "keep": cfg.keep, "best_step": best.step if best else None,
            "method": cfg.method,
            "lam": cfg.lam, "lam_reduction": cfg.lam_reduction, "sampling_rate": cfg.sampling_rate, "seed": cfg.seed,
            "steps": step, "transmix": cfg.transmix, "data": cfg.data, "train_images": len(t.train_split),
            "test_images": acc["count"], "world_size": distributed.current().world_size, **quality,
            "skipped_images": len(t.bad_images.skipped),
            "sampling_fraction_realised": realised_fraction(t.train_split),
            "train_seconds": round(started - t.started, 1), "eval_seconds": round(time.perf_counter() - started, 1)}

