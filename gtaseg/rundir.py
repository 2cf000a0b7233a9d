"""A run directory: the files ``gtaseg train`` writes, and the one place their names and formats are defined.

Training writes them; resume, sweep and report read them. Layout::

    config.json          the TrainConfig as run, plus "lam_conversion" (derived, not an option)
    train_files.txt      one "<image path>\\t<class name>" line per training image, in sample order
    val_files.txt        the same for the validation images held out of train (--val-fraction)
    metrics.jsonl        one JSON row per log interval ({"step", "lr", "loss", "ce", "reg", "drift", ...})
    checkpoint.pt        the training state (gtaseg.checkpointing)
    model.safetensors    the fine-tuned weights with their ModelInfo (gtaseg.models)
    best.safetensors     --keep best: the weights of the best validation top-1 so far
    skipped_images.txt   the unreadable files met with --on-bad-image skip, one reason per line
    test_predictions.csv one "id,label,predicted" row per scored test image, in split order (class names; the id
                         is the image's path relative to the folder that holds all the test split's images)
    final.json           written last: a run is finished iff it exists
    attention/           gtaseg table4's stored attention scores, one <measure>.json each
                         (gtaseg.evaluation.model_scores)
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

from gtaseg.config import ADDED_OPTIONS, FIELDS, RESUME_OPTIONS, TrainConfig
from gtaseg.errors import GtasegError
from gtaseg.io import write_json, write_text
from gtaseg.tensorboard import SUBDIR as TENSORBOARD_SUBDIR

CONFIG = "config.json"
TRAIN_FILES = "train_files.txt"
VAL_FILES = "val_files.txt"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
MODEL = "model.safetensors"
BEST = "best.safetensors"
SKIPPED = "skipped_images.txt"
PREDICTIONS = "test_predictions.csv"
FINAL = "final.json"
ATTENTION = "attention"
# The keys of final.json that are wall-clock times: the only ones that differ between two runs of one config.
WALL_CLOCK = ("train_seconds", "eval_seconds")
# The key of config.json that holds what λ means in the other reduction: derived, not an option, so a resumed
# run's config ignores it.
CONFIG_NOTE = "lam_conversion"


class Prediction(NamedTuple):
    """A row of test_predictions.csv: one scored test image."""

    id: str
    label: str  # the true class's name
    predicted: str  # the top-1 class's name


def prediction_ids(paths: Sequence[str | os.PathLike]) -> list[str]:
    """The ids of a split's images: each path relative to the folder that holds all of them, so that runs of the
    same data pair up wherever the data lay (another machine, another cache)."""
    paths = [Path(p) for p in paths]
    if not paths:
        return []
    root = Path(os.path.commonpath([p.parent for p in paths]))
    return [p.relative_to(root).as_posix() for p in paths]


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def model(self) -> Path:
        return self.path / MODEL

    def is_finished(self) -> bool:
        return (self.path / FINAL).is_file()

    def discard(self, created: bool) -> None:
        """Remove what a run that stopped before its first checkpoint wrote: the whole folder when the run
        ``created`` it, else only the run's own files (the folder may hold the user's)."""
        if created:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for name in (CONFIG, TRAIN_FILES, METRICS, SKIPPED):
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.path / TENSORBOARD_SUBDIR, ignore_errors=True)

    # ------------------------------------------------------------------------------------------ config

    def write_config(self, cfg: TrainConfig, note: dict | None) -> None:
        write_json(self.path / CONFIG, {**asdict(cfg), CONFIG_NOTE: note})

    def raw_config(self) -> dict:
        """config.json as written (options, and the note); a :class:`GtasegError` naming the file if unreadable."""
        path = self.path / CONFIG
        try:
            saved = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise GtasegError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(saved, dict):
            raise GtasegError(f"{path}: not a gtaseg run config")
        return saved

    def options(self) -> dict:
        """The run's options: config.json without its note, with :data:`ADDED_OPTIONS` for older runs."""
        saved = self.raw_config()
        saved.pop(CONFIG_NOTE, None)
        return {**ADDED_OPTIONS, **saved}

    def resumed_config(self, **overrides: Any) -> TrainConfig:
        """The config of the stopped run here, with ``overrides`` of :data:`RESUME_OPTIONS`."""
        if not self.path.is_dir():
            raise GtasegError(f"{self.path}: no such run directory")
        path = self.path / CONFIG
        if not path.is_file():
            raise GtasegError(f"{path}: not found; {self.path} holds no run to resume (start one with --out)")
        if self.is_finished():
            raise GtasegError(f"{self.path / FINAL}: this run already finished; nothing to resume")
        saved = self.options()
        extra = sorted(set(saved) - set(FIELDS))
        if extra:
            raise GtasegError(f"{path}: not a gtaseg run config (unknown keys {', '.join(extra)})")
        bad = sorted(set(overrides) - set(RESUME_OPTIONS))
        if bad:
            raise GtasegError(f"only {', '.join(RESUME_OPTIONS)} can change when a run resumes, not {', '.join(bad)}")
        saved.update({k: v for k, v in overrides.items() if v is not None})
        return TrainConfig(**saved)

    # ------------------------------------------------------------------------------------- train files

    @staticmethod
    def train_files_text(samples: Sequence[tuple[Any, int]], classes: Sequence[str]) -> str:
        return "".join(f"{p}\t{classes[y]}\n" for p, y in samples)

    def write_train_files(self, samples: Sequence[tuple[Any, int]], classes: Sequence[str],
                          name: str = TRAIN_FILES) -> None:
        """The run's training images (or, with ``name=VAL_FILES``, those it held out for validation)."""
        write_text(self.path / name, self.train_files_text(samples, classes))

    def check_train_files(self, samples: Sequence[tuple[Any, int]], classes: Sequence[str],
                          name: str = TRAIN_FILES) -> None:
        """A resumed run must read the very files it started with."""
        path = self.path / name
        if path.is_file() and path.read_text() != self.train_files_text(samples, classes):
            raise GtasegError(f"{path}: the images changed since the run started; resume needs the same "
                              f"files (or start a new run)")

    # ----------------------------------------------------------------------------------------- metrics

    def append_metrics(self, row: dict) -> None:
        with open(self.path / METRICS, "a") as f:
            f.write(json.dumps(row) + "\n")

    def metrics(self) -> list[dict]:
        """The rows of metrics.jsonl up to the first that does not parse (a line cut short by a kill)."""
        try:
            lines = (self.path / METRICS).read_text().splitlines()
        except OSError:
            return []
        rows = []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break
            if not isinstance(row, dict):
                break
            rows.append(row)
        return rows

    def last_logged(self, key: str) -> float | None:
        """``key`` in the last row that has it (validation rows of --eval-every hold no training terms)."""
        for row in reversed(self.metrics()):
            if key in row:
                try:
                    return float(row[key])
                except (TypeError, ValueError):
                    return None
        return None

    def truncate_metrics(self, step: int) -> None:
        """Keep the rows up to ``step`` (those a resumed run does not write again); a half-written line goes too."""
        path = self.path / METRICS
        if not path.exists():
            return
        keep = []
        for row in self.metrics():
            if row.get("step", step + 1) > step:
                break
            keep.append(json.dumps(row) + "\n")
        write_text(path, "".join(keep))

    # ------------------------------------------------------------------------------------------- final

    def write_skipped(self, reasons: Sequence[str]) -> None:
        write_text(self.path / SKIPPED, "".join(f"{r}\n" for r in reasons))

    def write_predictions(self, rows: Sequence[Prediction]) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(Prediction._fields)
        w.writerows(rows)
        write_text(self.path / PREDICTIONS, buf.getvalue())

    def predictions(self) -> list[Prediction] | None:
        """test_predictions.csv's rows; None for a run without the file (written before runs saved it)."""
        path = self.path / PREDICTIONS
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        reader = csv.reader(io.StringIO(text))
        if next(reader, None) != list(Prediction._fields):
            raise GtasegError(f"{path}: not a gtaseg predictions file (header {','.join(Prediction._fields)})")
        try:
            return [Prediction(*row) for row in reader]
        except TypeError:
            raise GtasegError(f"{path}: a row without {len(Prediction._fields)} fields") from None

    def write_final(self, final: dict) -> None:
        write_json(self.path / FINAL, final)

    def final(self) -> dict:
        return json.loads((self.path / FINAL).read_text())
