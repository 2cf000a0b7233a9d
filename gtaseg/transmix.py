"""TransMix: CutMix/Mixup whose CutMix label weight also counts the [cls] attention inside the pasted box.

The mixing partner of image i is image B-1-i (the flipped batch), as in timm's Mixup. Mixup and CutMix
alternate at random (switch probability 0.5) as in TransMix's recipe.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class MixedBatch:
    images: Tensor
    labels: Tensor  # [B] original labels
    lam: float  # weight of the original labels (before the attention correction)
    box: tuple[int, int, int, int] | None  # (y0, y1, x0, x1) pasted from the flipped batch, CutMix only


class TransMix:
    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 switch_prob: float = 0.5, seed: int = 0):
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha, self.switch_prob = mixup_alpha, cutmix_alpha, switch_prob
        self.rng = np.random.default_rng(seed)

    def mix(self, images: Tensor, labels: Tensor) -> MixedBatch:
        flipped = images.flip(0)
        if self.rng.random() < self.switch_prob:
            lam = float(self.rng.beta(self.cutmix_alpha, self.cutmix_alpha))
            y0, y1, x0, x1 = self._box(images.shape[-2:], lam)
            images = images.clone()
            images[:, :, y0:y1, x0:x1] = flipped[:, :, y0:y1, x0:x1]
            area = (y1 - y0) * (x1 - x0) / (images.shape[-2] * images.shape[-1])
            return MixedBatch(images, labels, 1.0 - area, (y0, y1, x0, x1))
        lam = float(self.rng.beta(self.mixup_alpha, self.mixup_alpha))
        return MixedBatch(images * lam + flipped * (1.0 - lam), labels, lam, None)

    def state_dict(self) -> dict:
        """Where its generator stands (plain ints and strings, as ``torch.load(weights_only=True)`` reads)."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]

    def _box(self, size: torch.Size, lam: float) -> tuple[int, int, int, int]:
        """CutMix's box of area ≈ (1 − lam), centred uniformly and clipped; drawn from this object's RNG (not
        numpy's global one, as timm's rand_bbox is) so a resumed run mixes the same boxes."""
        h, w = size
        ch, cw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
        cy, cx = int(self.rng.integers(h)), int(self.rng.integers(w))
        return (max(cy - ch // 2, 0), min(cy + (ch + 1) // 2, h), max(cx - cw // 2, 0), min(cx + (cw + 1) // 2, w))

    def soft_targets(self, batch: MixedBatch, cls_attention: Tensor, grid: tuple[int, int]) -> Tensor:
        """[B, K] label distributions. ``cls_attention`` is the last block's post-softmax [cls] attention
        over patches, [B, H, N] on the ``grid`` = (rows, cols) of patches; it is detached here."""
        one_hot = F.one_hot(batch.labels, self.num_classes).float()
        lam = torch.full((len(one_hot), 1), batch.lam, device=one_hot.device)
        if batch.box is not None:
            h, w = batch.images.shape[-2:]
            y0, y1, x0, x1 = batch.box
            pixel_box = torch.zeros(1, 1, h, w, device=one_hot.device)
            pixel_box[..., y0:y1, x0:x1] = 1
            attn = cls_attention.detach().float().mean(1)  # [B, N]
            patch_box = F.interpolate(pixel_box, size=grid, mode="nearest").flatten(1)
            mass_in_box = (attn * patch_box).sum(1, keepdim=True) / attn.sum(1, keepdim=True)
            lam = 1.0 - 0.5 * ((1.0 - lam) + mass_in_box)
        return lam * one_hot + (1.0 - lam) * one_hot.flip(0)
