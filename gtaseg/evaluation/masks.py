"""From [cls] attention weights to binary masks: DINO's mass threshold and the patch → pixel upsampling.

Pure tensor functions, independent of any model, so the protocol can be checked on hand-made numbers.
"""
from __future__ import annotations

import torch
from torch import Tensor


def mass_mask(weights: Tensor, mass: float) -> Tensor:
    """Keep the largest weights whose share of the total mass reaches ``mass``: bool, same shape as ``weights``.

    Works on the last dimension (patches), independently for every leading index (image, head).
    Follows DINO's ``visualize_attention.py`` exactly: sort ascending, normalise to sum 1, cumulative sum,
    keep where the cumulative sum is strictly greater than ``1 - mass``. The patch at which the cumulative
    sum crosses ``1 - mass`` is therefore kept, so the kept mass is at least ``mass``; when the cumulative
    sum lands exactly on ``1 - mass`` that patch is dropped and the kept mass equals ``mass``.
    Equal weights keep their patch order (stable sort), so a tie at the boundary is resolved the same
    way on every device.
    """
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    # float64: the boundary test compares a running sum with 1 - mass, and float32 round-off over ~1000
    # patches would move the boundary patch depending on the device's summation order.
    values, order = torch.sort(weights.double(), dim=-1, stable=True)
    values = values / values.sum(dim=-1, keepdim=True)
    keep_sorted = values.cumsum(dim=-1) > (1.0 - mass)
    return torch.empty_like(keep_sorted).scatter_(-1, order, keep_sorted)


def to_pixels(patch_values: Tensor, grid: tuple[int, int], patch_size: int) -> Tensor:
    """[..., N] per-patch values (N = gh·gw, row-major) → [..., gh·p, gw·p], each patch a p×p block
    (nearest-neighbour upsampling by an integer factor)."""
    gh, gw = grid
    if patch_values.shape[-1] != gh * gw:
        raise ValueError(f"{patch_values.shape[-1]} patches do not fill a {gh}x{gw} grid")
    blocks = patch_values.unflatten(-1, (gh, gw))
    return blocks.repeat_interleave(patch_size, dim=-2).repeat_interleave(patch_size, dim=-1)


def merged_mask(attention: Tensor, mass: float) -> Tensor:
    """[..., H, N] attention → [..., N] one mask of the head-averaged attention (the ``merged`` variant)."""
    return mass_mask(attention.double().mean(dim=-2), mass)


def attention_map(attention: Tensor) -> Tensor:
    """[..., H, N] attention → [..., N] max over heads scaled to [0, 1] per image, for display."""
    top = attention.float().amax(dim=-2)
    lo, hi = top.amin(dim=-1, keepdim=True), top.amax(dim=-1, keepdim=True)
    return (top - lo) / (hi - lo).clamp_min(torch.finfo(top.dtype).tiny)
