"""CorLoc: one box per image from the [cls] attention, correct when it overlaps a ground-truth box.

Boxes are (x0, y0, x1, y1) half-open pixel ranges in the protocol's frame (the image resized to S×S and
cropped to C×C), so a box of patches i..j spans pixels i·p to (j+1)·p. eval/PROTOCOL.md section 10 has
the rules and where LOST's differ.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from gtaseg.data.images import load_rgb
from gtaseg.evaluation.inputs import Geometry, image_tensor, label_tensor, padded_tensor
from gtaseg.evaluation.jaccard import BACKGROUND, VOID
from gtaseg.evaluation.masks import label_grid

Box = tuple[float, float, float, float]
IOU_THRESHOLD = 0.5


def component_box(mask: np.ndarray, patch_size: int, connectivity: int = 8, search: str = "largest") -> Box | None:
    """The pixel box of one connected component of a bool [gh, gw] patch mask; None when there is none.

    ``largest``: the component with the most patches (the first in raster order on a tie).
    ``lost``: LOST's ``dino_seg`` search as written. It sizes the labels 0..max-1 (0 is the unselected
    patches; the highest label is never sized); with two or more sizes it takes the largest of labels
    1..max-1, otherwise label 0, so a mask with a single component is boxed by its background.
    """
    labels, count = label_grid(mask, connectivity)
    if search == "largest":
        if count == 0:
            return None
        chosen = int(np.bincount(labels.ravel())[1:].argmax()) + 1
    elif search == "lost":
        sizes = [int((labels == c).sum()) for c in range(int(labels.max()))]
        chosen = int(np.argmax(sizes[1:])) + 1 if len(sizes) > 1 else 0
    else:
        raise ValueError(f"unknown component search {search!r}")
    rows, cols = np.nonzero(labels == chosen)
    if rows.size == 0:  # LOST raises here (min of an empty array): every patch was selected
        return None
    p = patch_size
    return (float(cols.min() * p), float(rows.min() * p), float((cols.max() + 1) * p), float((rows.max() + 1) * p))


def box_iou(box: Box, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box with each of K boxes [K, 4] (half-open ranges: area is width × height)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = box
    iw = np.clip(np.minimum(x1, boxes[:, 2]) - np.maximum(x0, boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(y1, boxes[:, 3]) - np.maximum(y0, boxes[:, 1]), 0, None)
    inter = iw * ih
    union = (x1 - x0) * (y1 - y0) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return inter / np.maximum(union, 1e-12)


def is_correct(iou: float, rule: str = ">") -> bool:
    """The default follows the usual CorLoc wording (IoU above 0.5); LOST's code tests ``ious >= 0.5``."""
    return iou >= IOU_THRESHOLD if rule == ">=" else iou > IOU_THRESHOLD


def mask_boxes(labels: np.ndarray, masks: str = "class") -> np.ndarray:
    """Ground-truth boxes [K, 4] from a label map where there are no XML boxes.

    Class maps: one box per 8-connected component of each class's pixels (void excluded). Instance maps
    (``masks="object"``): one box per instance id, however many pieces occlusion cut it into.
    """
    boxes = []
    for c in np.unique(labels):
        if c in (BACKGROUND, VOID):
            continue
        region = labels == c
        pieces = [region] if masks == "object" else [lab == k for lab, n in [label_grid(region, 8)]
                                                      for k in range(1, n + 1)]
        for piece in pieces:
            rows, cols = np.nonzero(piece)
            boxes.append((cols.min(), rows.min(), cols.max() + 1, rows.max() + 1))
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def to_frame(boxes: np.ndarray, size: tuple[int, int], geometry: Geometry) -> np.ndarray:
    """Boxes in the original H×W image → the protocol's frame: scaled like the S×S resize, clipped to the
    C×C crop; boxes the crop removes entirely are dropped."""
    height, width = size
    scale = np.array([geometry.size / width, geometry.size / height] * 2)
    out = np.clip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale, 0, geometry.crop)
    return out[(out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])]


class CorlocDataset(Dataset):
    """Samples with XML boxes (``boxes()``, :class:`gtaseg.data.voc.VocBoxSample`) or a label map
    (``labels()``) to take them from. Yields ``(image [3, c, c], gt boxes [K, 4] in the frame, index)``: decoding, resizing and the
    ground-truth boxes are done in the loader's workers, off the model's path."""

    def __init__(self, samples, geometry: Geometry, mean, std, resize: str = "bicubic", masks: str = "class") -> None:
        self.samples, self.geometry, self.mean, self.std = list(samples), geometry, tuple(mean), tuple(std)
        self.resize, self.masks = resize, masks

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        sample = self.samples[i]
        image = load_rgb(sample.image)
        native = self.resize == "none"  # LOST: boxes stay in the image's own pixels
        if hasattr(sample, "boxes"):
            boxes = sample.boxes() if native else to_frame(sample.boxes(), (image.height, image.width), self.geometry)
        else:
            labels = sample.labels() if native else label_tensor(sample.labels(), self.geometry).numpy()
            boxes = mask_boxes(labels, self.masks)
        x = (padded_tensor(image, self.geometry.patch_size, self.mean, self.std) if native
             else image_tensor(image, self.geometry, self.mean, self.std, self.resize))
        return x, torch.from_numpy(boxes), i


def collate(batch: list[tuple[Tensor, Tensor, int]]) -> tuple[list[tuple[Tensor, list[int]]], list[Tensor], list[int]]:
    """Images grouped by size, each group stacked (at native size a batch holds several sizes; padding them
    to one would add tokens the model attends to): ``([(images [b, 3, h, w], positions)], boxes, indices)``."""
    images, boxes, indices = zip(*batch)
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, x in enumerate(images):
        groups.setdefault(tuple(x.shape), []).append(k)
    return [(torch.stack([images[k] for k in ks]), ks) for ks in groups.values()], list(boxes), list(indices)


@dataclass(frozen=True)
class CorlocScore:
    """One image: the predicted box (None: no component), its best IoU with a ground-truth box, the verdict."""

    id: str | int
    box: Box | None
    gt_boxes: int
    iou: float
    correct: bool

    def to_json(self) -> dict:
        return {"id": self.id, "box": None if self.box is None else [round(v, 2) for v in self.box],
                "gt_boxes": self.gt_boxes, "iou": round(self.iou, 4), "correct": self.correct}


def score_box(image_id: str | int, box: Box | None, gt: np.ndarray, rule: str = ">") -> CorlocScore:
    best = float(box_iou(box, gt).max()) if box is not None and len(gt) else 0.0
    return CorlocScore(image_id, box, int(len(gt)), best, box is not None and len(gt) > 0 and is_correct(best, rule))


def corloc_percent(scores: list[CorlocScore]) -> float | None:
    """Percentage of images whose box is correct; images without a ground-truth box are left out."""
    kept = [s for s in scores if s.gt_boxes > 0]
    return 100.0 * sum(s.correct for s in kept) / len(kept) if kept else None
