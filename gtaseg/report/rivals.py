"""GTA against each rival method of Table 2, at the settings chosen there: the paired difference in test top-1
per seed, how many seeds GTA is ahead on, and a bootstrap interval (:mod:`~gtaseg.report.paired`) from the
runs' test predictions (test_predictions.csv)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gtaseg.report.paired import first_by_seed, paired_interval
from gtaseg.report.runs import Run
from gtaseg.report.selection import Cell
from gtaseg.report.tables import Table
from gtaseg.rundir import RunDir

GTA = "gta"


@dataclass
class Comparison:
    """GTA's cell against a rival's, at one dataset, rate and source."""

    gta: Cell
    rival: Cell
    label: str  # the rival's row in the table
    seeds: list[int]  # the seeds both cells have
    differences: list[float]  # GTA's test top-1 minus the rival's (final.json), per seed in ``seeds``
    interval: tuple[float, float] | None  # None: see ``missing``
    images: int | None  # the test images the bootstrap resampled
    missing: str = ""  # why there is no interval

    @property
    def mean_difference(self) -> float | None:
        return sum(self.differences) / len(self.differences) if self.differences else None

    @property
    def seeds_ahead(self) -> int:
        return sum(d > 0 for d in self.differences)


def gta_versus_rivals(table: Table, runs_dir: Path) -> list[Comparison]:
    """For every GTA cell of ``table``, one :class:`Comparison` with each other row's cell at the same dataset,
    rate and source."""
    out = []
    for row, gta in table.filled():
        if row.key[0] != GTA:
            continue
        for other in table.rows:
            rival = table.cell(other, gta.dataset, gta.rate)
            if other.key[0] == GTA or other.key[1:] != row.key[1:] or rival is None:
                continue
            out.append(compare(gta, rival, " / ".join(other.label), runs_dir))
    return out


def compare(gta: Cell, rival: Cell, label: str, runs_dir: Path) -> Comparison:
    """The two cells' runs paired by seed number (only the seeds both have count)."""
    # A cell holds one run per seed unless a sweep ran a seed twice (the report warns then): take the first.
    gta_runs, rival_runs = (first_by_seed((r.seed, r) for r in c.runs) for c in (gta, rival))
    seeds = sorted(gta_runs.keys() & rival_runs.keys())
    pairs = [(gta_runs[s], rival_runs[s]) for s in seeds]
    differences = [float(a.final["top1"]) - float(b.final["top1"]) for a, b in pairs]
    if not pairs:
        return Comparison(gta, rival, label, seeds, differences, None, None, "no seed in common")
    correct = [_correct(runs_dir, run) for pair in pairs for run in pair]
    if any(c is None for c in correct):
        return Comparison(gta, rival, label, seeds, differences, None, None, "no test predictions (older runs)")
    # The images every paired run scored (all of them, unless --on-bad-image skip left some out of a run).
    interval, images = paired_interval(correct[0::2], correct[1::2])  # GTA's and the rival's runs alternate
    if interval is None:
        return Comparison(gta, rival, label, seeds, differences, None, None, "no test image scored by every run")
    return Comparison(gta, rival, label, seeds, differences, interval, images)


def _correct(runs_dir: Path, run: Run) -> dict[str, bool] | None:
    """Test image id → whether the run's top-1 was right; None for a run without test_predictions.csv."""
    rows = RunDir(runs_dir / run.name).predictions()
    return None if rows is None else {r.id: r.label == r.predicted for r in rows}
