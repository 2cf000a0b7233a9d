"""Reading a runs dir: every finished run's config and result, and the labels its sweeps recorded."""
from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from gtaseg.config import ADDED_OPTIONS, RESULT_NEUTRAL
from gtaseg.errors import GtasegError
from gtaseg.rundir import CONFIG, RunDir
from gtaseg.sweep.naming import data_label
from gtaseg.sweep.state import SWEEP_RECORD


LP_FT = "lp-ft"


@dataclass
class Run:
    name: str  # the run folder, relative to the runs dir, with '/' separators
    config: dict  # config.json as written
    final: dict  # final.json, with "train_ce" from metrics.jsonl where final.json lacks it
    repeats: list[str] = field(default_factory=list)  # folders of this very setting and seed, counted as this one

    @property
    def method(self) -> str:
        """The report's row: the method, and ``lp-ft`` for the baseline with its head started from a linear probe
        (Kumar et al.'s LP-FT, a rival of its own)."""
        method = self.config.get("method", self.final.get("method"))
        if method == "baseline" and self.config.get("head_init", ADDED_OPTIONS["head_init"]) == "probe":
            return LP_FT
        return method

    @property
    def lam(self) -> float:
        return float(self.final.get("lam", self.config.get("lam") or 0.0))

    @property
    def dataset(self) -> str:
        return data_label(str(self.config.get("data", self.final.get("data", "?"))),
                          int(self.config.get("classes", ADDED_OPTIONS["classes"])))

    @property
    def rate(self) -> float:
        return float(self.config.get("sampling_rate", self.final.get("sampling_rate", 1.0)))

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", self.final.get("seed", 0)))

    @property
    def transmix(self) -> bool:
        return bool(self.config.get("transmix", self.final.get("transmix", False)))

    @property
    def source(self) -> str:
        return str(self.config.get("source") or self.config.get("init") or "?")

    @property
    def lr(self) -> float | None:
        lr = self.config.get("lr")
        return None if lr is None else float(lr)

    @property
    def lam_reduction(self) -> str:
        return self.config.get("lam_reduction", ADDED_OPTIONS["lam_reduction"])


@dataclass
class Collected:
    runs: list[Run]
    unfinished: list[str]
    unreadable: list[str]
    labels: dict[str, dict[str, str]]


def collect(runs_dir: str | os.PathLike) -> Collected:
    """The run folders under ``runs_dir`` (any depth; folders starting with a dot, like .locks, skipped):
    finished ones as :class:`Run`, unfinished (no final.json) and unreadable ones by name."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise GtasegError(f"{root}: no such folder")
    runs, unfinished, unreadable = [], [], []
    for config_path in sorted(root.rglob(CONFIG)):
        run_dir = RunDir(config_path.parent)
        rel = run_dir.path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if not run_dir.is_finished():
            unfinished.append(rel.as_posix())
            continue
        try:
            config = run_dir.raw_config()
            final = run_dir.final()
            float(final["top1"])
        except (OSError, ValueError, KeyError, TypeError, GtasegError):
            unreadable.append(rel.as_posix())
            continue
        final.setdefault("train_ce", run_dir.last_logged("ce"))
        runs.append(Run(rel.as_posix(), config, final))
    labels: dict[str, dict[str, str]] = defaultdict(dict)
    runs = one_per_setting(runs)
    for record in sorted(root.rglob(SWEEP_RECORD.format(name="*"))):
        try:
            for key, mapping in (json.loads(record.read_text()).get("labels") or {}).items():
                labels[key].update({str(a): str(b) for a, b in mapping.items()})
        except (OSError, ValueError, AttributeError):
            continue
    return Collected(runs, unfinished, unreadable, dict(labels))


# config.json keys that leave two runs one setting: where they run, and on_bad_image, which changes nothing unless an
# image is unreadable (final.json counts those).
_SAME_SETTING_IGNORED = {*RESULT_NEUTRAL, "on_bad_image"}


def one_per_setting(runs: list[Run]) -> list[Run]:
    """The first run (by name) of each setting and seed; the others, such as an interrupted and resumed copy beside
    an uninterrupted one, are one seed, not two: they go into its :attr:`Run.repeats`."""
    kept: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: r.name):
        key = json.dumps({k: v for k, v in run.config.items() if k not in _SAME_SETTING_IGNORED}, sort_keys=True)
        if key in kept:
            kept[key].repeats.append(run.name)
        else:
            kept[key] = run
    return list(kept.values())
