"""The protocol's input side: images resized to S×S and cropped to a multiple of the patch, label maps
resized the same way with nearest neighbour; and the Dataset that feeds the runner."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from gtaseg.data.images import load_rgb


class SegSample(Protocol):
    """An image with a ground-truth label map (VOC: :class:`gtaseg.data.voc.VocSample`, COCO:
    :class:`gtaseg.evaluation.coco.CocoSample`). Must pickle cheaply: DataLoader workers receive it."""

    id: str | int
    image: Path

    def labels(self) -> np.ndarray: ...


@dataclass(frozen=True)
class Geometry:
    """Where the protocol's pixels come from: the image is resized to ``size``×``size``, then its top-left
    ``crop``×``crop`` (the largest multiple of the patch) is kept, as DINO's visualize_attention does."""

    size: int
    patch_size: int

    def __post_init__(self) -> None:
        if self.size < self.patch_size:
            raise ValueError(f"image size {self.size} is smaller than the patch size {self.patch_size}")

    @property
    def crop(self) -> int:
        return self.size - self.size % self.patch_size

    @property
    def grid(self) -> tuple[int, int]:
        return self.crop // self.patch_size, self.crop // self.patch_size


_RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def image_tensor(image: Image.Image, geometry: Geometry, mean: Sequence[float], std: Sequence[float],
                 resize: str = "bicubic") -> Tensor:
    """RGB PIL image → normalised float [3, crop, crop] (resize to S×S, then top-left crop). PIL's bilinear
    is what torchvision's Resize does to a PIL image, as DINO, IPViT and Leopart feed theirs."""
    resized = image.resize((geometry.size, geometry.size), _RESAMPLING[resize])
    x = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    return x[:, : geometry.crop, : geometry.crop].contiguous()


def padded_tensor(image: Image.Image, patch_size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """RGB PIL image at its own size → normalised float [3, H', W'], zero-padded (after normalisation, as
    LOST's main_lost.py does) at the bottom and right to the next multiple of the patch."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    h, w = x.shape[1:]
    pad_h, pad_w = -h % patch_size, -w % patch_size
    return torch.nn.functional.pad(x, (0, pad_w, 0, pad_h))


def label_tensor(labels: np.ndarray, geometry: Geometry) -> Tensor:
    """uint8 [H, W] label map → uint8 [crop, crop] (nearest resize to S×S, then the image's crop)."""
    resized = Image.fromarray(labels).resize((geometry.size, geometry.size), Image.Resampling.NEAREST)
    return torch.from_numpy(np.array(resized, dtype=np.uint8))[: geometry.crop, : geometry.crop]


class SegmentationDataset(Dataset):
    """Yields ``(image [3, c, c], labels [c, c], index, (H, W) original size)`` for each sample."""

    def __init__(self, samples: Sequence[SegSample], geometry: Geometry,
                 mean: Sequence[float], std: Sequence[float], resize: str = "bicubic") -> None:
        self.samples, self.geometry = list(samples), geometry
        self.mean, self.std, self.resize = tuple(mean), tuple(std), resize

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int, tuple[int, int]]:
        sample = self.samples[i]
        image = load_rgb(sample.image)
        labels = sample.labels()
        return (image_tensor(image, self.geometry, self.mean, self.std, self.resize), label_tensor(labels, self.geometry),
                i, (image.height, image.width))



def to_original(mask: Tensor, geometry: Geometry, size: tuple[int, int]) -> np.ndarray:
    """Map a bool [crop, crop] mask back onto the original H×W image: the strip the crop cut off counts as
    outside the mask, then a nearest resize undoes the S×S resize."""
    full = np.zeros((geometry.size, geometry.size), dtype=np.uint8)
    full[: geometry.crop, : geometry.crop] = mask.cpu().numpy()
    height, width = size
    return np.array(Image.fromarray(full).resize((width, height), Image.Resampling.NEAREST), dtype=bool)
