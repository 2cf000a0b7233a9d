"""Jaccard from per-patch pixel counts: the runner's fast path (the pixel-level functions of
:mod:`gtaseg.evaluation.jaccard` are the reference it is tested against).

A mask is constant on each p×p patch, so its intersection with a region is the sum, over the patches it
keeps, of the region's pixels in that patch. Every mask of an image (every head of every block) is then
scored with one matrix product on the device, without upsampling masks to pixels. Counts are float64:
exact for any image size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gtaseg.evaluation.jaccard import BACKGROUND, VOID, ClassScore, ImageScore


@dataclass
class PatchTargets:
    """One image's ground truth as pixel counts per patch ([N] row-major, like the attention)."""

    classes: list[int]  # object classes (or instance ids) present, ascending
    target: Tensor  # [C, N] pixels of each class
    valid: Tensor  # [N] pixels that count for the per-class scores
    foreground: Tensor  # [N] foreground pixels for the merged score
    foreground_valid: Tensor  # [N]

    @property
    def has_foreground(self) -> bool:
        return bool(self.foreground.sum() > 0)


def _per_patch(mask: Tensor, patch_size: int) -> Tensor:
    """bool [c, c] → float64 [N]: how many pixels of each patch are set."""
    gh, gw = mask.shape[0] // patch_size, mask.shape[1] // patch_size
    return mask.reshape(gh, patch_size, gw, patch_size).sum(dim=(1, 3), dtype=torch.float64).flatten()


def patch_targets(labels: Tensor, patch_size: int, void: str = "ignore") -> PatchTargets:
    """Counts for a uint8 [c, c] label map (0 background, 255 void) under the protocol's void rule."""
    classes = [c for c in torch.unique(labels).tolist() if c not in (BACKGROUND, VOID)]
    is_void = labels == VOID
    everything = torch.ones_like(is_void)
    valid = ~is_void if void == "ignore" else everything
    target = (torch.stack([_per_patch(labels == c, patch_size) for c in classes]) if classes
              else labels.new_zeros((0, _per_patch(is_void, patch_size).numel()), dtype=torch.float64))
    objects = labels != BACKGROUND
    foreground = objects if void == "foreground" else objects & ~is_void
    return PatchTargets(classes, target, _per_patch(valid, patch_size), _per_patch(foreground, patch_size),
                        _per_patch(valid if void == "ignore" else everything, patch_size))


def counts(masks: Tensor, target: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Intersection and union [K, C] of K patch masks [K, N] with C regions [C, N] over ``valid`` [N]."""
    m = masks.to(torch.float64)
    inter = m @ target.T
    union = (m @ valid)[:, None] + target.sum(dim=-1)[None, :] - inter
    return inter, union


def ratio(inter: Tensor, union: Tensor) -> Tensor:
    return inter / union.clamp_min(1)  # an empty region with an empty mask is 0, not NaN


def score_patches(image_id: str | int, targets: PatchTargets, head_masks: Tensor | None = None,
                  merged: Tensor | None = None) -> ImageScore:
    """The same :class:`ImageScore` as :func:`gtaseg.evaluation.jaccard.score_image`, from patch masks:
    ``head_masks`` bool [H, N] (best head per class), ``merged`` bool [N]."""
    classes: dict[int, ClassScore] = {}
    if head_masks is not None and targets.classes:
        inter, union = counts(head_masks, targets.target, targets.valid)
        iou = ratio(inter, union)
        heads = iou.argmax(dim=0)  # first best head on ties, like the reference
        picked = torch.stack([iou.gather(0, heads[None])[0], inter.gather(0, heads[None])[0],
                              union.gather(0, heads[None])[0], heads.double()]).tolist()  # one host sync
        for c, v, i, u, h in zip(targets.classes, *picked):
            classes[c] = ClassScore(v, int(h), int(i), int(u))
    best = sum(s.iou for s in classes.values()) / len(classes) if classes else None
    merged_iou, merged_counts = None, None
    if merged is not None and targets.has_foreground:
        inter, union = counts(merged[None], targets.foreground[None], targets.foreground_valid)
        i, u = inter.item(), union.item()
        merged_iou, merged_counts = i / max(u, 1), (int(i), int(u))
    return ImageScore(image_id, classes, best, merged_iou, merged_counts)


def every_mask_iou(masks: Tensor, targets: PatchTargets) -> Tensor:
    """[..., N] masks → [...] the mean over the image's classes of each mask's IoU (NaN without classes)."""
    lead = masks.shape[:-1]
    if not targets.classes:
        return torch.full(lead, float("nan"), dtype=torch.float64, device=masks.device)
    inter, union = counts(masks.reshape(-1, masks.shape[-1]), targets.target, targets.valid)
    return ratio(inter, union).mean(dim=-1).reshape(lead)


def best_of_heads(masks: Tensor, targets: PatchTargets) -> Tensor:
    """[L, H, N] masks → [L]: per block, the mean over classes of the best head's IoU (NaN without classes)."""
    if not targets.classes:
        return torch.full(masks.shape[:1], float("nan"), dtype=torch.float64, device=masks.device)
    L, H, N = masks.shape
    inter, union = counts(masks.reshape(L * H, N), targets.target, targets.valid)
    return ratio(inter, union).reshape(L, H, -1).amax(dim=1).mean(dim=-1)


def merged_ious(merged: Tensor, targets: PatchTargets) -> Tensor:
    """[L, N] merged masks → [L] foreground IoU (NaN without foreground)."""
    if not targets.has_foreground:
        return torch.full(merged.shape[:1], float("nan"), dtype=torch.float64, device=merged.device)
    inter, union = counts(merged, targets.foreground[None], targets.foreground_valid)
    return ratio(inter, union)[:, 0]
