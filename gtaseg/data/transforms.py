"""Train and eval transforms (torchvision v2), parameterised by the model's normalisation."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2


def train_transform(size: int, mean: Sequence[float], std: Sequence[float],
                    crop_scale: tuple[float, float] = (0.08, 1.0), randaugment: bool = True) -> v2.Compose:
    """RandomResizedCrop, flip and RandAugment (the paper's recipe: no random erasing)."""
    ops = [v2.ToImage(), v2.RandomResizedCrop(size, scale=crop_scale, antialias=True), v2.RandomHorizontalFlip()]
    if randaugment:
        ops.append(v2.RandAugment(num_ops=2, magnitude=9))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(ops)


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float], crop_pct: float = 0.875) -> v2.Compose:
    """Resize the short side to size/crop_pct, then centre-crop size×size."""
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(int(round(size / crop_pct)), antialias=True),
        v2.CenterCrop(size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])
