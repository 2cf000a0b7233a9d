"""ImageFolder-style datasets: ROOT/<split>/<class>/<image>, optional masks in ROOT/masks/<split>/<class>/."""
from __future__ import annotations

import os
from pathlib import Path

from gtaseg.data.split import Split
from gtaseg.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp"}


def folder_split(root: str | os.PathLike, split: str) -> Split:
    """Read ``root/split`` as ImageFolder (classes = sorted subfolders). A mask with the same stem under
    ``root/masks/split/<class>/`` is attached to its image when that folder exists."""
    base = Path(root) / split
    if not base.is_dir():
        raise DataError(f"{base}: no such folder (expected an ImageFolder root with train/ and test/)")
    classes = sorted(d.name for d in base.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{base}: no class folders")
    samples = []
    for label, name in enumerate(classes):
        files = sorted(f for f in (base / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        samples.extend((str(f), label) for f in files)
    if not samples:
        raise DataError(f"{base}: no images in its class folders")
    mask_dir = Path(root) / "masks" / split
    masks = None
    if mask_dir.is_dir():
        masks = []
        for path, label in samples:
            m = mask_dir / classes[label] / (Path(path).stem + ".png")
            masks.append(str(m) if m.is_file() else None)
    return Split(samples, classes, masks)
