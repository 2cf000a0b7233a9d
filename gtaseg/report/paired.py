"""A paired bootstrap of the difference in top-1 between two methods, over test images and seeds.

The two methods' runs are paired by seed and scored on the same test images. One resample draws the seeds with
replacement and, independently, the test images with replacement, and takes the same images for both methods and
every drawn seed: the images are a sample from the data just as the seeds are from the training noise, and a hard
image is hard for every run, so it stays paired across methods and seeds alike.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RESAMPLES = 10_000
LEVEL = 0.95
# The bootstrap's own seed: a report gives the same interval every time it is made.
SEED = 0


def paired_differences(a: Sequence[Sequence[bool]], b: Sequence[Sequence[bool]]) -> np.ndarray:
    """[seeds, images] of a's correctness minus b's (−1, 0 or 1): ``a[k][i]`` is whether method a's run of the
    k-th paired seed got test image i right, and ``b[k][i]`` the same for method b."""
    a_, b_ = np.asarray(a, dtype=np.int8), np.asarray(b, dtype=np.int8)
    if a_.shape != b_.shape or a_.ndim != 2 or 0 in a_.shape:
        raise ValueError(f"need the same seeds × images for both methods, got {a_.shape} and {b_.shape}")
    return a_ - b_


def bootstrap_interval(a: Sequence[Sequence[bool]], b: Sequence[Sequence[bool]], *, resamples: int = RESAMPLES,
                       level: float = LEVEL, seed: int = SEED) -> tuple[float, float]:
    """The percentile interval (top-1 points, %) of the mean over seeds of a's top-1 minus b's, from
    ``resamples`` paired resamples of seeds and test images (see the module's docstring)."""
    diff = paired_differences(a, b).astype(np.float64)
    seeds, images = diff.shape
    rng = np.random.default_rng(seed)
    stats = np.empty(resamples)
    for r in range(resamples):
        drawn_seeds = rng.integers(0, seeds, seeds)
        drawn_images = rng.integers(0, images, images)
        stats[r] = diff[np.ix_(drawn_seeds, drawn_images)].mean()
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(100.0 * stats, [tail, 100 - tail])
    return float(low), float(high)
