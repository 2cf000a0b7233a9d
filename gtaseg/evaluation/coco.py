"""COCO side of the evaluation: instance annotations as a label map, and masks as COCO RLE.

The ground-truth label map of an image is the union of its instance masks per category (crowd regions
included), with the category id as the class. A pixel claimed by two categories is ambiguous and becomes
void (255), like VOC's boundary band.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from torch import Tensor

from gtaseg.errors import DataError
from gtaseg.evaluation.inputs import Geometry, to_original
from gtaseg.evaluation.jaccard import VOID, ImageScore

MERGED_CATEGORY = 0  # the merged mask is scored against all objects at once, not one COCO category


@dataclass(frozen=True)
class CocoSample:
    """One image of a COCO annotation file with its instance annotations (only what labels() needs)."""

    id: int
    image: Path
    height: int
    width: int
    segments: tuple[tuple[int, object], ...] = ()  # (category_id, segmentation)

    def labels(self) -> np.ndarray:
        """uint8 [H, W] class map: 0 background, category id, 255 where categories overlap."""
        labels = np.zeros((self.height, self.width), dtype=np.uint8)
        claimed = np.zeros((self.height, self.width), dtype=np.uint8)
        for category in sorted({c for c, _ in self.segments}):
            union = np.zeros((self.height, self.width), dtype=bool)
            for c, segmentation in self.segments:
                if c == category:
                    union |= decode_mask(_to_rle(segmentation, self.height, self.width))
            labels[union] = category
            claimed += union
        labels[claimed > 1] = VOID
        return labels


def _to_rle(segmentation: object, height: int, width: int) -> dict:
    """Any COCO segmentation (polygons, uncompressed or compressed RLE) as one compressed RLE."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def encode_mask(mask: np.ndarray) -> dict:
    """bool [H, W] → COCO compressed RLE ``{"size": [H, W], "counts": str}`` (JSON-serialisable)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_mask(rle: dict) -> np.ndarray:
    """COCO RLE (counts as str or bytes) → bool [H, W]."""
    counts = rle["counts"]
    return mask_utils.decode({"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}).astype(bool)


def prediction_records(score: ImageScore, size: tuple[int, int], geometry: Geometry,
                       head_masks: Tensor | None = None, merged: Tensor | None = None) -> list[dict]:
    """COCO-results-style records of one image's predicted masks at its original size.

    ``best``: for each scored class, the mask of its best head [H, c, c] (``category_id`` the class,
    ``score`` its IoU, ``head``). ``merged``: the head-averaged mask [c, c] with ``category_id`` 0 and its
    foreground IoU as score (null for an image without objects).
    """
    records = []
    for category, s in score.classes.items():
        records.append({"image_id": score.id, "category_id": category, "variant": "best", "head": s.head,
                        "score": s.iou, "segmentation": encode_mask(to_original(head_masks[s.head], geometry, size))})
    if merged is not None:
        records.append({"image_id": score.id, "category_id": MERGED_CATEGORY, "variant": "merged",
                        "score": score.merged, "segmentation": encode_mask(to_original(merged, geometry, size))})
    return records


def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: COCO annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: not a COCO annotation file (no 'images' list)")
    return data


def coco_samples(annotations: str | os.PathLike, images: str | os.PathLike, limit: int | None = None) -> list[CocoSample]:
    """The first ``limit`` (default all) images of a COCO instances file, in ascending image id.

    Images without annotations are kept: they are scored as images without objects. Raises
    :class:`DataError` naming the file for a missing or malformed annotation file, a category id outside
    1..254 (it must fit a uint8 label map beside void), a listed image that is missing, or an image whose
    size differs from the annotation's.
    """
    annotations, images = Path(annotations), Path(images)
    data = _read_json(annotations)
    if not images.is_dir():
        raise DataError(f"{images}: no such image folder")
    segments: dict[int, list[tuple[int, object]]] = {}
    for ann in data.get("annotations", []):
        category = int(ann["category_id"])
        if not 0 < category < VOID:
            raise DataError(f"{annotations}: category id {category} outside 1..{VOID - 1}")
        segments.setdefault(int(ann["image_id"]), []).append((category, ann["segmentation"]))
    if not data["images"]:
        raise DataError(f"{annotations}: no images listed")
    samples = []
    for img in sorted(data["images"], key=lambda d: int(d["id"]))[:limit]:
        path = images / img["file_name"]
        sample = CocoSample(int(img["id"]), path, int(img["height"]), int(img["width"]),
                            tuple(segments.get(int(img["id"]), ())))
        try:
            with Image.open(path) as f:
                size = f.size
        except FileNotFoundError:
            raise DataError(f"{path}: image listed in {annotations.name} not found") from None
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{path}: unreadable image ({type(e).__name__})") from None
        if size != (sample.width, sample.height):
            raise DataError(f"{path}: image is {size[0]}x{size[1]} but {annotations.name} says "
                            f"{sample.width}x{sample.height}")
        samples.append(sample)
    return samples
