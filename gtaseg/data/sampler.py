"""An endless, seeded stream of (index, augmentation seed) pairs.

Epoch ``e`` is a fixed permutation drawn from (seed, e), and every sample carries its own augmentation
seed, so the stream can restart at any position (resume) and gives the same batches whatever the number
of data-loader workers.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class SeededStream(Sampler):
    def __init__(self, size: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1):
        self.size, self.seed, self.start = size, seed, start
        self.rank, self.world_size = rank, world_size

    def _epoch(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # Position p of the global stream goes to rank p % world_size, so ranks split every global batch.
        pos, epoch, order = self.start + self.rank, -1, None
        while True:
            if pos // self.size != epoch:
                epoch = pos // self.size
                order = self._epoch(epoch)
            yield int(order[pos % self.size]), (self.seed * 1_000_003 + pos) % 2**63
            pos += self.world_size
