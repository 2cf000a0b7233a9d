"""Attention drift during training for Table 2's cells: what each run logged in ``metrics.jsonl``, mean ± std over
seeds per step (drift.csv, drift.png)."""
from __future__ import annotations

import csv
import io
import math
import os
import textwrap
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gtaseg.io import atomic_write
from gtaseg.report.labels import DATASET_TITLES, dataset_order, rate_header
from gtaseg.report.selection import mean_std
from gtaseg.report.tables import Table
from gtaseg.rundir import RunDir

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class DriftCurve:
    dataset: str
    label: str  # the table row, e.g. "gta"
    rate: float
    lam: float
    steps: list[int]
    runs: list[list[float]]  # per step, the drift of each run that logged it


def drift_curves(table: Table, runs_dir: Path) -> list[DriftCurve]:
    """The drift logged during training by the runs of each of ``table``'s cells (rows without it: none)."""
    curves = []
    for row, cell in table.filled():
        by_step: dict[int, list[float]] = defaultdict(list)
        for run in cell.runs:
            for record in RunDir(runs_dir / run.name).metrics():
                try:
                    by_step[int(record["step"])].append(float(record["drift"]))
                except (ValueError, KeyError, TypeError):
                    continue  # a row without drift
        if by_step:
            steps = sorted(by_step)
            curves.append(DriftCurve(cell.dataset, " ".join(row.label), cell.rate, cell.lam, steps,
                                     [by_step[s] for s in steps]))
    return curves


def drift_csv(curves: list[DriftCurve]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["dataset", "method", "sampling_rate", "lam", "step", "n", "drift_mean", "drift_std"])
    for c in curves:
        for step, xs in zip(c.steps, c.runs):
            m, s = mean_std(xs)
            w.writerow([c.dataset, c.label, f"{c.rate:g}", f"{c.lam:g}", step, len(xs), f"{m:.4f}", f"{s:.4f}"])
    return buf.getvalue()


TITLE = "[cls] attention drift from the initial model during training (Table 2's runs; bars: ± std over seeds)"
TITLE_POINTS = 9


def drift_png(curves: list[DriftCurve], path: str | os.PathLike) -> None:
    fig = drift_figure(curves)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def drift_figure(curves: list[DriftCurve]) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    order = dataset_order({c.dataset for c in curves})
    panels = sorted({(c.dataset, c.rate) for c in curves}, key=lambda p: (order.index(p[0]), p[1]))
    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    colours = {label: f"C{i}" for i, label in enumerate(dict.fromkeys(c.label for c in curves))}
    for i, (dataset, rate) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for c in (c for c in curves if (c.dataset, c.rate) == (dataset, rate)):
            stats = [mean_std(xs) for xs in c.runs]
            name = c.label + (f" (λ {c.lam:g})" if c.lam else "")
            ax.errorbar(c.steps, [m for m, _ in stats], yerr=[s for _, s in stats], color=colours[c.label],
                        marker="o", markersize=3, capsize=2, label=name)
        ax.set_yscale("symlog", linthresh=1.0)  # drift spans 0 (frozen) to thousands
        ax.set_title(f"{DATASET_TITLES.get(dataset, dataset)}, {rate_header(rate)} of the data")
        ax.set_xlabel("step")
        ax.set_ylabel("drift Σ‖A − A₀‖²")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    # Wrapped to the figure's width (a character is about 0.6 em): one panel is narrower than the title's one line.
    chars = int(fig.get_figwidth() * 72 / (0.6 * TITLE_POINTS))
    fig.suptitle(textwrap.fill(TITLE, chars), fontsize=TITLE_POINTS)
    return fig
