"""Methods with no extra term that differ in which parameters train (the new head always does)."""
from __future__ import annotations

from gtaseg.methods.base import Method


class Baseline(Method):
    name = "baseline"
    help = "naive fine-tuning: cross-entropy only"


class AttnOnly(Method):
    name = "attn-only"
    help = "train only the attention parameters (and the head)"
    trains = (".attn.",)


class FFNOnly(Method):
    name = "ffn-only"
    help = "train only the MLP parameters (and the head)"
    trains = (".mlp.",)


class Linear(Method):
    name = "linear"
    help = "linear probing: train only the new head on the frozen backbone"
    trains = ()
