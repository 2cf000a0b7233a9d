"""The fine-tuning methods: which parameters train, what the target records, and the extra loss term."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch only for the annotation: the CLI reads METHODS for --help without importing torch
    from torch import nn

# How gta, guide-block and guide-msa reduce their term over its entries (gtaseg.regularizers.guidance_l2).
REDUCTIONS = ("mean", "sum")


@dataclass(frozen=True)
class Method:
    name: str
    help: str
    default_lam: float = 0.0
    needs_source: bool = False  # a frozen source model runs on every batch
    guide: str | None = None  # what is guided towards the source: "logits", "block", "msa", "maps" or "cls-probs"
    trains: tuple[str, ...] | None = None  # parameter-name fragments that train (the head always does)

    def trainable(self, name: str) -> bool:
        from gtaseg.models import HEAD_PREFIX  # here, not above: torch comes with it

        return self.trains is None or name.startswith(HEAD_PREFIX) or any(f in name for f in self.trains)

    def freeze(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            p.requires_grad_(self.trainable(name))


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("baseline", "naive fine-tuning: cross-entropy only"),
    Method("gta", "GTA: L2 between target and source pre-softmax [cls]-query attention logits", 1.0,
           needs_source=True, guide="logits"),
    Method("l2sp", "L2-SP: ½‖w − w₀‖² towards the initial backbone weights", 0.01),
    Method("bss", "BSS: shrink the smallest singular value of the batch features before the head", 0.001),
    Method("attn-only", "train only the attention parameters (and the head)", trains=(".attn.",)),
    Method("ffn-only", "train only the MLP parameters (and the head)", trains=(".mlp.",)),
    Method("linear", "linear probing: train only the new head on the frozen backbone", trains=()),
    Method("guide-block", "L2 guidance of every guided block's output z′ towards the source", 1.0,
           needs_source=True, guide="block"),
    Method("guide-msa", "L2 guidance of every guided block's MSA output towards the source", 1.0,
           needs_source=True, guide="msa"),
    # Attention transfer (Li et al., NeurIPS 2024; gtaseg/distill.py). 3 is their weight for attn-distill;
    # cls-distill is the same per-query loss on one query, so the same weight puts it on the same scale.
    Method("attn-distill", "attention transfer: cross-entropy between source and target post-softmax attention "
           "maps, all queries (mean over batch, heads, queries; summed over blocks)", 3.0,
           needs_source=True, guide="maps"),
    Method("cls-distill", "attention transfer on the [cls] query's row only: GTA's row as probabilities, "
           "cross-entropy instead of L2 on logits", 3.0, needs_source=True, guide="cls-probs"),
]}


def lam_text(method: str, lam: float) -> str:
    """λ as printed: "–" for a method without an extra term (baseline, attn-only, ...), whose λ weighs nothing."""
    return f"{lam:g}" if method in METHODS and METHODS[method].default_lam else "–"
