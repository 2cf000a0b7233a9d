"""Per-class sampling of the training split (the paper's 15/30/50/100 % settings)."""
from __future__ import annotations

import math
import random
from dataclasses import replace

from gtaseg.data.split import Split


def stratified_subset(split: Split, rate: float, seed: int) -> Split:
    """Keep ``rate`` of every class (rounded up, at least one image), chosen reproducibly from ``seed``.

    Rounding up, rather than to the nearest count, is what every stored result was run with, so they keep their
    meaning; and no class is left without an image. On small classes the realised fraction is therefore above
    ``rate`` (:func:`realised_fraction`). The choice depends only on the seed and the sorted file list, not on
    the order the loader listed them.
    """
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"sampling rate must be in (0, 1], got {rate}")
    keep = []
    for label, idx in split.by_class().items():
        k = max(1, math.ceil(rate * len(idx) - 1e-9))
        keep.extend(random.Random(f"{seed}:{label}").sample(idx, k))
    return replace(split.subset(sorted(keep)), drawn_from=len(split))


def realised_fraction(split: Split) -> float:
    """The share of the images it was drawn from that a sampled split holds (1 for a split as listed)."""
    return len(split) / split.drawn_from if split.drawn_from else 1.0


def describe_sample(split: Split, rate: float) -> str:
    """The line training prints at its start: how many images it trains on, of how many, and why not ``rate``."""
    total, percent = split.drawn_from or len(split), 100 * realised_fraction(split)
    line = f"training on {len(split)} of {total} images ({percent:.1f} %)"
    if rate < 1:
        line += f": --sampling-rate {rate:g} keeps ⌈{rate:g} × n⌉ of each class's n images, at least one"
    return line
