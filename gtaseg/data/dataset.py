"""A torch Dataset over a :class:`Split`, and the one place a data source name is resolved."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset

from gtaseg.data.folder import folder_split
from gtaseg.data.images import load_rgb
from gtaseg.data.split import Split
from gtaseg.errors import DataError


class ImageDataset(Dataset):
    def __init__(self, split: Split, transform: Callable):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: int | tuple[int, int]):
        """``item`` is an index, or (index, seed) from :class:`SeededStream` to fix its augmentation."""
        i, aug_seed = item if isinstance(item, tuple) else (item, None)
        path, label = self.split.samples[i]
        image = load_rgb(path)
        if aug_seed is None:
            return self.transform(image), label
        # torchvision v2 draws from torch's global RNG; seed it per sample so results do not depend on
        # which worker runs the sample or on where a resumed run restarted.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(aug_seed)
            return self.transform(image), label


def load_split(data: str, split: str, data_root: str | os.PathLike | None = None,
               synthetic_root: str | os.PathLike | None = None) -> Split:
    """``data`` is ``synthetic``, a named fine-grained dataset (with ``data_root``) or an ImageFolder root."""
    if data == "synthetic":
        from gtaseg.data.synthetic import synthetic_split

        return synthetic_split(synthetic_root, split)
    from gtaseg.data.finegrained import DATASETS, load_split as load_named

    if data in DATASETS:
        if data_root is None:
            raise DataError(f"--data {data} needs --data-root (the folder laid out as data/README.md says)")
        return load_named(data, data_root, split)
    if Path(data).is_dir():
        return folder_split(data, split)
    raise DataError(f"--data {data}: not 'synthetic', a dataset name ({', '.join(DATASETS)}) or an existing folder")
