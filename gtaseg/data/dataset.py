"""A torch Dataset over a :class:`Split`, and the one place a data source name is resolved."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, default_collate

from gtaseg.data.folder import folder_split
from gtaseg.data.images import load_rgb
from gtaseg.data.split import Split
from gtaseg.errors import DataError


@dataclass(frozen=True)
class BadImage:
    """Stands in for a sample whose file cannot be read (``mark_bad=True``): the caller decides whether to
    stop or skip it, in the main process, where a :class:`DataError` is still one line."""

    path: str
    reason: str  # the one-line message of the DataError, naming the file


class ImageDataset(Dataset):
    """``mark_bad``: an unreadable file gives a :class:`BadImage` instead of raising (use
    :func:`collate_marked` as the loader's ``collate_fn``)."""

    def __init__(self, split: Split, transform: Callable, mark_bad: bool = False):
        self.split, self.transform, self.mark_bad = split, transform, mark_bad

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: int | tuple[int, int]):
        """``item`` is an index, or (index, seed) from :class:`SeededStream` to fix its augmentation."""
        i, aug_seed = item if isinstance(item, tuple) else (item, None)
        path, label = self.split.samples[i]
        try:
            image = load_rgb(path)
        except DataError as e:
            if not self.mark_bad:
                raise
            return BadImage(str(path), str(e))
        if aug_seed is None:
            return self.transform(image), label
        # torchvision v2 draws from torch's global RNG; seed it per sample so results do not depend on
        # which worker runs the sample or on where a resumed run restarted.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(aug_seed)
            return self.transform(image), label


def collate_marked(batch: list) -> tuple[torch.Tensor | None, torch.Tensor | None, list[BadImage]]:
    """``(images, labels, bad)``: the readable samples collated as usual (``None, None`` when there are
    none) and the :class:`BadImage` markers left out of them."""
    bad = [b for b in batch if isinstance(b, BadImage)]
    good = [b for b in batch if not isinstance(b, BadImage)]
    if not good:
        return None, None, bad
    images, labels = default_collate(good)
    return images, labels, bad


def check_classes(split: Split, data: str, rate: float) -> None:
    """Every class needs at least one training image, or its classifier row would never see an example."""
    counts = [0] * len(split.classes)
    for _, label in split.samples:
        counts[label] += 1
    empty = [name for name, n in zip(split.classes, counts) if n == 0]
    if empty:
        where = Path(data) / "train" / empty[0] if Path(data).is_dir() else Path(data)
        more = f" (and {len(empty) - 1} more: {', '.join(empty[1:4])})" if len(empty) > 1 else ""
        raise DataError(f"{where}: class {empty[0]!r} has no training images at --sampling-rate {rate:g}{more}")


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
