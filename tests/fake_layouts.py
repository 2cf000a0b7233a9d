"""Tiny fake copies of the official fine-grained dataset layouts (real JPEG/PNG/.mat files, three classes, three
images per class), for any test that needs a dataset on disk.

Each ``make_*`` builds the official top-level folder under ``root`` and returns a :class:`FakeDataset` saying what
a loader should find there. Annotation files list samples interleaved across classes, so a loader that assumes
sorted labels is caught.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

TRAIN_PER_CLASS, TEST_PER_CLASS = 2, 1


@dataclass
class FakeDataset:
    root: Path  # what to pass as --data-root
    base: Path  # the official top-level folder inside it
    classes: list[str]  # class names as the loader reports them, index = 0-based label
    samples: dict[str, list[tuple[Path, int]]]  # "train"/"test" -> (image path, 0-based label), in file order
    masks: dict[str, list[Path]] | None = None  # "train"/"test" -> mask path per sample


def _plan(num_classes: int) -> list[tuple[str, int, int]]:
    """(split, 0-based label, index within class and split), interleaved across classes."""
    return [
        (split, label, k)
        for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS))
        for k in range(per_class)
        for label in range(num_classes)
    ]


def _jpeg(path: Path, label: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (40 + 80 * label, 90, 200 - 60 * label)).save(path, "JPEG")
    return path


def write_png(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), mode="L").save(path)
    return path


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def mat_cells(strings: list[str], shape: tuple[int, int] | None = None) -> np.ndarray:
    """A MATLAB cell array of strings (savemat writes an object array as a cell array)."""
    cells = np.empty(len(strings), dtype=object)
    cells[:] = strings
    return cells.reshape(shape or (len(strings), 1))


def _empty(root: Path, base: Path, classes: list[str]) -> FakeDataset:
    return FakeDataset(root, base, classes, {"train": [], "test": []})


# CUB soft masks: one third of the columns each at 0, 128 and 255 (background, annotators disagree, bird).
CUB_SOFT_MASK = np.repeat(np.array([[0, 128, 255]], dtype=np.uint8), 3, axis=1).repeat(6, axis=0)
CUB_MASK_EXPECTED = np.repeat(np.array([[0, 255, 1]], dtype=np.uint8), 3, axis=1).repeat(6, axis=0)


def make_cub(root: Path, segmentations: str | None = "inside") -> FakeDataset:
    """``segmentations``: "inside" CUB_200_2011/, "beside" it (as segmentations.tgz unpacks), or None."""
    base = root / "CUB_200_2011"
    names = ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]
    folders = [f"{i + 1:03d}.{n}" for i, n in enumerate(names)]
    seg_dir = {"inside": base / "segmentations", "beside": root / "segmentations", None: None}[segmentations]
    fake = _empty(root, base, names)
    fake.masks = None if seg_dir is None else {"train": [], "test": []}
    images, labels, split_flags = [], [], []
    for image_id, (split, label, k) in enumerate(_plan(len(names)), 1):
        rel = f"{folders[label]}/{names[label]}_{split}_{k:04d}.jpg"
        fake.samples[split].append((_jpeg(base / "images" / rel, label), label))
        if seg_dir is not None:
            fake.masks[split].append(write_png(seg_dir / Path(rel).with_suffix(".png"), CUB_SOFT_MASK))
        images.append(f"{image_id} {rel}")
        labels.append(f"{image_id} {label + 1}")
        split_flags.append(f"{image_id} {int(split == 'train')}")
    _write(base / "classes.txt", [f"{i + 1} {f}" for i, f in enumerate(folders)])
    _write(base / "images.txt", images)
    _write(base / "image_class_labels.txt", labels)
    _write(base / "train_test_split.txt", split_flags)
    return fake


def make_cars(root: Path) -> FakeDataset:
    base = root / "stanford_cars"
    names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi TTS Coupe 2012"]
    fake = _empty(root, base, names)
    for split in fake.samples:
        plan = [(label, k) for s, label, k in _plan(len(names)) if s == split]
        annotations = np.zeros((1, len(plan)), dtype=[(f, object) for f in
                                                      ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")])
        for i, (label, _) in enumerate(plan):
            fname = f"{i + 1:05d}.jpg"
            fake.samples[split].append((_jpeg(base / f"cars_{split}" / fname, label), label))
            annotations[0, i] = (1, 1, 7, 7, np.uint8(label + 1), fname)
        anno_path = base / ("devkit/cars_train_annos.mat" if split == "train" else "cars_test_annos_withlabels.mat")
        anno_path.parent.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(anno_path, {"annotations": annotations})
    scipy.io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": mat_cells(names, (1, len(names)))})
    return fake


def make_aircraft(root: Path) -> FakeDataset:
    base = root / "fgvc-aircraft-2013b"
    data = base / "data"
    names = ["707-320", "Cessna 172", "F/A-18"]  # the official names have spaces and slashes
    fake = _empty(root, base, names)
    lines: dict[str, list[str]] = {"train": [], "test": []}
    for image_id, (split, label, _) in enumerate(_plan(len(names)), 1034309):
        stem = f"{image_id:07d}"
        fake.samples[split].append((_jpeg(data / "images" / f"{stem}.jpg", label), label))
        lines[split].append(f"{stem} {names[label]}")
    _write(data / "variants.txt", names)
    _write(data / "images_variant_trainval.txt", lines["train"])
    _write(data / "images_variant_test.txt", lines["test"])
    return fake


def make_dogs(root: Path, lists_dir: bool = False) -> FakeDataset:
    """``lists_dir``: put the .mat lists in lists/ rather than at the top level as lists.tar unpacks them."""
    base = root / "stanford_dogs"
    names = ["Chihuahua", "Japanese_spaniel", "Maltese_dog"]
    folders = [f"n0208{5620 + 162 * i}-{n}" for i, n in enumerate(names)]
    fake = _empty(root, base, names)
    files: dict[str, list[str]] = {"train": [], "test": []}
    for n, (split, label, _) in enumerate(_plan(len(names))):
        rel = f"{folders[label]}/{folders[label].split('-')[0]}_{1000 + n}.jpg"
        fake.samples[split].append((_jpeg(base / "Images" / rel, label), label))
        files[split].append(rel)
    for split, rels in files.items():
        path = base / ("lists" if lists_dir else "") / f"{split}_list.mat"
        path.parent.mkdir(parents=True, exist_ok=True)
        labels = np.array([[label + 1.0] for _, label in fake.samples[split]])
        scipy.io.savemat(path, {"file_list": mat_cells(rels), "annotation_list": mat_cells([r[:-4] for r in rels]),
                                "labels": labels})
    return fake


# Pet trimap rows: pet (1), border (3), background (2).
PET_TRIMAP = np.array([[1] * 6, [3] * 6, [2] * 6], dtype=np.uint8)
PET_MASK_EXPECTED = np.array([[1] * 6, [255] * 6, [0] * 6], dtype=np.uint8)


def make_pet(root: Path, trimaps: bool = True) -> FakeDataset:
    base = root / "oxford-iiit-pet"
    names = ["Abyssinian", "american_bulldog", "Bengal"]  # cats are capitalised, dogs not, as in the official names
    species = [1, 2, 1]
    fake = _empty(root, base, names)
    fake.masks = {"train": [], "test": []} if trimaps else None
    lines: dict[str, list[str]] = {"train": [], "test": []}
    for n, (split, label, _) in enumerate(_plan(len(names)), 1):
        image = f"{names[label]}_{n}"
        fake.samples[split].append((_jpeg(base / "images" / f"{image}.jpg", label), label))
        if trimaps:
            fake.masks[split].append(write_png(base / "annotations" / "trimaps" / f"{image}.png", PET_TRIMAP))
        breed_id = species[: label + 1].count(species[label])
        lines[split].append(f"{image} {label + 1} {species[label]} {breed_id}")
    _write(base / "annotations" / "trainval.txt", lines["train"])
    _write(base / "annotations" / "test.txt", lines["test"])
    return fake


BUILDERS: dict[str, Callable[[Path], FakeDataset]] = {
    "cub": make_cub,
    "cars": make_cars,
    "aircraft": make_aircraft,
    "dogs": make_dogs,
    "pet": make_pet,
}


def make_voc_detection(root: Path, with_xml: bool) -> Path:
    """Three 64×48 noise photos whose one object (VOC class 13) fills the frame, in the VOC segmentation layout
    (val split), and with ``with_xml`` also its detection layout (Annotations/*.xml, ImageSets/Main/trainval)."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    rng = np.random.default_rng(0)
    ids = ["a", "b", "c"]
    for i in ids:
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{i}.jpg")
        labels = np.zeros((48, 64), np.uint8)
        labels[:, :] = 13  # the object fills the frame: every box is its own IoU with the frame
        Image.fromarray(labels, mode="L").save(root / "SegmentationClass" / f"{i}.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids))
    if with_xml:
        (root / "Annotations").mkdir()
        (root / "ImageSets" / "Main").mkdir()
        (root / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids))
        for i in ids:
            (root / "Annotations" / f"{i}.xml").write_text(
                "<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>64</xmax><ymax>48</ymax>"
                "</bndbox></object></annotation>")
    return root
