"""The fine-tuning methods, one class each (:class:`Method`), by ``--method`` name.

Adding a method: one :class:`Method` subclass in the module of its family (or a new one), its entry in
:data:`METHODS` (whose order is ``--method``'s and the report's), and its test in tests/test_method_terms.py.
Importing this package imports no torch: ``gtaseg train --help`` reads the names, help and default λ.
"""
from __future__ import annotations

from gtaseg.methods.attention_transfer import AttnDistill, ClsDistill
from gtaseg.methods.base import Forwards, Layout, Method, Records
from gtaseg.methods.guidance import GTA, GuideBlock, GuideMSA
from gtaseg.methods.penalties import BSS, L2SP
from gtaseg.methods.subsets import AttnOnly, Baseline, FFNOnly, Linear

__all__ = ["METHODS", "REDUCTIONS", "Forwards", "Layout", "Method", "Records", "lam_text"]

METHODS: dict[str, type[Method]] = {m.name: m for m in [
    Baseline, GTA, L2SP, BSS, AttnOnly, FFNOnly, Linear, GuideBlock, GuideMSA, AttnDistill, ClsDistill]}

# How a term with an entry count (Method.entries) is reduced over its entries before λ weighs it.
REDUCTIONS = ("mean", "sum")


def lam_text(method: str, lam: float) -> str:
    """λ as printed: "–" for a method without an extra term (baseline, attn-only, ...), whose λ weighs nothing."""
    return f"{lam:g}" if method in METHODS and METHODS[method].default_lam else "–"
