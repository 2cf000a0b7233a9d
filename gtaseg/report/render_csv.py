"""The report's CSV files: one row per chosen cell (table*.csv), one per run (runs.csv), and one per GTA-rival
comparison (paired.csv)."""
from __future__ import annotations

import csv
import io
import math
from typing import Any

from gtaseg.methods import METHODS
from gtaseg.report.labels import source_label
from gtaseg.report.metrics import TOP1, TOP5, Metric
from gtaseg.report.paired import LEVEL, RESAMPLES, SEED
from gtaseg.report.rivals import Comparison
from gtaseg.report.runs import Run
from gtaseg.report.selection import Cell, mean_std
from gtaseg.report.tables import Table

CELL_COLUMNS = ["table", "dataset", "row", "method", "source", "transmix", "sampling_rate", "lam", "alpha",
                "lams_tried", "lam_fallback", "n", "seeds", "protocol", "selected_on", "lr", "lrs_tried",
                "lam_reduction"]


def metric_columns(metrics: tuple[Metric, ...]) -> list[str]:
    return [f"{m.key}_{part}" for m in metrics for part in (("mean", "std", "n") if m.optional else ("mean", "std"))]


CSV_COLUMNS = CELL_COLUMNS + metric_columns((TOP1, TOP5))


def table_csv(table: Table, labels: dict[str, dict[str, str]], metrics: tuple[Metric, ...] = (TOP1, TOP5),
              header: bool = True) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(CELL_COLUMNS + metric_columns(metrics))
    for row, c in table.filled():
        alpha = METHODS[c.method].default_lam if c.method in METHODS else 0.0
        reductions = {r.lam_reduction for r in c.runs} if alpha and METHODS[c.method].needs_source else set()
        w.writerow([table.slug, c.dataset, " / ".join(row.label), c.method, source_label(c.source, labels),
                    int(c.transmix), f"{c.rate:g}", f"{c.lam:g}", f"{alpha:g}",
                    ";".join(f"{x:g}" for x in c.lams_tried), int(c.fallback), c.n,
                    ";".join(str(s) for s in c.seeds), c.protocol.name, c.protocol.selected_on,
                    "" if c.lr is None else f"{c.lr:g}", ";".join(f"{x:g}" for x in c.lrs_tried),
                    ";".join(sorted(reductions)), *(x for m in metrics for x in _metric_stats(c, m))])
    return buf.getvalue()


def _metric_stats(cell: Cell, metric: Metric) -> list:
    """mean, std (and, for an optional metric, how many runs have it); empty where no run has it."""
    xs = cell.values(metric.key)
    stats = [f"{x:.4f}" for x in mean_std(xs)] if xs else ["", ""]
    return stats + [len(xs)] if metric.optional else stats


RUNS_COLUMNS = ["run", "dataset", "method", "source", "transmix", "sampling_rate", "lam", "seed", "steps",
                "train_images", "top1", "top5", "drift", "jaccard_best", "jaccard_merged"]


def runs_csv(runs: list[Run], labels: dict[str, dict[str, str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(RUNS_COLUMNS)
    for r in sorted(runs, key=lambda r: r.name):
        w.writerow([r.name, r.dataset, r.method, source_label(r.source, labels), int(r.transmix), f"{r.rate:g}",
                    f"{r.lam:g}", r.seed, r.final.get("steps", ""), r.final.get("train_images", ""),
                    f"{float(r.final['top1']):.4f}", f"{float(r.final.get('top5', math.nan)):.4f}",
                    *(_num(r.final.get(k)) for k in ("drift", "jaccard_best", "jaccard_merged"))])
    return buf.getvalue()


def _num(x: Any) -> str:
    return "" if x is None else f"{float(x):.4f}"


PAIRED_COLUMNS = ["dataset", "sampling_rate", "source", "rival", "protocol", "selected_on", "gta_lam", "gta_lr",
                  "rival_lam", "rival_lr", "seeds", "n_seeds", "mean_difference", "differences", "seeds_ahead",
                  "ci_low", "ci_high", "ci_level", "resamples", "bootstrap_seed", "test_images", "ci_missing"]


def paired_csv(comparisons: list[Comparison], labels: dict[str, dict[str, str]]) -> str:
    """One row per comparison: GTA's test top-1 minus the rival's, per seed and mean, and the interval (empty,
    with the reason in ci_missing, where there is none)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PAIRED_COLUMNS)
    for c in comparisons:
        g, r = c.gta, c.rival
        interval = ([f"{c.interval[0]:.4f}", f"{c.interval[1]:.4f}", f"{LEVEL:g}", RESAMPLES, SEED, c.images]
                    if c.interval else [""] * 6)
        w.writerow([g.dataset, f"{g.rate:g}", source_label(g.source, labels), c.label, g.protocol.name,
                    g.protocol.selected_on, f"{g.lam:g}", _lr(g), f"{r.lam:g}", _lr(r),
                    ";".join(str(s) for s in c.seeds), len(c.seeds), _num(c.mean_difference),
                    ";".join(f"{d:.4f}" for d in c.differences), c.seeds_ahead, *interval, c.missing])
    return buf.getvalue()


def _lr(cell: Cell) -> str:
    return "" if cell.lr is None else f"{cell.lr:g}"
