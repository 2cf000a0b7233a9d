"""The per-class sampling rate and the seeded data stream."""
import itertools
import random

import pytest

from gtaseg.data.sampler import SeededStream
from gtaseg.data.sampling import stratified_subset
from gtaseg.data.split import Split


def split_with(counts):
    samples = [(f"/d/c{c}/{i:03d}.jpg", c) for c, n in enumerate(counts) for i in range(n)]
    return Split(samples, [f"c{c}" for c in range(len(counts))])


@pytest.mark.parametrize("rate", [0.15, 0.3, 0.5, 1.0])
def test_stratified_per_class_and_at_least_one(rate):
    counts = [40, 7, 1, 13]
    sub = stratified_subset(split_with(counts), rate, seed=0)
    per_class = [sub.targets.count(c) for c in range(len(counts))]
    assert per_class == [max(1, -(-int(rate * 100) * n // 100)) for n in counts]


def test_reproducible_and_independent_of_listing_order():
    split = split_with([30, 30])
    a = stratified_subset(split, 0.3, seed=3)
    shuffled = list(split.samples)
    random.Random(0).shuffle(shuffled)
    b = stratified_subset(Split(shuffled, split.classes), 0.3, seed=3)
    assert sorted(a.samples) == sorted(b.samples)
    assert sorted(stratified_subset(split, 0.3, seed=4).samples) != sorted(a.samples)


def test_subsets_keep_masks_aligned():
    split = split_with([5, 5])
    split = Split(split.samples, split.classes, [p.replace(".jpg", ".png") for p, _ in split.samples])
    sub = stratified_subset(split, 0.5, seed=0)
    assert all(m == p.replace(".jpg", ".png") for (p, _), m in zip(sub.samples, sub.masks))


def test_stream_restarts_anywhere_and_ranks_split_it():
    full = list(itertools.islice(SeededStream(10, seed=1), 35))
    assert sorted(i for i, _ in full[:10]) == list(range(10))  # each epoch is a permutation
    assert [i for i, _ in full[:10]] != [i for i, _ in full[10:20]]  # and epochs differ
    assert list(itertools.islice(SeededStream(10, seed=1, start=17), 18)) == full[17:35]
    r0 = list(itertools.islice(SeededStream(10, seed=1, rank=0, world_size=2), 10))
    r1 = list(itertools.islice(SeededStream(10, seed=1, rank=1, world_size=2), 10))
    assert [x for pair in zip(r0, r1) for x in pair] == full[:20]
