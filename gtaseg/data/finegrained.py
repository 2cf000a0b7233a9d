"""The five fine-grained benchmarks (CUB, Stanford Cars, FGVC-Aircraft, Stanford Dogs, Oxford-IIIT Pet), read
from their official on-disk layouts as :class:`Split` s of file paths.

We parse the official annotation files ourselves rather than wrapping torchvision's ``StanfordCars``,
``FGVCAircraft`` and ``OxfordIIITPet``: those expose decoded images (their file lists are private), stop at the
first problem with a generic "Dataset not found", and do not cover CUB or Dogs. The folder names under the data
root are the ones torchvision expects, so a root prepared for torchvision works here unchanged (the tests check
both read the same samples).

Every parser reports problems into a :class:`_Context` instead of raising, so :func:`check_dataset` can list all
of them; :func:`load_split` raises the first one as a :class:`DataError`.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from gtaseg.data.split import Split
from gtaseg.errors import DataError

SPLITS = ("train", "test")

# One sample: image path, 0-based label, mask path (None when the dataset has no mask folder).
_Item = tuple[Path, int, Path | None]


class _Abort(Exception):
    """A required file is missing or unreadable: nothing more can be parsed (the problem is already recorded)."""


@dataclass
class _Parsed:
    classes: list[str]
    splits: dict[str, list[_Item]]
    masks: Path | None = None


@dataclass
class _Context:
    """The dataset folder being parsed and the problems found so far, with the reading helpers all parsers share."""

    info: DatasetInfo
    base: Path
    problems: list[str] = field(default_factory=list)

    def abort(self, problem: str) -> _Abort:
        self.problems.append(problem)
        return _Abort()

    def require(self, path: Path) -> Path:
        if not path.exists():
            raise self.abort(f"missing {path} (expected the official {self.info.folder} layout, see data/README.md)")
        return path

    def lines(self, path: Path) -> list[str]:
        try:
            return self.require(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise self.abort(f"cannot read {path}: {e}") from None

    def rows(self, path: Path, fmt: str, types: tuple[type, ...]) -> list[tuple]:
        """The lines of a whitespace-separated table; the last column takes the rest of the line (class names
        may contain spaces). Malformed lines are recorded and skipped."""
        out = []
        for lineno, line in enumerate(self.lines(path), 1):
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split(maxsplit=len(types) - 1)
            try:
                if len(fields) != len(types):
                    raise ValueError
                out.append(tuple(t(f) for t, f in zip(types, fields)))
            except ValueError:
                self.problems.append(f"{path}:{lineno}: malformed line {line.strip()!r} (expected '{fmt}')")
        return out

    def loadmat(self, path: Path, *keys: str) -> list[np.ndarray]:
        import scipy.io  # only Cars and Dogs ship .mat files

        self.require(path)
        try:
            mat = scipy.io.loadmat(path, squeeze_me=True)
        except Exception as e:  # scipy raises several unrelated types for a corrupt file
            raise self.abort(f"cannot read {path}: {e}") from None
        missing = [k for k in keys if k not in mat]
        if missing:
            raise self.abort(f"{path}: no variable {missing[0]!r} (expected the official {self.info.folder} layout)")
        # squeeze_me turns a one-element array into a scalar; the parsers always want arrays.
        return [np.atleast_1d(mat[k]) for k in keys]

    def ints(self, values: np.ndarray, path: Path, what: str) -> list[int]:
        try:
            return [int(v) for v in values]
        except (TypeError, ValueError):
            raise self.abort(f"{path}: {what} are not all integers (expected the official layout)") from None

    def label(self, class_id: int, num_classes: int, where: str) -> int | None:
        """The 0-based label for a 1-based official class id, or None (recorded) when it is out of range."""
        if 1 <= class_id <= num_classes:
            return class_id - 1
        self.problems.append(f"{where}: class id {class_id} is not in 1..{num_classes}")
        return None

    def classes_from_ids(self, pairs: Iterable[tuple[int, str]], source: Path) -> list[str]:
        """Class names ordered by their 1-based official id, checking every id from 1 to the largest has exactly
        one name."""
        names: dict[int, str] = {}
        for class_id, name in pairs:
            if names.setdefault(class_id, name) != name:
                self.problems.append(f"{source}: class id {class_id} is both {names[class_id]!r} and {name!r}")
        if min(names, default=1) < 1:
            raise self.abort(f"{source}: class id {min(names)} is below 1")
        gaps = sorted(set(range(1, max(names, default=0) + 1)) - names.keys())
        if gaps:
            raise self.abort(f"{source}: no class with id {gaps[0]} (class ids must run 1..{max(names)})")
        return [names[i] for i in range(1, len(names) + 1)]


@dataclass(frozen=True)
class DatasetInfo:
    """One benchmark: its expected sizes, where it lives under the data root, and how to read it."""

    name: str
    title: str
    num_classes: int
    num_train: int
    num_test: int
    description: str
    folder: str  # the official top-level folder under --data-root
    marker: str  # a path inside ``folder`` that tells us --data-root already is that folder
    parse: Callable[[_Context], _Parsed] = field(repr=False)
    mask_reader: Callable[[Image.Image], np.ndarray] | None = field(default=None, repr=False)

    def base(self, root: str | os.PathLike) -> Path:
        """The dataset folder: ``root/folder``, or ``root`` itself when it already is that folder."""
        root = Path(root)
        if not (root / self.folder).is_dir() and (root / self.marker).exists():
            return root
        return root / self.folder

    def load(self, root: str | os.PathLike, split: str) -> Split:
        return load_split(self.name, root, split)


def _first_existing(*candidates: Path) -> Path:
    """The first candidate that exists, else the first one (so a missing-file message names the usual place)."""
    return next((p for p in candidates if p.exists()), candidates[0])


def _folder_or_none(path: Path) -> Path | None:
    return path if path.is_dir() else None


# Aircraft and Pet: our "train" is the official trainval (train + val), the usual protocol for these benchmarks.
_TRAINVAL_FILES = (("train", "trainval"), ("test", "test"))


# --- the parsers ---------------------------------------------------------------------------------------------


def _parse_cub(ctx: _Context) -> _Parsed:
    b = ctx.base
    classes = ctx.classes_from_ids(
        ((i, name.split(".", 1)[-1]) for i, name in ctx.rows(b / "classes.txt", "<class_id> <name>", (int, str))),
        b / "classes.txt",
    )
    images = dict(ctx.rows(b / "images.txt", "<image_id> <image_name>", (int, str)))
    labels_file, split_file = b / "image_class_labels.txt", b / "train_test_split.txt"
    labels = dict(ctx.rows(labels_file, "<image_id> <class_id>", (int, int)))
    is_train = dict(ctx.rows(split_file, "<image_id> <is_training_image>", (int, int)))
    # The segmentations come as a separate archive: accept it unpacked inside CUB_200_2011/ or beside it.
    masks = _folder_or_none(_first_existing(b / "segmentations", b.parent / "segmentations"))
    splits: dict[str, list[_Item]] = {s: [] for s in SPLITS}
    for image_id, rel in images.items():
        if image_id not in labels or image_id not in is_train:
            missing_from = labels_file if image_id not in labels else split_file
            ctx.problems.append(f"{missing_from}: no line for image id {image_id} ({rel})")
            continue
        label = ctx.label(labels[image_id], len(classes), f"{labels_file} (image id {image_id})")
        if label is not None:
            mask = None if masks is None else masks / Path(rel).with_suffix(".png")
            splits["train" if is_train[image_id] else "test"].append((b / "images" / rel, label, mask))
    return _Parsed(classes, splits, masks)


def _parse_cars(ctx: _Context) -> _Parsed:
    b = ctx.base
    (classes,) = ctx.loadmat(b / "devkit" / "cars_meta.mat", "class_names")
    classes = [str(c) for c in classes]
    annos = {"train": b / "devkit" / "cars_train_annos.mat", "test": b / "cars_test_annos_withlabels.mat"}
    splits: dict[str, list[_Item]] = {}
    for split, path in annos.items():
        (records,) = ctx.loadmat(path, "annotations")
        if not {"fname", "class"} <= set(records.dtype.names or ()):
            raise ctx.abort(f"{path}: 'annotations' has no 'fname'/'class' fields (expected the official layout)")
        splits[split] = []
        class_ids = ctx.ints(records["class"], path, "annotation classes")
        for i, (fname, class_id) in enumerate(zip(records["fname"], class_ids)):
            label = ctx.label(class_id, len(classes), f"{path} (annotation {i})")
            if label is not None:
                splits[split].append((b / f"cars_{split}" / str(fname), label, None))
    return _Parsed(classes, splits)


def _parse_aircraft(ctx: _Context) -> _Parsed:
    data = ctx.base / "data"
    classes = [line.strip() for line in ctx.lines(data / "variants.txt") if line.strip()]
    index = {name: i for i, name in enumerate(classes)}
    splits: dict[str, list[_Item]] = {}
    for split, official in _TRAINVAL_FILES:
        path = data / f"images_variant_{official}.txt"
        splits[split] = []
        for image_id, variant in ctx.rows(path, "<image_id> <variant>", (str, str)):
            if variant not in index:
                ctx.problems.append(f"{path}: image {image_id} has variant {variant!r}, not in {data / 'variants.txt'}")
            else:
                splits[split].append((data / "images" / f"{image_id}.jpg", index[variant], None))
    return _Parsed(classes, splits)


def _parse_dogs(ctx: _Context) -> _Parsed:
    b = ctx.base
    lists = {}
    for split in SPLITS:
        # lists.tar unpacks its .mat files at the top level; some copies keep them in lists/.
        path = _first_existing(b / f"{split}_list.mat", b / "lists" / f"{split}_list.mat")
        files, ids = ctx.loadmat(path, "file_list", "labels")
        if len(files) != len(ids):
            raise ctx.abort(f"{path}: {len(files)} entries in 'file_list' but {len(ids)} in 'labels'")
        lists[split] = (path, [str(f) for f in files], ctx.ints(ids, path, "labels"))
    # Class names are the breed folders ("n02085620-Chihuahua" -> "Chihuahua"), numbered by the official labels.
    classes = ctx.classes_from_ids(
        ((i, f.split("/", 1)[0].split("-", 1)[-1]) for _, files, ids in lists.values() for f, i in zip(files, ids)),
        lists["train"][0],
    )
    splits = {
        split: [(b / "Images" / f, i - 1, None) for f, i in zip(files, ids)]
        for split, (_, files, ids) in lists.items()
    }
    return _Parsed(classes, splits)


def _parse_pet(ctx: _Context) -> _Parsed:
    anns = ctx.base / "annotations"
    rows = {
        split: ctx.rows(anns / f"{official}.txt", "<image> <class_id> <species> <breed_id>", (str, int, int, int))
        for split, official in _TRAINVAL_FILES
    }
    # Class names are the breed part of the image names ("american_bulldog_10" -> "american_bulldog").
    classes = ctx.classes_from_ids(
        ((class_id, image.rsplit("_", 1)[0]) for r in rows.values() for image, class_id, _, _ in r),
        anns / "trainval.txt",
    )
    masks = _folder_or_none(anns / "trimaps")
    splits = {
        split: [
            (ctx.base / "images" / f"{image}.jpg", class_id - 1, None if masks is None else masks / f"{image}.png")
            for image, class_id, _, _ in r
        ]
        for split, r in rows.items()
    }
    return _Parsed(classes, splits, masks)


# --- object masks --------------------------------------------------------------------------------------------


def _pet_trimap(img: Image.Image) -> np.ndarray:
    # Trimap values: 1 = pet, 2 = background, 3 = border (not sure, so void).
    values = np.asarray(img)
    if values.ndim != 2 or not np.isin(values, (1, 2, 3)).all():
        raise ValueError("expected a one-channel trimap with values 1, 2, 3")
    return np.array([0, 1, 0, 255], dtype=np.uint8)[values]


# CUB masks are soft (0..255, combined from several annotators). The uncertain middle band is void rather than
# forced to one side, like the Pet border: < 64 background, >= 192 bird.
_CUB_BACKGROUND_BELOW, _CUB_OBJECT_FROM = 64, 192


def _cub_soft_mask(img: Image.Image) -> np.ndarray:
    values = np.asarray(img.convert("L"))  # a few of the official PNGs are RGB
    out = np.full(values.shape, 255, dtype=np.uint8)
    out[values < _CUB_BACKGROUND_BELOW] = 0
    out[values >= _CUB_OBJECT_FROM] = 1
    return out


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("cub", "CUB-200-2011", 200, 5994, 5794, "Caltech-UCSD Birds-200-2011: 200 bird species",
                    "CUB_200_2011", "images.txt", _parse_cub, _cub_soft_mask),
        DatasetInfo("cars", "Stanford Cars", 196, 8144, 8041, "Stanford Cars: 196 car make/model/year classes",
                    "stanford_cars", "devkit/cars_meta.mat", _parse_cars),
        DatasetInfo("aircraft", "FGVC-Aircraft", 100, 6667, 3333,
                    "FGVC-Aircraft 2013b, variant level: 100 aircraft variants (train = trainval)",
                    "fgvc-aircraft-2013b", "data/variants.txt", _parse_aircraft),
        DatasetInfo("dogs", "Stanford Dogs", 120, 12000, 8580, "Stanford Dogs: 120 dog breeds from ImageNet",
                    "stanford_dogs", "Images", _parse_dogs),
        DatasetInfo("pet", "Oxford-IIIT Pet", 37, 3680, 3669,
                    "Oxford-IIIT Pet: 37 cat and dog breeds (train = trainval), with trimaps",
                    "oxford-iiit-pet", "annotations/trainval.txt", _parse_pet, _pet_trimap),
    )
}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


def _parse(info: DatasetInfo, root: str | os.PathLike) -> tuple[_Context, _Parsed | None]:
    ctx = _Context(info, info.base(root))
    try:
        if not Path(root).is_dir():
            raise ctx.abort(f"data root {root} {'is not a folder' if Path(root).exists() else 'does not exist'}")
        return ctx, info.parse(ctx)
    except _Abort:
        return ctx, None


def _missing_files(items: list[_Item]) -> list[str]:
    problems = [f"missing image {image}" for image, _, _ in items if not image.is_file()]
    return problems + [f"missing mask {mask}" for _, _, mask in items if mask is not None and not mask.is_file()]


def load_split(name: str, root: str | os.PathLike, split: str) -> Split:
    """One split (``"train"`` or ``"test"``) of a benchmark under ``root`` (the folder holding the official
    top-level folder, or that folder itself). Raises :class:`DataError` on a missing file, a malformed annotation,
    or an image (or mask) listed but missing on disk.

    ``masks`` (CUB segmentations, Pet trimaps) are paths to the official files, which are NOT in our mask
    convention: read them with :func:`read_object_mask`."""
    info = dataset_info(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for {info.title}; known: {', '.join(SPLITS)}")
    ctx, parsed = _parse(info, root)
    problems = ctx.problems + ([] if parsed is None else _missing_files(parsed.splits[split]))
    if problems:
        more = ""
        if len(problems) > 1:
            more = f" (and {len(problems) - 1} more; see `gtaseg data check --dataset {name} --data-root {root}`)"
        raise DataError(f"{info.title}: {problems[0]}{more}")
    items = parsed.splits[split]
    masks = None if parsed.masks is None else [str(m) for _, _, m in items]
    return Split([(str(image), label) for image, label, _ in items], parsed.classes, masks)


def read_object_mask(name: str, path: str | os.PathLike) -> np.ndarray:
    """A dataset's mask file as uint8 in our convention: 0 = background, 1 = object, 255 = void.

    Pet trimaps: pet -> 1, background -> 0, border -> 255. CUB soft masks: below 64 -> 0, from 192 -> 1, the
    uncertain band between -> 255.
    """
    info = dataset_info(name)
    if info.mask_reader is None:
        with_masks = ", ".join(n for n, i in DATASETS.items() if i.mask_reader)
        raise DataError(f"{info.title} has no object masks (datasets with masks: {with_masks})")
    try:
        with Image.open(path) as img:
            return info.mask_reader(img)
    except (OSError, ValueError) as e:
        raise DataError(f"{info.title}: cannot read mask {path}: {e}") from None


@dataclass(frozen=True)
class CheckRow:
    what: str  # "classes", "train" or "test"
    expected: int
    found: int | None  # None when the annotations could not be read


@dataclass(frozen=True)
class CheckReport:
    """What :func:`check_dataset` found. A count that differs from the official table is a problem too, so
    ``ok`` means the copy is complete and well-formed."""

    dataset: str
    base: Path
    rows: list[CheckRow]
    problems: list[str]
    masks: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def check_dataset(name: str, root: str | os.PathLike) -> CheckReport:
    """Compare a copy of a benchmark with the official sizes and list everything wrong with it (missing files and
    folders, malformed annotation lines, images and masks listed but missing on disk). Raises only for an unknown
    dataset name."""
    info = dataset_info(name)
    ctx, parsed = _parse(info, root)
    problems = list(ctx.problems)
    found: dict[str, int | None] = {"classes": None, **dict.fromkeys(SPLITS)}
    if parsed is not None:
        found["classes"] = len(parsed.classes)
        for split in SPLITS:
            found[split] = len(parsed.splits[split])
            problems += _missing_files(parsed.splits[split])
    expected = {"classes": info.num_classes, "train": info.num_train, "test": info.num_test}
    rows = [CheckRow(what, expected[what], found[what]) for what in expected]
    problems += [f"{r.what}: found {r.found}, expected {r.expected}" for r in rows if r.found not in (None, r.expected)]
    return CheckReport(name, ctx.base, rows, problems, None if parsed is None else parsed.masks)
