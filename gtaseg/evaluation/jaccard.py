"""Jaccard (IoU) of attention masks against a ground-truth label map, per image and over a dataset.

Label maps follow PASCAL VOC: 0 background, 255 void, anything else an object class. Void pixels count
neither in the intersection nor in the union. Pure tensor functions, independent of any model.
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


@dataclass(frozen=True)
class ImageScore:
    """One image's scores; ``None`` where the image has no object class or the variant was not run."""

    id: str | int
    classes: dict[int, ClassScore]
    best: float | None
    merged: float | None

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


def best_head_scores(masks: Tensor, labels: Tensor) -> dict[int, ClassScore]:
    """For each object class in ``labels`` [h, w], the head mask in ``masks`` [H, h, w] with the highest IoU."""
    valid = labels != VOID
    out = {}
    for c in object_classes(labels):
        scores = iou(masks, labels == c, valid)
        head = int(scores.argmax())
        out[c] = ClassScore(float(scores[head]), head)
    return out


def merged_score(mask: Tensor, labels: Tensor) -> float | None:
    """IoU of one mask [h, w] with the foreground (every object class) of ``labels``; None without objects."""
    valid = labels != VOID
    foreground = (labels != BACKGROUND) & valid
    if not bool(foreground.any()):
        return None
    return float(iou(mask.unsqueeze(0), foreground, valid)[0])


def score_image(image_id: str | int, labels: Tensor, head_masks: Tensor | None = None,
                merged: Tensor | None = None) -> ImageScore:
    """Score the per-head masks [H, h, w] (``best`` variant) and/or the merged mask [h, w] of one image.

    The ``best`` score is the mean over the image's object classes of each class's best-head IoU.
    """
    classes = best_head_scores(head_masks, labels) if head_masks is not None else {}
    best = sum(s.iou for s in classes.values()) / len(classes) if classes else None
    merged_iou = merged_score(merged, labels) if merged is not None else None
    return ImageScore(image_id, classes, best, merged_iou)


def jaccard(values: Iterable[float | None]) -> float | None:
    """Dataset Jaccard in percent: the mean of the per-image scores, skipping ``None`` (no objects)."""
    kept = [v for v in values if v is not None]
    return 100.0 * sum(kept) / len(kept) if kept else None
