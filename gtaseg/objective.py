"""The training objective: L = CE + λ · (the method's term), for one micro-batch.

The method (:mod:`gtaseg.methods`) says what each forward records and computes its term from that; for GTA it is
Σ_{blocks,heads}‖A_cls\\1 − Ã_cls\\1‖² between the pre-softmax [cls]-query logits of the trainable target and of
the frozen source (gtaseg.attention captures them during each model's own forward).
An :class:`Objective` is built from modules, with no files on disk::

    objective = Objective(model, METHODS["gta"], source=copy.deepcopy(model).eval(), lam=1.0)
    loss, terms = objective.loss(images, labels)

Shapes: B batch, L guided blocks, H heads, N patch tokens, C width.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack, nullcontext
from typing import ContextManager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gtaseg.attention import Captured, capture, resolve_blocks
from gtaseg.errors import GtasegError
from gtaseg.methods import REDUCTIONS, Forwards, Layout, Method
from gtaseg.models import ModelInfo
from gtaseg.transmix import TransMix


class TargetForward(nn.Module):
    """The target's forward as one module returning (pre-logits features, logits), so that DDP and
    torch.compile wrap all of it; the capture hooks sit on the inner model's blocks either way."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        features = self.model.forward_head(self.model.forward_features(images), pre_logits=True)
        return features, self.model.head(features)


def check_source(target: nn.Module, target_info: ModelInfo, source: nn.Module, source_info: ModelInfo) -> None:
    """A source whose token grid or attention layout differs from the target's cannot be compared entry by
    entry: say which setting differs, in one line, before the first step rather than as a shape error in it."""
    pairs = {"patch size": (target_info.patch_size, source_info.patch_size),
             "depth": (len(target.blocks), len(source.blocks)),
             "width": (target.embed_dim, source.embed_dim),
             "heads": (target.blocks[0].attn.num_heads, source.blocks[0].attn.num_heads),
             "prefix tokens ([cls] + registers)": (target_info.num_prefix_tokens, source_info.num_prefix_tokens)}
    for what, (ours, theirs) in pairs.items():
        if ours != theirs:
            raise GtasegError(f"--source {source_info.arch} does not fit --init {target_info.arch}: {what} "
                              f"{theirs} vs {ours}; guidance compares the two entry by entry, so choose a source "
                              f"of the target's architecture")


def renormalizer(target_info: ModelInfo, source_info: ModelInfo) -> Callable[[Tensor], Tensor] | None:
    """Images normalised for the target, re-normalised for a source trained with another mean/std (None when
    both agree): each model sees the pixels as it was trained to. (x·σ_t + μ_t − μ_s)/σ_s is one affine map
    per channel, x·a + b, moved to the images' device once, not every step."""
    if tuple(target_info.mean) == tuple(source_info.mean) and tuple(target_info.std) == tuple(source_info.std):
        return None
    mt, st, ms, ss = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in
                      (target_info.mean, target_info.std, source_info.mean, source_info.std))
    scale, shift = (st / ss).float(), ((mt - ms) / ss).float()
    placed: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    def renormalize(images: Tensor) -> Tensor:
        key = (images.device, images.dtype)
        if key not in placed:
            placed[key] = (scale.to(*key), shift.to(*key))
        a, b = placed[key]
        return images * a + b

    return renormalize


class Objective:
    """Cross-entropy of the target plus λ · the method's term against a frozen source or starting point.

    ``target``: the model being trained (the bare model: the optimizer, saving and evaluation use it).
    ``method``: the :class:`~gtaseg.methods.Method` class, set up here for ``target`` (after its ``freeze``).
    ``source``: the frozen model guidance pulls towards (methods with ``needs_source``).
    ``reduction``: ``mean`` divides a term that has an entry count by it, ``sum`` leaves it summed.
    ``renormalize``: maps the target's input to the source's normalisation (:func:`renormalizer`).
    ``autocast``: the dtype both forwards run in under ``torch.autocast`` (None: full precision); the guided
    [cls] logits are computed in fp32 either way (gtaseg.attention).
    ``label_smoothing``: ε of the cross-entropy's targets, (1 − ε)·y + ε/K, TransMix's mixed targets included.
    """

    def __init__(self, target: nn.Module, method: type[Method], *, source: nn.Module | None = None, lam: float = 0.0,
                 reduction: str = "mean", blocks: Sequence[int] | None = None, transmix: TransMix | None = None,
                 patch_size: int | None = None, renormalize: Callable[[Tensor], Tensor] | None = None,
                 autocast: torch.dtype | None = None, label_smoothing: float = 0.0):
        if method.needs_source and source is None:
            raise ValueError(f"method {method.name} needs a source model")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.target, self.source = target, source
        self.lam, self.reduction, self.transmix = lam, reduction, transmix
        self.guided = resolve_blocks(target, blocks)
        self.last_block = len(target.blocks) - 1
        self.patch_size = patch_size or target.patch_embed.patch_size[0]
        self.renormalize, self.autocast, self.label_smoothing = renormalize, autocast, label_smoothing
        self.method = method(target, self.guided)  # L2-SP takes its starting point here
        # What runs the target's forward: DDP-wrapped by distribute(), compiled by compile().
        self.forward: nn.Module = TargetForward(target)
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        self.source_features = None if source is None else source.forward_features
        self._kept: dict[str, Captured] | None = None  # compile()'s permanent captures
        self._hooks: ExitStack | None = None  # and what removes them

    # --------------------------------------------------------------------------------- distributed, compile

    def distribute(self, device: torch.device) -> None:
        """Average the target's gradients across torchrun's ranks; every rank runs its own frozen source."""
        self.forward = self.ddp = nn.parallel.DistributedDataParallel(
            self.forward, device_ids=[device.index] if device.type == "cuda" else None)

    def no_sync(self) -> ContextManager:
        """Skip the gradient all-reduce of this backward (every micro-batch but an optimizer step's last)."""
        return self.ddp.no_sync() if self.ddp is not None else nullcontext()

    def compile(self) -> None:
        """torch.compile both forwards. By default Dynamo does not guard on module hooks, so a graph traced without
        them (another objective's, say) would be reused and the hooks never run: make it guard on them. And so
        that the guards never fail step after step (a recompile each time), the capture hooks are registered
        once, before tracing, and stay on; each micro-batch clears what they recorded (see _recording)."""
        from torch._dynamo import config as dynamo_config

        dynamo_config.skip_nnmodule_hook_guards = False
        self._hooks = ExitStack()
        self._kept = {"target": self._hooks.enter_context(self._capture(self.target, self.transmix is not None))}
        if self.source is not None:
            self._kept["source"] = self._hooks.enter_context(self._capture(self.source))
            self.source_features = torch.compile(self.source.forward_features)
        self.forward = torch.compile(self.forward)

    # ------------------------------------------------------------------------------------------- the loss

    def loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Cross-entropy plus λ·(the method's term) for one micro-batch; each model runs forward once.
        Returns the loss and its detached terms ``{"ce", "reg"}``."""
        mixed = self.transmix.mix(images, labels) if self.transmix else None
        if mixed is not None:
            images = mixed.images
        src = None
        with nullcontext() if self.autocast is None else torch.autocast(images.device.type, self.autocast):
            if self.source is not None:
                # Inference mode: no autograd bookkeeping at all for the frozen source (its recorded tensors
                # are only ever subtracted from the target's, which saves nothing of them for backward). It
                # runs first, so its transient activations are gone before the target's saved ones pile up:
                # GTA's peak memory is the baseline's plus the source's weights.
                with torch.inference_mode(), self._recording("source") as src:
                    self.source_features(self.renormalize(images) if self.renormalize else images)
            with self._recording("target", mixed is not None) as cap:
                features, logits = self.forward(images)
        grid = tuple(s // self.patch_size for s in images.shape[-2:])
        if mixed is not None:
            targets = self.transmix.soft_targets(mixed, cap.cls_attention(self.last_block), grid)
            if self.label_smoothing:
                targets = targets * (1 - self.label_smoothing) + self.label_smoothing / targets.shape[-1]
            ce = torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            ce = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        reg = self.method.term(Forwards(cap, src, features))
        entries = self._entries(grid[0] * grid[1])
        if self.reduction == "mean" and entries is not None:
            reg = reg / entries
        return ce + self.lam * reg, {"ce": ce.detach(), "reg": reg.detach()}

    def _entries(self, patches: int) -> int | None:
        return self.method.entries(Layout.of(self.target, len(self.guided), patches))

    def term_entries(self, image_size: int) -> int | None:
        """Entries the method's term sums per image at ``image_size`` (None: it has no entry count); ``reduction=
        "mean"`` divides the sum by this."""
        return self._entries((image_size // self.patch_size) ** 2)

    def lam_conversion(self, image_size: int) -> dict | None:
        """What λ means in the other reduction (written beside the config as config.json's lam_conversion)."""
        entries = self.term_entries(image_size)
        if entries is None:
            return None
        mean = self.reduction == "mean"
        return {"entries": entries, "formula": "lam_sum = lam_mean / entries",
                "lam_mean": self.lam if mean else self.lam * entries,
                "lam_sum": self.lam / entries if mean else self.lam}

    # ------------------------------------------------------------------------------------------ capture

    def _capture(self, model: nn.Module, last_block_logits: bool = False) -> ContextManager[Captured]:
        """A capture of what the method records in ``model`` (and the last block's [cls] logits for TransMix)."""
        wanted = self.method.records()
        logit_blocks = set(wanted.logits) | ({self.last_block} if last_block_logits else set())
        return capture(model, sorted(logit_blocks), block_outputs=wanted.block_outputs,
                       msa_outputs=wanted.msa_outputs, queries_keys=wanted.queries_keys)

    def _recording(self, which: str, last_block_logits: bool = False) -> ContextManager[Captured]:
        """The capture for one forward of the target or the source: fresh hooks, or under compile() the
        permanent ones with their records cleared."""
        if self._kept is not None:
            kept = self._kept[which]
            kept.clear()
            return nullcontext(kept)
        return self._capture(self.target if which == "target" else self.source, last_block_logits)
