"""A run's data, in the order it is built: splits → datasets → a seeded loader → the bad-image policy.

The training stream is :class:`gtaseg.data.sampler.SeededStream`: every sample's position fixes which image
it is and how it is augmented. :class:`Batches` counts the micro-batches it has drawn, those left out because
none of their images could be read included, so a resumed run restarts the stream at exactly the position the
stopped one had reached.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from gtaseg.data.dataset import BadImage, ImageDataset, check_classes, collate_marked, load_split
from gtaseg.data.holdout import hold_out
from gtaseg.data.sampler import SeededStream
from gtaseg.data.sampling import stratified_subset
from gtaseg.data.split import Split
from gtaseg.data.synthetic import SyntheticConfig, synthetic_root
from gtaseg.data.transforms import eval_transform, train_transform
from gtaseg.errors import DataError
from gtaseg.stopping import ignore_stop_signals


@dataclass(frozen=True)
class RunSplits:
    """A run's images: ``train`` after --val-fraction and --sampling-rate, ``val`` (None: the data has none) and
    ``test``; ``val_origin`` says where ``val`` came from (``val`` split, ``held out`` of train, or None)."""

    train: Split
    val: Split | None
    test: Split
    val_origin: str | None


def own_validation(data: str, synthetic: dict) -> str | None:
    """Where ``data``'s own validation split is (an ImageFolder's ``val/``, the synthetic data's
    ``val_per_class``), or None when it has none."""
    if data == "synthetic":
        return "--synthetic val_per_class" if SyntheticConfig.from_options(synthetic).val_per_class > 0 else None
    from gtaseg.data.finegrained import DATASETS

    val = Path(data) / "val"
    return str(val) if data not in DATASETS and val.is_dir() else None


def load_run_splits(data: str, *, data_root: str | None, synthetic: dict, val_fraction: float,
                    sampling_rate: float, seed: int, classes: int = 0) -> RunSplits:
    """The splits of a run: the data's own validation split, or ``val_fraction`` of every class held out of
    train before ``sampling_rate`` of what is left is kept (so the validation images never depend on the rate);
    both draws depend only on ``seed`` and the file names. ``classes`` > 0 keeps the first that many classes of
    every split (0: all)."""
    root = synthetic_root(data, synthetic)
    load = lambda name: _first_classes(load_split(data, name, data_root, root), classes, data)  # noqa: E731
    full = load("train")
    own = own_validation(data, synthetic)
    if own and val_fraction:
        raise DataError(f"{own}: the data has a validation split of its own; drop --val-fraction {val_fraction:g}")
    val, origin = None, None
    if own:
        val, origin = load("val"), "val"
    elif val_fraction:
        (full, val), origin = hold_out(full, val_fraction, seed), "held out"
    train = stratified_subset(full, sampling_rate, seed)
    check_classes(train, data, sampling_rate)
    test = load("test")
    for name, other in (("val", val), ("test", test)):
        if other is not None and other.classes != train.classes:
            missing = sorted(set(train.classes) ^ set(other.classes))
            raise DataError(f"{Path(data) / name}: its classes differ from train's ({', '.join(missing[:3])}"
                            f"{' ...' if len(missing) > 3 else ''}); every split needs the same class folders")
    return RunSplits(train, val, test, origin)


def _first_classes(split: Split, n: int, data: str) -> Split:
    if not n:
        return split
    if n > len(split.classes):
        raise DataError(f"{data}: --classes {n}, but it has {len(split.classes)} classes")
    return split.first_classes(n)


class BadImages:
    """``--on-bad-image``: stop at the first unreadable file (one line naming it), or skip it and remember it
    (path → reason) for final.json and skipped_images.txt."""

    def __init__(self, policy: str, skipped: dict[str, str] | None = None):
        self.policy = policy
        self.skipped: dict[str, str] = dict(skipped or {})

    def __call__(self, bad: Iterable[BadImage]) -> None:
        for b in bad:
            if self.policy == "stop":
                raise DataError(f"{b.reason} (--on-bad-image skip leaves such files out)")
            if b.path not in self.skipped:
                self.skipped[b.path] = b.reason
                tqdm.write(f"skipping {b.reason}", file=sys.stderr)

    def readable(self, batches: Iterable, size: int, batch_size: int, data: str,
                 on_draw: Callable[[], None] = lambda: None) -> Iterator[tuple[Tensor, Tensor]]:
        """The (images, labels) of ``collate_marked`` batches with the unreadable images dropped, and batches
        left with none dropped too; ``on_draw`` is called for every batch drawn, dropped ones included."""
        empty = 0
        try:
            for images, labels, bad in batches:
                on_draw()
                self(bad)
                if labels is not None:
                    empty = 0
                    yield images, labels
                    continue
                empty += 1
                if empty * batch_size >= 2 * size:  # two epochs' worth of positions: nothing is readable
                    raise DataError(f"{data}: none of the {size} images could be read")
        finally:
            # Stop the loader's workers now, not whenever the garbage collector finds the iterator: they ignore
            # SIGTERM (ignore_stop_signals), so multiprocessing's exit handler could not stop them and would
            # wait for them forever.
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()


class Batches:
    """Training micro-batches from the seeded stream, forever, starting after ``drawn`` micro-batches of this
    rank; :attr:`drawn` counts on as batches are taken (with ``--on-bad-image skip`` a batch without a readable
    image is drawn but not yielded, so the count, not the number of steps, says where the stream stands)."""

    def __init__(self, dataset: ImageDataset, *, batch_size: int, seed: int, workers: int, bad_images: BadImages,
                 data: str, drawn: int = 0, rank: int = 0, world_size: int = 1, pin_memory: bool = False):
        self.drawn = drawn
        stream = SeededStream(len(dataset), seed, start=drawn * batch_size * world_size, rank=rank,
                              world_size=world_size)
        loader = DataLoader(dataset, batch_size=batch_size, sampler=stream, num_workers=workers,
                            pin_memory=pin_memory, persistent_workers=workers > 0, collate_fn=collate_marked,
                            worker_init_fn=ignore_stop_signals)
        # iter() now, not at the first next(): creating the iterator draws from torch's RNG, which a resumed run
        # restores only after this point, as the first run drew it.
        self._it = bad_images.readable(iter(loader), len(dataset), batch_size, data, self._count)

    def _count(self) -> None:
        self.drawn += 1

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        return next(self._it)

    def close(self) -> None:
        """Stop the loader's workers (on success, error or signal alike)."""
        self._it.close()


def train_dataset(split: Split, *, image_size: int, mean, std, crop_scale: tuple[float, float],
                  randaugment: bool) -> ImageDataset:
    return ImageDataset(split, train_transform(image_size, mean, std, crop_scale, randaugment), mark_bad=True)


def eval_dataset(split: Split, image_size: int, crop_pct: float, mean, std) -> ImageDataset:
    return ImageDataset(split, eval_transform(image_size, mean, std, crop_pct), mark_bad=True)


def eval_batches(dataset: ImageDataset, batch_size: int, workers: int, bad_images: BadImages, data: str,
                 pin_memory: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
    """One pass over ``dataset`` in order, under the bad-image policy."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=pin_memory,
                        collate_fn=collate_marked)
    return bad_images.readable(loader, len(dataset), batch_size, data)


def stack_readable(dataset: ImageDataset, bad_images: BadImages) -> Tensor:
    """Every readable image of a (small) dataset as one [B, 3, S, S] tensor, under the bad-image policy."""
    items = [dataset[i] for i in range(len(dataset))]
    bad_images([x for x in items if isinstance(x, BadImage)])
    return torch.stack([x[0] for x in items if not isinstance(x, BadImage)])

