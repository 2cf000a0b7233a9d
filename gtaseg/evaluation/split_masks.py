"""Object masks that come with a classification split (synthetic data, Pet trimaps, CUB segmentations),
as samples for the same Jaccard protocol as eval-voc."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from gtaseg.data.split import Split
from gtaseg.errors import DataError


@dataclass(frozen=True)
class MaskSample:
    """An image and its object mask; ``dataset`` names the fine-grained dataset whose own mask format
    :func:`gtaseg.data.finegrained.read_object_mask` converts (None: already 0 background / 1 object / 255 void)."""

    id: str
    image: Path
    mask: Path
    dataset: str | None = None

    def labels(self) -> np.ndarray:
        if self.dataset is None:
            with Image.open(self.mask) as m:
                return np.array(m, dtype=np.uint8)
        from gtaseg.data.finegrained import read_object_mask

        return read_object_mask(self.dataset, self.mask)


def mask_samples(split: Split, dataset: str | None = None) -> list[MaskSample]:
    """The split's images that have a mask, in split order."""
    if split.masks is None:
        return []
    return [MaskSample(Path(path).stem, Path(path), Path(mask), dataset)
            for (path, _), mask in zip(split.samples, split.masks) if mask is not None]


def dataset_mask_samples(data: str, split_name: str, split: Split, limit: int | None = None) -> list[MaskSample]:
    """The first ``limit`` (None or 0: all) samples of ``split``, the ``split_name`` split of ``--data data``,
    that have an object mask, read in that dataset's own mask format; a one-line error when none has one."""
    from gtaseg.data.finegrained import DATASETS

    samples = mask_samples(split, data if data in DATASETS else None)
    if not samples:
        raise DataError(f"{data} ({split_name}): no object masks found (Pet: annotations/trimaps/, CUB: "
                        f"segmentations/, ImageFolder: masks/{split_name}/<class>/)")
    return samples[:limit] if limit else samples
