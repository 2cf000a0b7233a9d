"""Fine-tune a ViT with GTA or a comparison method: :func:`train`, top to bottom.

It builds the run (:func:`build_training`: data, networks, objective, optimizer), resumes it from its
checkpoint when asked, runs the loop, and evaluates. One optimizer step is :func:`optimizer_step`:
``accum_steps`` micro-batches through :meth:`gtaseg.objective.Objective.loss`, gradients averaged across
torchrun's ranks on the last one. Under torchrun every rank calls :func:`train`; rank 0 writes the files.
"""
from __future__ import annotations

import copy
import sys
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
from gtaseg.data.pipeline import BadImages, Batches, eval_batches, eval_dataset, load_run_splits, train_dataset
from gtaseg.data.sampling import describe_sample, realised_fraction
from gtaseg.data.split import Split
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
    bad_images: BadImages
    probe: DriftProbe
    train_set: torch.utils.data.Dataset
    probe_top1: float | None  # --head-init probe: the probe's top-1 on the training images
    # When the run was built (this process's start; after a resume, the resume's): final.json's train_seconds.
    started: float = field(default_factory=time.perf_counter)

    @property
    def classes(self) -> list[str]:
        return self.train_split.classes

    def batches(self, drawn: int = 0) -> Batches:
        """The training stream of this rank, after ``drawn`` micro-batches."""
        ctx = distributed.current()
        return Batches(self.train_set, batch_size=self.cfg.batch_size, seed=self.cfg.seed, workers=self.cfg.workers,
                       bad_images=self.bad_images, data=self.cfg.data, drawn=drawn, rank=ctx.rank,
                       world_size=ctx.world_size, pin_memory=self.device.type == "cuda")


def build_training(cfg: TrainConfig) -> Training:
    """Data, networks, objective and optimizer of a run of ``cfg``, at step 0, on ``cfg.device`` (this rank's GPU
    under torchrun). The order is fixed: each piece that draws from torch's RNG (the new head, a random init, the
    loader) draws what it drew in every earlier run."""
    cfg, ctx = resolve(cfg), distributed.current()
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
    bad_images = BadImages(cfg.on_bad_image)

    # -------------------------------------------------------------------------------- networks
    model, info = load_model(cfg.init, arch=cfg.arch, num_classes=len(classes))
    # The run's eval settings travel with the weights, so that eval-acc reproduces final.json.
    info = replace(info, classes=classes, image_size=cfg.image_size, eval_crop_pct=cfg.eval_crop_pct)
    check_image_size(cfg.image_size, info.patch_size)  # weights whose spec does not name their architecture
    model.to(device).train()
    probe_top1 = None
    if cfg.head_init == "probe":
        probe_top1 = fit_head(model, info, split, cfg, device, bad_images)
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
    probe = DriftProbe(model, info, splits.test, image_size=cfg.image_size, crop_pct=cfg.eval_crop_pct,
                       device=device, bad_images=bad_images)
    return Training(cfg, device, split, splits.val, splits.val_origin, splits.test, model, info, objective,
                    optimizer, scheduler, bad_images, probe, train_set, probe_top1)


def fit_head(model: nn.Module, info: ModelInfo, split: Split, cfg: TrainConfig, device: torch.device,
             bad_images: BadImages) -> float:
    """``--head-init probe``: the head fitted on the starting backbone's features of the training images, under the
    eval transform. Its loader's draw from torch's RNG is undone, so a run draws what it drew without it."""
    dataset = eval_dataset(split, cfg.image_size, cfg.eval_crop_pct, info.mean, info.std)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        batches = eval_batches(dataset, cfg.batch_size, cfg.workers, bad_images, cfg.data,
                               pin_memory=device.type == "cuda")
        features, labels = head_features(model, tqdm(batches, total=-(-len(dataset) // cfg.batch_size),
                                                     desc="probe head", unit="batch", leave=False), device)
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


@dataclass
class Interval:
    """Running sums of the loss terms since the last metrics row (resumed with the checkpoint)."""

    sums: dict[str, Tensor] = field(default_factory=dict)
    count: int = 0

    def add(self, terms: dict[str, Tensor]) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0) + v
        self.count += 1


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
        acc = split_accuracy(t.model, t.info, t.val_split, image_size=t.cfg.image_size, crop_pct=t.cfg.eval_crop_pct,
                             batch_size=t.cfg.batch_size, workers=t.cfg.workers, device=t.device,
                             bad_images=t.bad_images, data=t.cfg.data, desc="eval val")
    t.model.train()
    return acc


# ------------------------------------------------------------------------------------------ checkpoint

def save(t: Training, run: RunDir, step: int, batches: Batches, interval: Interval, best: BestWeights | None) -> None:
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
    }, model=t.model, optimizer=t.optimizer, scheduler=t.scheduler, **({"best": best} if best else {}))


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


def resume_state(t: Training, run: RunDir, best: BestWeights | None) -> tuple[int, int, Interval, dict | None]:
    """Bring freshly built ``t`` to the stopped run's checkpoint (none: start again from step 0, which gives the
    same result). Returns the step, this rank's stream draws, the metrics interval, and the global RNG states to
    restore once the loader exists (creating it draws from torch's RNG)."""
    run.check_train_files(t.train_split.samples, t.classes)
    if t.val_origin == "held out":
        run.check_train_files(t.val_split.samples, t.classes, VAL_FILES)
    if not run.checkpoint.exists():
        return 0, 0, Interval(), None
    state = load_state(run.checkpoint)
    verify_state(state, t.cfg, run.checkpoint)
    draws = stream_draws(state, t.cfg, run.checkpoint)
    restore(state, run.checkpoint, model=t.model, optimizer=t.optimizer, scheduler=t.scheduler,
            **({"best": best} if best else {}))
    if t.objective.transmix is not None:
        t.objective.transmix.rng.bit_generator.state = state["transmix_rng"]
    t.bad_images.skipped = dict(state["skipped"])
    interval = Interval({k: v.to(t.device) for k, v in state["log"]["sums"].items()}, int(state["log"]["count"]))
    return int(state["step"]), draws[distributed.current().rank], interval, state["rng"]


# ------------------------------------------------------------------------------------------------ train

def train(cfg: TrainConfig, out: str | Path, resume: bool = False) -> dict:
    """Run a whole training job into ``out`` and return what ``final.json`` holds.

    ``resume``: ``out`` holds a run started with ``cfg`` (read it with :meth:`RunDir.resumed_config`); it
    continues from its last checkpoint and ends with the same weights and metrics as a run never stopped.
    A new run that stops before its first checkpoint (bad data or weights, an unreadable image, a non-finite
    loss) leaves nothing in ``out``: there is nothing to resume, and the same command can take ``out`` again."""
    out, cfg = Path(out), resolve(cfg)  # bad options fail before the run directory exists
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
    t = build_training(cfg)
    out.mkdir(parents=True, exist_ok=True)  # only once the run is built: a start that fails leaves no folder
    if ctx.is_main:
        tqdm.write(describe_sample(t.train_split, cfg.sampling_rate), file=sys.stderr)
    best = BestWeights(run / BEST) if cfg.keep == "best" else None

    step, drawn, interval, rng, checkpoint_step = 0, 0, Interval(), None, None
    if resume:
        step, drawn, interval, rng = resume_state(t, run, best)
        checkpoint_step = step if rng is not None else None
        if ctx.is_main:
            run.truncate_metrics(step)
    elif ctx.is_main:
        run.write_config(cfg, t.objective.lam_conversion(cfg.image_size))
        run.write_train_files(t.train_split.samples, t.classes)
        if t.val_origin == "held out":
            run.write_train_files(t.val_split.samples, t.classes, VAL_FILES)

    batches = t.batches(drawn)
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
    common = dict(image_size=cfg.image_size, crop_pct=cfg.eval_crop_pct, batch_size=cfg.batch_size,
                  workers=cfg.workers, device=t.device, bad_images=t.bad_images)
    acc, predictions = split_scores(t.model, t.info, t.test_split, data=cfg.data, desc="eval test", **common)
    run.write_predictions(predictions)
    val = (split_accuracy(t.model, t.info, t.val_split, data=cfg.data, desc="eval val", **common)
           if t.val_split is not None else {})
    quality = attention_quality(t.model, t.info, t.test_split, data=cfg.data, image_size=cfg.image_size,
                                crop_pct=cfg.eval_crop_pct, batch_size=cfg.batch_size, workers=cfg.workers,
                                device=t.device, probe=t.probe, bad_images=t.bad_images)
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

