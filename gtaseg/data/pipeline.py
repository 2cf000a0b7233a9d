"""A run's data, in the order it is built: splits → datasets → a seeded loader → the bad-image policy; and how an
evaluation reads a split (:class:`LoaderSettings`).

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
from gtaseg.errors import CheckpointError, DataError
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

    def state_dict(self) -> dict:
        """The files skipped so far (the policy itself is the run's option, not its state)."""
        return {"skipped": dict(self.skipped)}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = dict(state["skipped"])

    def readable(self, batches: Iterable, size: int, batch_size: int,
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
                    raise DataError(f"none of the {size} images could be read (the last tried: {bad[-1].reason})")
        finally:
            # Stop the loader's workers now, not whenever the garbage collector finds the iterator: they ignore
            # SIGTERM (ignore_stop_signals), so multiprocessing's exit handler could not stop them and would
            # wait for them forever.
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()


class Batches:
    """Training micro-batches of this rank from the seeded stream, forever; :attr:`drawn` counts the micro-batches
    taken (with ``--on-bad-image skip`` a batch without a readable image is drawn but not yielded, so the count,
    not the number of steps, says where the stream stands). Its state is every rank's count: ``gather`` collects
    them (a collective under torchrun, so :meth:`state_dict` is called on every rank); :meth:`load_state_dict`,
    before the first batch, restarts the stream where the stopped run's rank stood."""

    def __init__(self, dataset: ImageDataset, *, batch_size: int, seed: int, workers: int, bad_images: BadImages,
                 rank: int = 0, world_size: int = 1, pin_memory: bool = False,
                 gather: Callable[[int], list[int]] = lambda n: [n]):
        self.dataset, self.batch_size, self.seed, self.workers = dataset, batch_size, seed, workers
        self.bad_images, self.rank, self.world_size, self.pin_memory = bad_images, rank, world_size, pin_memory
        self._gather, self.drawn = gather, 0
        # The loader draws its base seed (each worker's RNG seed) when it starts, from this generator: torch's
        # global RNG as it stands now, which then moves on by that one draw, as it did when the loader started
        # here. So the stream can start later, after load_state_dict, and every draw stays what it was.
        self._generator = torch.Generator().set_state(torch.get_rng_state())
        torch.empty((), dtype=torch.int64).random_()
        self._it: Iterator[tuple[Tensor, Tensor]] | None = None

    def state_dict(self) -> dict:
        return {"drawn": self._gather(self.drawn)}

    def load_state_dict(self, state: dict) -> None:
        drawn = list(state["drawn"])
        if any(drawn) and len(drawn) != self.world_size:
            raise CheckpointError(f"written by a run of {len(drawn)} processes; resume it with as many "
                                  f"(torchrun --nproc_per_node {len(drawn)}), not {self.world_size}")
        self.drawn = drawn[self.rank] if any(drawn) else 0

    def _start(self) -> Iterator[tuple[Tensor, Tensor]]:
        stream = SeededStream(len(self.dataset), self.seed, start=self.drawn * self.batch_size * self.world_size,
                              rank=self.rank, world_size=self.world_size)
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=stream, num_workers=self.workers,
                            pin_memory=self.pin_memory, persistent_workers=self.workers > 0,
                            collate_fn=collate_marked, worker_init_fn=ignore_stop_signals, generator=self._generator)
        return self.bad_images.readable(iter(loader), len(self.dataset), self.batch_size, self._count)

    def _count(self) -> None:
        self.drawn += 1

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        if self._it is None:
            self._it = self._start()
        return next(self._it)

    def close(self) -> None:
        """Stop the loader's workers (on success, error or signal alike)."""
        if self._it is not None:
            self._it.close()


def train_dataset(split: Split, *, image_size: int, mean, std, crop_scale: tuple[float, float],
                  randaugment: bool) -> ImageDataset:
    return ImageDataset(split, train_transform(image_size, mean, std, crop_scale, randaugment), mark_bad=True)


@dataclass(frozen=True)
class LoaderSettings:
    """How an evaluation reads a split: the eval transform's resolution and centre crop, the loader's batch and
    workers, the device the batches go to, and the bad-image policy."""

    image_size: int
    crop_pct: float
    batch_size: int
    workers: int
    device: torch.device
    bad_images: BadImages

    def dataset(self, split: Split, mean, std) -> ImageDataset:
        return ImageDataset(split, eval_transform(self.image_size, mean, std, self.crop_pct), mark_bad=True)

    def batches(self, dataset: ImageDataset) -> Iterator[tuple[Tensor, Tensor]]:
        """One pass over ``dataset`` in order, under the bad-image policy."""
        loader = DataLoader(dataset, batch_size=self.batch_size, num_workers=self.workers,
                            pin_memory=self.device.type == "cuda", collate_fn=collate_marked)
        return self.bad_images.readable(loader, len(dataset), self.batch_size)

    def count(self, dataset: ImageDataset) -> int:
        """The number of batches of a pass over ``dataset``."""
        return -(-len(dataset) // self.batch_size)


def stack_readable(dataset: ImageDataset, bad_images: BadImages) -> Tensor:
    """Every readable image of a (small) dataset as one [B, 3, S, S] tensor, under the bad-image policy."""
    items = [dataset[i] for i in range(len(dataset))]
    bad_images([x for x in items if isinstance(x, BadImage)])
    return torch.stack([x[0] for x in items if not isinstance(x, BadImage)])

