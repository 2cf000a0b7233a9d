"""The training loop: one forward of the target (and of the frozen source when the method needs it) per
micro-batch, cross-entropy plus the method's term, AdamW with a cosine schedule."""
from __future__ import annotations

import copy
import json
import math
import sys
import time
from contextlib import ExitStack, nullcontext
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from gtaseg import distributed
from gtaseg.attention import capture, cls_logits, resolve_blocks
from gtaseg.config import PRESETS, TrainConfig, resolve  # noqa: F401 (re-exported)
from gtaseg.checkpointing import (ADDED_OPTIONS, CHECKPOINT, CONFIG_NOTE, RUNTIME_OPTIONS, FiniteGuard, Interrupted,
                                  StopSignals, ignore_stop_signals, non_finite_loss, prepare_resume, save_state,
                                  set_rng_state, trainer_state)
from gtaseg.data.dataset import BadImage, ImageDataset, check_classes, collate_marked, load_split
from gtaseg.data.sampler import SeededStream
from gtaseg.data.sampling import stratified_subset
from gtaseg.data.transforms import eval_transform, train_transform
from gtaseg.distill import DISTILL_TERMS
from gtaseg.errors import DataError, GtasegError
from gtaseg.io import write_json, write_text
from gtaseg.methods import METHODS
from gtaseg.models import ModelInfo, load_model, save_model
from gtaseg.regularizers import batch_spectral_shrinkage, guidance_entries, guidance_l2, l2_sp
from gtaseg.transmix import TransMix


# Test images on which the [cls]-logit drift from the initial weights is logged during training.
PROBE_IMAGES = 16
# Under torchrun a stop signal is polled every this many steps: polling costs a collective and a host sync.
SIGNAL_POLL_STEPS = 10


def param_groups(model: nn.Module, lr: float, weight_decay: float, head_lr_scale: float) -> list[dict]:
    """timm's weight-decay groups (none on biases, norms and tokens), each split so that the new classifier
    head learns at ``head_lr_scale`` × ``lr`` (transfer-learning practice, as in the L2-SP and BSS papers)."""
    head_ids = {id(p) for n, p in model.named_parameters() if n.startswith("head.")}
    groups = []
    for group in param_groups_weight_decay(model, weight_decay):
        head = [p for p in group["params"] if id(p) in head_ids]
        body = [p for p in group["params"] if id(p) not in head_ids]
        groups += [{**group, "params": ps, "lr": lr * scale} for ps, scale in ((body, 1.0), (head, head_lr_scale)) if ps]
    return groups


class TargetForward(nn.Module):
    """The target's forward as one module returning (pre-logits features, logits), so that DDP and
    torch.compile wrap all of it; the capture hooks sit on the inner model's blocks either way."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        features = self.model.forward_head(self.model.forward_features(images), pre_logits=True)
        return features, self.model.head(features)


class Trainer:
    def __init__(self, cfg: TrainConfig, out: str | Path):
        self.cfg = cfg = resolve(cfg)
        self.out = Path(out)
        self.method = METHODS[cfg.method]
        # Under torchrun (see gtaseg.distributed) each rank trains on its own shard of every global batch.
        self.dist = distributed.current()
        self.device = distributed.device_for(cfg.device, self.dist)
        torch.manual_seed(cfg.seed)

        train_split = load_split(cfg.data, "train", cfg.data_root, self._synthetic_root())
        self.train_split = stratified_subset(train_split, cfg.sampling_rate, cfg.seed)
        self.classes = train_split.classes
        check_classes(self.train_split, cfg.data, cfg.sampling_rate)

        self.model, info = load_model(cfg.init, arch=cfg.arch, num_classes=len(self.classes))
        self.info = ModelInfo(**{**asdict(info), "classes": self.classes})
        self.model.to(self.device).train()
        self.method.freeze(self.model)
        self.guided = resolve_blocks(self.model, cfg.blocks)
        self.last_block = len(self.model.blocks) - 1

        self.source = None
        if self.method.needs_source:
            # The default source is the target's own starting point, copied rather than reloaded (a
            # random:<name> spec would draw other weights).
            self.source = copy.deepcopy(self.model) if cfg.source == cfg.init else load_model(cfg.source, arch=cfg.arch)[0]
            self.source.to(self.device).eval().requires_grad_(False)
        # self.model stays the bare model (optimizer, saving, evaluation); the loss calls self.forward, which
        # is DDP-wrapped across ranks and compiled with --compile. Every rank runs its own frozen source.
        self.forward: nn.Module = TargetForward(self.model)
        self.ddp = None
        if self.dist.enabled:
            self.forward = self.ddp = DistributedDataParallel(
                self.forward, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.source_features = None if self.source is None else self.source.forward_features
        self._kept = None
        if cfg.compile:
            # By default Dynamo does not guard on module hooks, so a graph traced without them (another
            # trainer's, say) would be reused and the hooks never run: make it guard on them. And so that the
            # guards never fail step after step (a recompile each time), the capture hooks are registered
            # once, before tracing, and stay on; each micro-batch clears what they recorded (see _recording).
            from torch._dynamo import config as dynamo_config

            dynamo_config.skip_nnmodule_hook_guards = False
            self._hooks = ExitStack()
            self._kept = {"target": self._hooks.enter_context(self._capture(self.model, cfg.transmix))}
            if self.source is not None:
                self._kept["source"] = self._hooks.enter_context(self._capture(self.source))
            self.forward = torch.compile(self.forward)
            if self.source is not None:
                self.source_features = torch.compile(self.source.forward_features)
        self.reference = None
        if cfg.method == "l2sp":
            self.reference = {n: p.detach().clone() for n, p in self.model.named_parameters()
                              if p.requires_grad and not n.startswith("head.")}
        self.transmix = TransMix(len(self.classes), seed=cfg.seed) if cfg.transmix else None

        self.optimizer = create_optimizer_v2(param_groups(self.model, cfg.lr, cfg.weight_decay, cfg.head_lr_scale),
                                             "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
        self.step = 0
        # Resumable state beyond the modules (see gtaseg.checkpointing): unreadable files met so far
        # (path -> reason), the partial sums of the current metrics interval, the last checkpoint's step,
        # and global RNG states that fit() restores once its data loader exists.
        self.skipped: dict[str, str] = {}
        self.log_sums: dict[str, Tensor] = {}
        self.log_count = 0
        self.checkpoint_step: int | None = None
        self.pending_rng: dict | None = None
        self.tensorboard = None  # a gtaseg.tensorboard.MetricsWriter while fit() runs with --tensorboard
        self.train_set = ImageDataset(self.train_split, train_transform(
            cfg.image_size, self.info.mean, self.info.std, cfg.crop_scale, cfg.randaugment), mark_bad=True)
        self.test_split = load_split(cfg.data, "test", cfg.data_root, self._synthetic_root())
        self.probe_images, self.probe_logits = self._probe()

    def _eval_set(self, split) -> ImageDataset:
        return ImageDataset(split, eval_transform(self.cfg.image_size, self.info.mean, self.info.std, self.cfg.eval_crop_pct),
                            mark_bad=True)

    def _bad_images(self, bad: list[BadImage]) -> None:
        """--on-bad-image: stop at the first unreadable file (one line naming it), or skip and count it."""
        for b in bad:
            if self.cfg.on_bad_image == "stop":
                raise DataError(f"{b.reason} (--on-bad-image skip leaves such files out)")
            if b.path not in self.skipped:
                self.skipped[b.path] = b.reason
                tqdm.write(f"skipping {b.reason}", file=sys.stderr)

    def _readable(self, batches, size: int):
        """The (images, labels) of ``collate_marked`` batches, after :meth:`_bad_images`; empty ones dropped."""
        empty = 0
        try:
            for images, labels, bad in batches:
                self._bad_images(bad)
                if labels is not None:
                    empty = 0
                    yield images, labels
                    continue
                empty += 1
                if empty * self.cfg.batch_size >= 2 * size:  # two epochs' worth of positions: nothing is readable
                    raise DataError(f"{self.cfg.data}: none of the {size} images could be read")
        finally:
            # Stop the loader's workers now, not whenever the garbage collector finds the iterator: they ignore
            # SIGTERM (ignore_stop_signals), so multiprocessing's exit handler could not stop them and would
            # wait for them forever.
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    @torch.inference_mode()
    def _probe(self) -> tuple[Tensor, Tensor]:
        """A fixed batch of test images and the initial weights' [cls] logits on it, which
        :meth:`attention_drift` compares against: drift is measured the same way for every method."""
        n = len(self.test_split)
        picks = sorted({round(i * (n - 1) / max(PROBE_IMAGES - 1, 1)) for i in range(min(PROBE_IMAGES, n))})
        data = self._eval_set(self.test_split.subset(picks))
        items = [data[i] for i in range(len(data))]
        self._bad_images([x for x in items if isinstance(x, BadImage)])
        images = torch.stack([x[0] for x in items if not isinstance(x, BadImage)]).to(self.device)
        self.model.eval()
        logits = cls_logits(self.model, images)
        self.model.train()
        return images, logits

    @torch.inference_mode()
    def attention_drift(self) -> float:
        """Σ_{blocks,heads}‖A − A₀‖² between the current and the initial [cls] logits, mean over the probe."""
        self.model.eval()
        drift = guidance_l2(cls_logits(self.model, self.probe_images), self.probe_logits)
        self.model.train()
        return float(drift)

    def term_entries(self) -> int | None:
        """Entries the method's guidance term sums per image (None: it has none): L·H·N for GTA's [cls] logits,
        Σ_blocks T·C for block or MSA outputs. ``--lam-reduction mean`` divides the sum by this."""
        n = (self.cfg.image_size // self.info.patch_size) ** 2
        if self.method.guide == "logits":
            return len(self.guided) * self.model.blocks[0].attn.num_heads * n
        if self.method.guide in ("block", "msa"):
            return len(self.guided) * (n + self.info.num_prefix_tokens) * self.model.embed_dim
        return None

    def lam_conversion(self) -> dict | None:
        """What λ means in the other reduction, written beside the config (``config.json``'s lam_conversion)."""
        entries = self.term_entries()
        if entries is None:
            return None
        lam, mean = self.cfg.lam, self.cfg.lam_reduction == "mean"
        return {"entries": entries, "formula": "lam_sum = lam_mean / entries",
                "lam_mean": lam if mean else lam * entries, "lam_sum": lam / entries if mean else lam}

    def attention_quality(self) -> dict[str, float | None]:
        """Drift (summed and per entry), and on the test masks when there are any the Jaccard of the last block's
        [cls] attention (at the training resolution, recorded as jaccard_image_size) and its mass on the object
        and, for a synthetic localised cue, on the cue."""
        from gtaseg.data.finegrained import DATASETS
        from gtaseg.evaluation.runner import Settings, evaluate as evaluate_masks
        from gtaseg.evaluation.split_masks import mask_samples

        drift = self.attention_drift()
        out = {"drift": drift, "drift_per_entry": drift / guidance_entries(self.probe_logits), "jaccard_best": None,
               "jaccard_merged": None, "jaccard_image_size": None}
        samples = mask_samples(self.test_split, self.cfg.data if self.cfg.data in DATASETS else None)
        samples = [s for s in samples if str(s.image) not in self.skipped]  # --on-bad-image skip
        if samples:
            result = evaluate_masks(self.model, self.info, samples, Settings(image_size=self.cfg.image_size),
                                    batch_size=self.cfg.batch_size, workers=self.cfg.workers,
                                    device=str(self.device), progress=False)
            out.update(jaccard_best=result.jaccard_best, jaccard_merged=result.jaccard_merged,
                       jaccard_image_size=self.cfg.image_size)
        if self.cfg.data == "synthetic":
            out.update(self._synthetic_masses())
        return out

    def _synthetic_masses(self) -> dict[str, float]:
        """Mean attention mass on the object (and on the cue, where the data has a localised one) over test."""
        from gtaseg.data.synthetic import cue_mask_paths
        from gtaseg.evaluation.mass import attention_mass

        data = self._eval_set(self.test_split)
        images = torch.stack([data[i][0] for i in range(len(data))]).to(self.device)
        self.model.eval()
        out = {}
        regions = {"mass_object": self.test_split.masks, "mass_cue": cue_mask_paths(self.test_split)}
        for key, masks in regions.items():
            if masks:
                values = attention_mass(self.model, images, masks, self.info.patch_size, self.cfg.batch_size)
                out[key] = 100.0 * sum(values) / len(values)
        self.model.train()
        return out

    def has_validation(self) -> bool:
        if self.cfg.data != "synthetic":
            return False
        from gtaseg.data.synthetic import SyntheticConfig

        return SyntheticConfig.from_options(self.cfg.synthetic).val_per_class > 0

    def _synthetic_root(self) -> Path | None:
        if self.cfg.data != "synthetic":
            return None
        from gtaseg.data.synthetic import SyntheticConfig, generate

        return generate(SyntheticConfig.from_options(self.cfg.synthetic))

    def batches(self):
        """Micro-batches from the current position of the seeded stream, onwards forever."""
        cfg, ctx = self.cfg, self.dist
        stream = SeededStream(len(self.train_set), cfg.seed, start=self.step * cfg.batch_size * cfg.accum_steps * ctx.world_size,
                              rank=ctx.rank, world_size=ctx.world_size)
        loader = DataLoader(self.train_set, batch_size=self.cfg.batch_size, sampler=stream,
                            num_workers=self.cfg.workers, pin_memory=self.device.type == "cuda",
                            persistent_workers=self.cfg.workers > 0, collate_fn=collate_marked,
                            worker_init_fn=ignore_stop_signals)
        return self._readable(iter(loader), len(self.train_set))  # iter() now: it draws from torch's RNG

    def _capture(self, model: nn.Module, last_block_logits: bool = False):
        """A capture of what the method guides in ``model`` (and the last block's [cls] logits for TransMix)."""
        guide = self.method.guide
        logit_blocks = sorted(set(self.guided if guide in ("logits", "cls-probs") else []) | ({self.last_block} if last_block_logits else set()))
        return capture(model, logit_blocks, block_outputs=self.guided if guide == "block" else (),
                       msa_outputs=self.guided if guide == "msa" else (),
                       queries_keys=self.guided if guide == "maps" else ())

    def _recording(self, which: str, last_block_logits: bool = False):
        """The capture for one forward of the target or the source: fresh hooks, or under --compile the
        permanent ones with their records cleared."""
        if self._kept is not None:
            kept = self._kept[which]
            for records in (kept.row_logits, kept.block_out, kept.msa_out, kept.queries_keys):
                records.clear()
            return nullcontext(kept)
        return self._capture(self.model if which == "target" else self.source, last_block_logits)

    def loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Cross-entropy plus λ·(the method's term) for one micro-batch; both models run forward once."""
        mixed = self.transmix.mix(images, labels) if self.transmix else None
        if mixed is not None:
            images = mixed.images
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.device.type == "cuda"):
            if self.source is not None:
                # Inference mode: no autograd bookkeeping at all for the frozen source (its recorded tensors
                # are only ever subtracted from the target's, which saves nothing of them for backward). It
                # runs first, so its transient activations are gone before the target's saved ones pile up:
                # GTA's peak memory is the baseline's plus the source's weights.
                with torch.inference_mode(), self._recording("source") as src:
                    self.source_features(images)
            with self._recording("target", mixed is not None) as cap:
                features, logits = self.forward(images)
        if mixed is not None:
            grid = tuple(s // self.info.patch_size for s in images.shape[-2:])
            targets = self.transmix.soft_targets(mixed, cap.cls_attention(self.last_block), grid)
            ce = torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            ce = F.cross_entropy(logits.float(), labels)
        reg = self._regularizer(cap, src if self.source is not None else None, features)
        return ce + self.cfg.lam * reg, {"ce": ce.detach(), "reg": reg.detach()}

    def _regularizer(self, cap, src, features: Tensor) -> Tensor:
        guide = self.method.guide
        if guide in DISTILL_TERMS:  # attention transfer: cross-entropy between attention maps
            return DISTILL_TERMS[guide](cap, src, self.guided)
        if guide == "logits":
            return guidance_l2(cap.cls_logits(self.guided), src.cls_logits(self.guided), self.cfg.lam_reduction)
        if guide in ("block", "msa"):
            kind = "block_out" if guide == "block" else "msa_out"
            return guidance_l2([getattr(cap, kind)[b] for b in self.guided], [getattr(src, kind)[b] for b in self.guided],
                               self.cfg.lam_reduction)
        if self.cfg.method == "l2sp":
            return l2_sp(self.model, self.reference)
        if self.cfg.method == "bss":
            return batch_spectral_shrinkage(features)
        return torch.zeros((), device=self.device)

    def train_step(self, batches) -> dict[str, Tensor]:
        """One optimizer step over ``accum_steps`` micro-batches; returns the averaged loss terms."""
        totals: dict[str, Tensor] = {}
        for i in range(self.cfg.accum_steps):
            images, labels = next(batches)
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            # Across ranks, gradients are averaged once per optimizer step: on the last micro-batch.
            last = i == self.cfg.accum_steps - 1
            with nullcontext() if self.ddp is None or last else self.ddp.no_sync():
                loss, terms = self.loss(images, labels)
                (loss / self.cfg.accum_steps).backward()
            for k, v in {"loss": loss.detach(), **terms}.items():
                totals[k] = totals.get(k, 0) + v / self.cfg.accum_steps
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return totals

    def save_checkpoint(self) -> None:
        """The whole training state, atomically, into ``out/checkpoint.pt`` (rank 0 writes it)."""
        # The partial metrics sums become their mean over ranks: every rank resumes from that, and the
        # interval's row (a mean over ranks) comes out as if the run had not stopped.
        self.log_sums = distributed.all_reduce_mean(self.log_sums) if self.dist.enabled else self.log_sums
        if self.dist.is_main:
            save_state(self.out / CHECKPOINT, trainer_state(self))
        self.checkpoint_step = self.step

    def _any_rank(self, flag: bool) -> bool:
        """``flag`` on any rank (one collective under torchrun, nothing otherwise)."""
        if not self.dist.enabled:
            return flag
        return float(distributed.all_reduce_mean({"flag": float(flag)})["flag"]) > 0

    def _stop_requested(self, stop: StopSignals) -> bool:
        """A SIGINT/SIGTERM on any rank; every rank polls at the same steps, so all stop together."""
        if not self.dist.enabled:
            return stop.signum is not None
        return self.step % SIGNAL_POLL_STEPS == 0 and self._any_rank(stop.signum is not None)

    def fit(self) -> None:
        cfg = self.cfg
        batches = self.batches()
        if self.pending_rng is not None:
            # Restored only now: building the loader drew from torch's RNG, as it did in the first run.
            set_rng_state(self.pending_rng)
            self.pending_rng = None
        images_per_step = cfg.batch_size * cfg.accum_steps * self.dist.world_size  # over all ranks
        if cfg.tensorboard and self.dist.is_main:
            from gtaseg.tensorboard import MetricsWriter

            self.tensorboard = MetricsWriter(self.out)
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {cfg.method}", unit="step", dynamic_ncols=True,
                   disable=not self.dist.is_main)
        try:
            with StopSignals() as stop:  # SIGINT/SIGTERM: finish the step, write a checkpoint, stop
                self._loop(batches, bar, FiniteGuard(), stop, images_per_step)
        finally:
            bar.close()
            batches.close()  # its loader workers stop here, on success, error or signal alike
            if self.tensorboard is not None:
                self.tensorboard.close()

    def _check_finite(self, guard: FiniteGuard) -> None:
        """Stop if a loss since the start was NaN/inf (on any rank); one host sync, so only where the loop
        syncs anyway: before a metrics row or a checkpoint is written."""
        bad = guard.bad_step()
        if self._any_rank(bad > 0):
            raise non_finite_loss(self.out, bad or self.step, self.checkpoint_step)

    def _loop(self, batches, bar, guard: FiniteGuard, stop: StopSignals, images_per_step: int) -> None:
        cfg, t0 = self.cfg, time.perf_counter()
        while self.step < cfg.steps:
            lr = self.scheduler.get_last_lr()[0]
            terms = self.train_step(batches)
            guard.update(terms["loss"], self.step)
            for k, v in terms.items():
                self.log_sums[k] = self.log_sums.get(k, 0) + v
            self.log_count += 1
            sums, count = self.log_sums, self.log_count
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self._check_finite(guard)
                # One host sync (and, across ranks, one all-reduce) per log interval, not per step.
                means = distributed.all_reduce_mean({k: v / count for k, v in sums.items()})
                row = {"step": self.step, "lr": lr, **{k: round(float(v), 6) for k, v in means.items()},
                       "images_per_s": round(count * images_per_step / (time.perf_counter() - t0), 2)}
                if self.dist.is_main:
                    drift = self.attention_drift()
                    row.update(drift=round(drift, 6), drift_per_entry=round(drift / guidance_entries(self.probe_logits), 9))
                    with open(self.out / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(row) + "\n")
                    if self.tensorboard is not None:
                        self.tensorboard.write(row)
                bar.set_postfix({k: row[k] for k in ("loss", "ce", "reg", "images_per_s")})
                self.log_sums, self.log_count, t0 = {}, 0, time.perf_counter()
            stopping = self._stop_requested(stop)
            if stopping or self.step == cfg.steps or (cfg.ckpt_every and self.step % cfg.ckpt_every == 0):
                self._check_finite(guard)  # never overwrite the last good checkpoint
                self.save_checkpoint()
            if stopping:
                raise Interrupted(stop.signum or 15, self.step, self.out)
            bar.update(1)

    @torch.inference_mode()
    def evaluate(self, split: str = "test") -> dict[str, float]:
        cfg = self.cfg
        test = self.test_split if split == "test" else load_split(cfg.data, split, cfg.data_root, self._synthetic_root())
        data = self._eval_set(test)
        loader = DataLoader(data, batch_size=cfg.batch_size, num_workers=cfg.workers, pin_memory=self.device.type == "cuda",
                            collate_fn=collate_marked)
        from gtaseg.evaluation.accuracy import topk_accuracy

        self.model.eval()
        return topk_accuracy(self.model, self._readable(loader, len(data)), self.device, desc=f"eval {split}")


def resumed_config(out: str | Path, **overrides: Any) -> TrainConfig:
    """The config of the run in ``out`` (its config.json), with ``overrides`` of :data:`RUNTIME_OPTIONS`."""
    out = Path(out)
    path = out / "config.json"
    if not out.is_dir():
        raise GtasegError(f"{out}: no such run directory")
    if not path.is_file():
        raise GtasegError(f"{path}: not found; {out} holds no run to resume (start one with --out)")
    if (out / "final.json").exists():
        raise GtasegError(f"{out / 'final.json'}: this run already finished; nothing to resume")
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GtasegError(f"{path}: not valid JSON ({e})") from None
    known = {f.name for f in fields(TrainConfig)}
    if isinstance(saved, dict):
        saved.pop(CONFIG_NOTE, None)
        saved = {**ADDED_OPTIONS, **saved}
    if not isinstance(saved, dict) or set(saved) - known:
        extra = sorted(set(saved) - known) if isinstance(saved, dict) else []
        raise GtasegError(f"{path}: not a gtaseg run config" + (f" (unknown keys {', '.join(extra)})" if extra else ""))
    bad = sorted(set(overrides) - set(RUNTIME_OPTIONS))
    if bad:
        raise GtasegError(f"only {', '.join(RUNTIME_OPTIONS)} can change when a run resumes, not {', '.join(bad)}")
    saved.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**saved)


def train(cfg: TrainConfig, out: str | Path, resume: bool = False) -> dict:
    """Run a whole training job into ``out`` and return what ``final.json`` holds.

    ``resume``: ``out`` holds a run started with ``cfg`` (read it with
    :func:`resumed_config`); it continues from its last checkpoint.

    Under ``torchrun`` every rank calls this: they train together and only rank 0 writes files and
    evaluates; every rank returns rank 0's ``final``."""
    out, cfg = Path(out), resolve(cfg)  # bad options fail before the run directory exists
    created = distributed.setup(cfg.device)  # joins torchrun's ranks; a no-op in a single process
    main = distributed.current().is_main
    if (out / "config.json").exists() and not resume:
        raise GtasegError(f"{out}: already holds a run (config.json); choose another --out, or --resume {out}")
    distributed.barrier()  # every rank has looked for an old run before rank 0 writes the new one
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, out)
    cfg = trainer.cfg
    if resume:
        prepare_resume(trainer, out, write=main)
    elif main:
        write_json(out / "config.json", {**asdict(cfg), CONFIG_NOTE: trainer.lam_conversion()})
        write_text(out / "train_files.txt", "".join(f"{p}\t{trainer.classes[y]}\n" for p, y in trainer.train_split.samples))
    trainer.fit()
    final = None
    if main:
        save_model(out / "model.safetensors", trainer.model, trainer.info)
        acc = trainer.evaluate()
        val = trainer.evaluate("val") if trainer.has_validation() else {}
        final = {"top1": acc["top1"], "top5": acc["top5"], "val_top1": val.get("top1"), "method": cfg.method,
                 "lam": cfg.lam, "lam_reduction": cfg.lam_reduction,
                 "sampling_rate": cfg.sampling_rate, "seed": cfg.seed, "steps": trainer.step,
                 "transmix": cfg.transmix, "data": cfg.data, "train_images": len(trainer.train_split),
                 "test_images": acc["count"], "world_size": trainer.dist.world_size, **trainer.attention_quality(),
                 "skipped_images": len(trainer.skipped)}
        if trainer.skipped:
            write_text(out / "skipped_images.txt", "".join(f"{r}\n" for r in trainer.skipped.values()))
        write_json(out / "final.json", final)
    final = distributed.broadcast_object(final)
    distributed.cleanup(created)
    return final
