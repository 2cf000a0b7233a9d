"""From [cls] attention weights to binary masks: DINO's mass threshold, the patch → pixel upsampling, and
the merged map's optional blur and small-component filter (Leopart's).

Functions of tensors only, independent of any model, so the protocol can be checked on hand-made numbers.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

from gtaseg.evaluation.protocols import BLUR_KERNEL


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


def blur_map(values: Tensor, grid: tuple[int, int], sigma: float) -> Tensor:
    """[..., N] per-patch values blurred on the patch grid with a 7×7 Gaussian (torchvision's, reflect
    padding, as Leopart's GaussianBlur(7, sigma)); ``sigma`` 0 returns them unchanged."""
    if sigma <= 0:
        return values
    lead = values.shape[:-1]
    maps = values.reshape(-1, 1, *grid)
    return gaussian_blur(maps, [BLUR_KERNEL, BLUR_KERNEL], [sigma, sigma]).reshape(*lead, -1)


def label_grid(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """scipy's connected components of a 2-D bool mask: 4-connectivity (scipy's default cross) or 8."""
    structure = np.ones((3, 3), dtype=bool) if connectivity == 8 else None
    labels, count = ndimage.label(mask, structure=structure)
    return labels, int(count)


def drop_small_components(mask: Tensor, grid: tuple[int, int], min_size: int) -> Tensor:
    """[..., N] bool masks with the 8-connected components of fewer than ``min_size`` patches removed
    (Leopart drops those of <= 2 patches: min_size 3)."""
    if min_size <= 1:
        return mask
    flat = mask.reshape(-1, *grid).cpu().numpy().copy()  # never edit the caller's mask in place
    for m in flat:  # a few hundred patches per image: scipy on the host is microseconds
        labels, _ = label_grid(m, 8)
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False  # label 0 is the unselected patches
        m[small[labels]] = False
    return torch.from_numpy(flat).reshape(mask.shape).to(mask.device)


def merged_mask(attention: Tensor, mass: float, grid: tuple[int, int] | None = None, blur_sigma: float = 0.0,
                min_component: int = 1) -> Tensor:
    """[..., H, N] attention → [..., N] one mask of the head-averaged attention (the ``merged`` variant),
    optionally blurred first and stripped of small components after (both need the patch ``grid``)."""
    values = attention.double().mean(dim=-2)
    if blur_sigma > 0 or min_component > 1:
        if grid is None:
            raise ValueError("blur and min_component need the patch grid")
        values = blur_map(values, grid, blur_sigma)
    mask = mass_mask(values, mass)
    return drop_small_components(mask, grid, min_component) if min_component > 1 else mask


def attention_map(attention: Tensor) -> Tensor:
    """[..., H, N] attention → [..., N] max over heads scaled to [0, 1] per image, for display."""
    top = attention.float().amax(dim=-2)
    lo, hi = top.amin(dim=-1, keepdim=True), top.amax(dim=-1, keepdim=True)
    return (top - lo) / (hi - lo).clamp_min(torch.finfo(top.dtype).tiny)
