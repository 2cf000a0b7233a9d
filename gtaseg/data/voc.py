"""PASCAL VOC segmentation layout: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNG of
class ids, 255 void) and ``ImageSets/Segmentation/<split>.txt`` (one id a line)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from gtaseg.errors import DataError

_LABEL_MODES = ("P", "L")  # palette (VOC's own) or plain 8-bit class ids
NUM_CLASSES = 21  # background and VOC's 20 object classes: label values 0..20, and 255 for void
VOID = 255


@dataclass(frozen=True)
class VocSample:
    """One image with its class-label PNG."""

    id: str
    image: Path
    label_png: Path

    def labels(self) -> np.ndarray:
        """The label map as uint8 [H, W] class ids (0 background, 255 void)."""
        return read_label_png(self.label_png)


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    try:
        with Image.open(path) as img:
            if img.mode not in _LABEL_MODES:
                raise DataError(f"{path}: label PNG has mode {img.mode}; expected a palette or 8-bit "
                                f"grayscale PNG of class ids")
            labels = np.array(img, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: label PNG not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable label PNG ({type(e).__name__})") from None
    outside = np.unique(labels[(labels >= NUM_CLASSES) & (labels != VOID)])
    if outside.size:
        shown = ", ".join(str(v) for v in outside[:5]) + (", ..." if outside.size > 5 else "")
        raise DataError(f"{path}: label values {shown} are outside the dataset's classes "
                        f"(0..{NUM_CLASSES - 1}, {VOID} void)")
    return labels


def _size(path: Path, what: str) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable {what} ({type(e).__name__})") from None


def voc_samples(root: str | os.PathLike, split: str = "val", limit: int | None = None) -> list[VocSample]:
    """The first ``limit`` (default all) samples of ``root``'s ``split``, checked before any model runs.

    ``root`` is ``VOCdevkit/VOC2012`` or any folder with the same three subfolders. Raises
    :class:`DataError` naming the file for a missing or empty split file, a listed image or label PNG
    that is missing, or a label PNG whose size differs from its image's.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (expected VOCdevkit/VOC2012 or the same layout)")
    split_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not split_file.is_file():
        raise DataError(f"{split_file}: split file not found")
    ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{split_file}: empty split file")
    samples = [VocSample(i, root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png")
               for i in ids[:limit]]
    for s in samples:
        # Headers only: cheap enough to check every image up front, so a bad file fails before the model
        # is loaded rather than as a traceback from a DataLoader worker halfway through.
        image_size, label_size = _size(s.image, "image"), _size(s.label_png, "label PNG")
        if image_size != label_size:
            raise DataError(f"{s.label_png}: label size {label_size[0]}x{label_size[1]} differs from its image "
                            f"{s.image.name} ({image_size[0]}x{image_size[1]})")
    return samples
