"""Where a model's [cls] attention goes: its mass on a region (the object, or a shortcut cue) per image.

The last block's post-softmax [cls] attention over the patch tokens, averaged over heads, is weighed against the
share of each patch that the region covers: mass = Σ_p a_p · cover_p, with Σ_p a_p = 1. A uniform attention
scores the region's area fraction; attention wholly inside the region scores 1.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.nn import functional as F

from gtaseg.attention import cls_attention


def patch_cover(mask: np.ndarray, image_size: int, patch_size: int) -> Tensor:
    """[N]: the share of each patch of an ``image_size``² input that the 0/1 ``mask`` covers, row-major.

    The mask is resized with nearest neighbour to the input size and cropped to a multiple of the patch, as the
    images are (crop_pct 1.0)."""
    resized = np.asarray(Image.fromarray((mask > 0).astype(np.uint8)).resize((image_size, image_size), Image.NEAREST))
    side = image_size // patch_size * patch_size
    cover = torch.from_numpy(resized[:side, :side].astype(np.float32))[None, None]
    return F.avg_pool2d(cover, patch_size).flatten()


def region_mass(attention: Tensor, cover: Tensor) -> Tensor:
    """[B]: Σ_p a_p · cover_p for [B, N] attention (rows summing to 1) and [B, N] patch cover."""
    return (attention * cover).sum(-1)


@torch.inference_mode()
def attention_masses(model: nn.Module, images: Tensor, regions: Mapping[str, Sequence[Path | str]], patch_size: int,
                     batch_size: int = 32) -> dict[str, list[float]]:
    """Per region (name → one mask file per image), per image, the last block's head-mean [cls] attention mass on
    it; one forward per batch serves every region."""
    out: dict[str, list[float]] = {name: [] for name in regions}
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        attention = cls_attention(model, batch).float().mean(1)  # [B, N]
        for name, masks in regions.items():
            cover = torch.stack([patch_cover(np.asarray(Image.open(m)), batch.shape[-1], patch_size)
                                 for m in masks[start:start + batch_size]]).to(attention.device)
            out[name] += region_mass(attention, cover).tolist()
    return out
