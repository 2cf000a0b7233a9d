"""Per-class sampling of the training split (the paper's 15/30/50/100 % settings)."""
from __future__ import annotations

import math
import random
from collections import defaultdict

from gtaseg.data.split import Split


def stratified_subset(split: Split, rate: float, seed: int) -> Split:
    """Keep ``rate`` of every class (rounded up, at least one image), chosen reproducibly from ``seed``.

    The choice depends only on the seed and the sorted file list, not on the order the loader listed them.
    """
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"sampling rate must be in (0, 1], got {rate}")
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, (_, label) in enumerate(split.samples):
        by_class[label].append(i)
    keep = []
    for label in sorted(by_class):
        idx = sorted(by_class[label], key=lambda i: split.samples[i][0])
        k = max(1, math.ceil(rate * len(idx) - 1e-9))
        keep.extend(random.Random(f"{seed}:{label}").sample(idx, k))
    return split.subset(sorted(keep))
