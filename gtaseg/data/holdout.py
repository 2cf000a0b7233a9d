"""A validation split held out of the training images, per class, for data that has none of its own."""
from __future__ import annotations

import random

from gtaseg.data.split import Split


def hold_out(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """``(train, val)``: ``fraction`` of every class's images (rounded to the nearest count, at least one, and at
    least one left to train on) moved to ``val``, chosen from ``seed`` and the sorted file names only, so the
    same seed holds out the same images whatever order the files were listed in. A class of one image stays
    whole in ``train``."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    held = []
    for label, idx in split.by_class().items():
        k = min(max(1, round(fraction * len(idx))), len(idx) - 1)
        # Its own stream ("val:"), so the held-out images are not those --sampling-rate would draw first.
        held.extend(random.Random(f"val:{seed}:{label}").sample(idx, k))
    held_set = set(held)
    return (split.subset([i for i in range(len(split)) if i not in held_set]), split.subset(sorted(held)))
