"""PASCAL VOC layout: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNG of class ids,
255 void) or ``SegmentationObject/<id>.png`` (instance ids), ``ImageSets/Segmentation/<split>.txt`` (one id
a line); and for detection ``Annotations/<id>.xml`` (boxes) with ``ImageSets/Main/<split>.txt``."""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from gtaseg.errors import DataError

_LABEL_MODES = ("P", "L")  # palette (VOC's own) or plain 8-bit class ids
NUM_CLASSES = 21  # background and VOC's 20 object classes: label values 0..20, and 255 for void
VOID = 255
MASK_FOLDERS = {"class": "SegmentationClass", "object": "SegmentationObject"}


@dataclass(frozen=True)
class VocSample:
    """One image with its class-label PNG (or, with ``masks="object"``, its instance PNG)."""

    id: str
    image: Path
    label_png: Path
    masks: str = "class"

    def labels(self) -> np.ndarray:
        """The label map as uint8 [H, W]: class ids (or instance ids), 0 background, 255 void."""
        return read_label_png(self.label_png, objects=self.masks == "object")


def read_label_png(path: str | os.PathLike, objects: bool = False) -> np.ndarray:
    """uint8 [H, W] ids from a palette or grayscale PNG; class maps must hold VOC's classes, instance maps
    (``objects``) any id 1..254."""
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
    if outside.size and not objects:
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


def _split_ids(root: Path, task: str, split: str) -> list[str]:
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (expected VOCdevkit/VOC2012 or the same layout)")
    split_file = root / "ImageSets" / task / f"{split}.txt"
    if not split_file.is_file():
        raise DataError(f"{split_file}: split file not found")
    # Main/ lists may carry a second column (class lists: "<id> 1"); the id is the first word.
    ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{split_file}: empty split file")
    return ids


def voc_samples(root: str | os.PathLike, split: str = "val", limit: int | None = None,
                masks: str = "class") -> list[VocSample]:
    """The first ``limit`` (default all) samples of ``root``'s ``split``, checked before any model runs.

    ``root`` is ``VOCdevkit/VOC2012`` or any folder with the same three subfolders; ``masks`` picks
    ``SegmentationClass/`` (class ids) or ``SegmentationObject/`` (instance ids). Raises
    :class:`DataError` naming the file for a missing or empty split file, a listed image or label PNG
    that is missing, or a label PNG whose size differs from its image's.
    """
    root = Path(root)
    if masks not in MASK_FOLDERS:
        raise ValueError(f"masks must be one of {tuple(MASK_FOLDERS)}, got {masks!r}")
    ids = _split_ids(root, "Segmentation", split)
    folder = root / MASK_FOLDERS[masks]
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (--masks {masks})")
    samples = [VocSample(i, root / "JPEGImages" / f"{i}.jpg", folder / f"{i}.png", masks) for i in ids[:limit]]
    for s in samples:
        # Headers only: cheap enough to check every image up front, so a bad file fails before the model
        # is loaded rather than as a traceback from a DataLoader worker halfway through.
        image_size, label_size = _size(s.image, "image"), _size(s.label_png, "label PNG")
        if image_size != label_size:
            raise DataError(f"{s.label_png}: label size {label_size[0]}x{label_size[1]} differs from its image "
                            f"{s.image.name} ({image_size[0]}x{image_size[1]})")
    return samples


@dataclass(frozen=True)
class VocBoxSample:
    """One image with its ``Annotations/<id>.xml`` boxes (VOC detection)."""

    id: str
    image: Path
    annotation: Path

    def boxes(self) -> np.ndarray:
        return read_voc_boxes(self.annotation)


def read_voc_boxes(path: str | os.PathLike) -> np.ndarray:
    """float [K, 4] boxes (x0, y0, x1, y1) of every object in a VOC XML, as half-open pixel ranges.

    VOC's corners are 1-based and inclusive; like LOST's ``extract_gt_VOC``, x0 and y0 drop by one and
    x1, y1 stay, so (1, 1, W, H) is the whole W×H image. Difficult and truncated objects are kept (LOST's
    default, without ``--no_hard``).
    """
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise DataError(f"{path}: annotation not found") from None
    except ET.ParseError as e:
        raise DataError(f"{path}: not a VOC annotation ({e})") from None
    boxes = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        try:
            x0, y0, x1, y1 = (float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            raise DataError(f"{path}: an object without a numeric bndbox") from None
        boxes.append((x0 - 1, y0 - 1, x1, y1))
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def voc_box_samples(root: str | os.PathLike, split: str = "trainval", limit: int | None = None) -> list[VocBoxSample]:
    """The first ``limit`` images of ``ImageSets/Main/<split>.txt`` with their ``Annotations/<id>.xml``
    (VOC07 or VOC12 trainval, as LOST uses them); missing files are named before any model runs."""
    root = Path(root)
    samples = [VocBoxSample(i, root / "JPEGImages" / f"{i}.jpg", root / "Annotations" / f"{i}.xml")
               for i in _split_ids(root, "Main", split)[:limit]]
    for s in samples:
        _size(s.image, "image")
        if not s.annotation.is_file():
            raise DataError(f"{s.annotation}: annotation not found")
    return samples
