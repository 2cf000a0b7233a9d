"""Jaccard (IoU) of attention masks against a ground-truth label map, per image and over a dataset.

Label maps follow PASCAL VOC: 0 background, 255 void, anything else an object class. By default void
pixels count neither in the intersection nor in the union; the ``void`` rule of a protocol
(:mod:`gtaseg.evaluation.protocols`) can count them as background or, for the merged score, as foreground.
Pure tensor functions at pixel level, independent of any model: the reference that the runner's
patch-count fast path (:mod:`gtaseg.evaluation.patch_scores`) is tested against.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

BACKGROUND = 0
VOID = 255


@dataclass(frozen=True)
class ClassScore:
    """IoU of the best head for one ground-truth class, and which head it was."""

    iou: float
    head: int
    inter: int = 0  # pixel counts, for the pooled mean
    union: int = 0


@dataclass(frozen=True)
class ImageScore:
    """One image's scores; ``None`` where the image has no object class or the variant was not run."""

    id: str | int
    classes: dict[int, ClassScore]
    best: float | None
    merged: float | None
    merged_counts: tuple[int, int] | None = None  # (intersection, union) pixels, for the pooled mean

    @property
    def has_objects(self) -> bool:
        return bool(self.classes) or self.merged is not None

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "best": self.best,
            "merged": self.merged,
            "classes": {str(c): {"iou": s.iou, "head": s.head} for c, s in self.classes.items()},
        }


def object_classes(labels: Tensor) -> list[int]:
    """The object classes present in a label map (background and void excluded), ascending."""
    return [c for c in torch.unique(labels).tolist() if c not in (BACKGROUND, VOID)]


def iou(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """IoU of each of K predicted masks [K, ...] with one target [...] over the ``valid`` pixels: [K]."""
    pred, target, valid = pred.flatten(1), target.flatten(), valid.flatten()
    inter = (pred & (target & valid)).sum(dim=1)
    union = ((pred | target) & valid).sum(dim=1)
    # 0/0 (empty target and prediction) would be NaN; callers only score non-empty targets.
    return inter.double() / union.clamp_min(1).double()


def _valid(labels: Tensor, void: str) -> Tensor:
    return labels != VOID if void == "ignore" else torch.ones_like(labels, dtype=torch.bool)


def best_head_scores(masks: Tensor, labels: Tensor, void: str = "ignore") -> dict[int, ClassScore]:
    """For each object class in ``labels`` [h, w], the head mask in ``masks`` [H, h, w] with the highest IoU."""
    valid = _valid(labels, void)
    out = {}
    for c in object_classes(labels):
        scores = iou(masks, labels == c, valid)
        head = int(scores.argmax())
        inter = int((masks[head] & (labels == c) & valid).sum())
        out[c] = ClassScore(float(scores[head]), head, inter, int(((masks[head] | (labels == c)) & valid).sum()))
    return out


def foreground(labels: Tensor, void: str = "ignore") -> Tensor:
    """The merged score's target: every object class, and void too under the ``foreground`` rule."""
    objects = labels != BACKGROUND
    return objects if void == "foreground" else objects & (labels != VOID)


def merged_score(mask: Tensor, labels: Tensor, void: str = "ignore") -> float | None:
    """IoU of one mask [h, w] with the foreground (every object class) of ``labels``; None without objects."""
    target = foreground(labels, void)
    if not bool(target.any()):
        return None
    return float(iou(mask.unsqueeze(0), target, _valid(labels, void))[0])


def score_image(image_id: str | int, labels: Tensor, head_masks: Tensor | None = None,
                merged: Tensor | None = None, void: str = "ignore") -> ImageScore:
    """Score the per-head masks [H, h, w] (``best`` variant) and/or the merged mask [h, w] of one image.

    The ``best`` score is the mean over the image's object classes of each class's best-head IoU.
    """
    classes = best_head_scores(head_masks, labels, void) if head_masks is not None else {}
    best = sum(s.iou for s in classes.values()) / len(classes) if classes else None
    merged_iou = merged_score(merged, labels, void) if merged is not None else None
    return ImageScore(image_id, classes, best, merged_iou)


def jaccard(values: Iterable[float | None]) -> float | None:
    """Dataset Jaccard in percent: the mean of the per-image scores, skipping ``None`` (no objects)."""
    kept = [v for v in values if v is not None]
    return 100.0 * sum(kept) / len(kept) if kept else None
