"""A paired bootstrap of the difference in a per-image score between two methods, over images and seeds: top-1
(1 for a right prediction, 0 for a wrong one), or an attention score in [0, 1] (Jaccard, CorLoc's hit).

The two methods' runs are paired by seed and scored on the same images. One resample draws the seeds with
replacement and, independently, the images with replacement, and takes the same images for both methods and
every drawn seed: the images are a sample from the data just as the seeds are from the training noise, and a hard
image is hard for every run, so it stays paired across methods and seeds alike.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

import numpy as np

RESAMPLES = 10_000
LEVEL = 0.95
# The bootstrap's own seed: a report gives the same interval every time it is made.
SEED = 0

T = TypeVar("T")


def paired_differences(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> np.ndarray:
    """[seeds, images] of a's score minus b's: ``a[k][i]`` is method a's score of image i in its run of the k-th
    paired seed (for top-1, whether it got the image right), and ``b[k][i]`` the same for method b."""
    a_, b_ = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_.shape != b_.shape or a_.ndim != 2 or 0 in a_.shape:
        raise ValueError(f"need the same seeds × images for both methods, got {a_.shape} and {b_.shape}")
    return a_ - b_


def bootstrap_interval(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], *, resamples: int = RESAMPLES,
                       level: float = LEVEL, seed: int = SEED) -> tuple[float, float]:
    """The percentile interval (points, %: the scores are fractions) of the mean over seeds of a's mean score
    minus b's, from ``resamples`` paired resamples of seeds and images (see the module's docstring)."""
    diff = paired_differences(a, b)
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


def first_by_seed(runs: Iterable[tuple[int, T]]) -> dict[int, T]:
    """Seed → its run, from (seed, run) pairs: a seed run twice (the report warns then) counts by its first run."""
    out: dict[int, T] = {}
    for seed, run in runs:
        out.setdefault(seed, run)
    return out


def paired_interval(a: Sequence[Mapping[str, float]],
                    b: Sequence[Mapping[str, float]]) -> tuple[tuple[float, float] | None, int]:
    """:func:`bootstrap_interval` from per-run scores keyed by image id (``a[k]``: method a's run of the k-th
    paired seed), on the images every run scored, in the first run's order; and how many those are. (None, 0)
    when no image was scored by every run."""
    common = set.intersection(*(set(r) for r in (*a, *b)))
    ids = [i for i in a[0] if i in common]
    if not ids:
        return None, 0
    return bootstrap_interval([[r[i] for i in ids] for r in a], [[r[i] for i in ids] for r in b]), len(ids)
