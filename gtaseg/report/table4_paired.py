"""GTA against each rival on Table 4's attention scores: per column (best-head and merged Jaccard, CorLoc), the
paired difference per seed, the seeds GTA is ahead on, and a bootstrap interval over images and seeds from the
per-image scores that every stored report keeps (:mod:`~gtaseg.report.paired`, as for test top-1)."""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gtaseg.evaluation.model_scores import per_image, summary
from gtaseg.report.labels import rate_header
from gtaseg.report.paired import LEVEL, RESAMPLES, SEED, first_by_seed, paired_interval
from gtaseg.report.rivals import GTA

PAIRED_FILE = "table4_paired.csv"


class ScoredRow(Protocol):
    """What a comparison reads of a Table 4 row (:class:`~gtaseg.report.table4.AttentionRow`)."""

    method: str
    model: str
    dataset: str
    rate: float | None
    seeds: list[int]  # of the runs in ``reports``, in their order
    reports: list[dict[str, dict]]  # per run: measure name → stored report


@dataclass
class AttentionComparison:
    """GTA's row against a rival's row (same dataset and rate) on one of Table 4's columns."""

    rival: str  # the rival's method
    rival_model: str  # its setting
    dataset: str
    rate: float
    column: str  # the column's header, e.g. "merged 224"
    measure: str  # the stored measure, e.g. "voc224"
    value: str  # best, merged or corloc
    seeds: list[int]  # the seeds both rows have
    differences: list[float]  # GTA's score minus the rival's (points), per seed in ``seeds``
    interval: tuple[float, float] | None  # None when no image was scored by every paired run
    images: int

    @property
    def mean_difference(self) -> float:
        return sum(self.differences) / len(self.differences)

    @property
    def seeds_ahead(self) -> int:
        return sum(d > 0 for d in self.differences)


def attention_comparisons(rows: Sequence[ScoredRow],
                          columns: Sequence[tuple[str, str, str]]) -> list[AttentionComparison]:
    """For every GTA row of Table 4 and every other fine-tuned row at its dataset and rate, one comparison per
    column ((measure, value, header), as Table 4 shows them), on the seeds both rows have."""
    out = []
    for gta in (r for r in rows if r.method == GTA):
        for rival in rows:
            if rival.method == GTA or rival.rate is None or (rival.dataset, rival.rate) != (gta.dataset, gta.rate):
                continue
            ours, theirs = (first_by_seed(zip(r.seeds, r.reports)) for r in (gta, rival))
            for measure, value, header in columns:
                seeds = [s for s in ours if s in theirs and measure in ours[s] and measure in theirs[s]]
                if seeds:
                    out.append(_compare([ours[s][measure] for s in seeds], [theirs[s][measure] for s in seeds],
                                        seeds, rival, gta, measure, value, header))
    return out


def _compare(a: list[dict], b: list[dict], seeds: list[int], rival: ScoredRow, gta: ScoredRow, measure: str,
             value: str, header: str) -> AttentionComparison:
    differences = [summary(x)[value] - summary(y)[value] for x, y in zip(a, b)]
    interval, images = paired_interval([per_image(r, value) for r in a], [per_image(r, value) for r in b])
    return AttentionComparison(rival.method, rival.model, gta.dataset, gta.rate, header, measure, value, seeds,
                               differences, interval, images)


def paired_attention_markdown(comparisons: Sequence[AttentionComparison]) -> str:
    """One line per rival: in each column, GTA's mean lead over the paired seeds, its interval, seeds ahead."""
    headers = list(dict.fromkeys(c.column for c in comparisons))
    lines = ["| Data | Rate | Rival | Setting | Seeds | " + " | ".join(f"GTA − rival, {h}" for h in headers) + " |",
             "|" + "---|" * (5 + len(headers))]
    by_row: dict[tuple, dict[str, AttentionComparison]] = {}
    for c in comparisons:
        by_row.setdefault((c.dataset, c.rate, c.rival, c.rival_model), {})[c.column] = c
    for (dataset, rate, rival, model), cells in by_row.items():
        seeds = ",".join(map(str, next(iter(cells.values())).seeds))
        lines.append(f"| {dataset} | {rate_header(rate)} | {rival} | {model} | {seeds} | "
                     + " | ".join(_cell(cells.get(h)) for h in headers) + " |")
    intro = (f"GTA's score minus each rival's (points), both at the setting Table 2 chose, paired by seed number "
             f"(only the seeds both rows have count). Each cell: the mean difference over those seeds, a "
             f"{100 * LEVEL:g} % percentile interval from a paired bootstrap over images and seeds ({RESAMPLES} "
             f"resamples, bootstrap seed {SEED}; the same images for both methods and every seed), and the seeds "
             f"on which GTA is ahead (a tie is not). Per seed: {PAIRED_FILE}.")
    return "\n\n".join([intro, "\n".join(lines)])


def _cell(c: AttentionComparison | None) -> str:
    if c is None:
        return "–"
    interval = "n/a" if c.interval is None else f"[{c.interval[0]:+.2f}, {c.interval[1]:+.2f}]"
    return f"{c.mean_difference:+.2f} {interval}, {c.seeds_ahead} of {len(c.seeds)}"


PAIRED_COLUMNS = ["dataset", "sampling_rate", "rival", "rival_model", "measure", "value", "seeds", "n_seeds",
                  "mean_difference", "differences", "seeds_ahead", "ci_low", "ci_high", "ci_level", "resamples",
                  "bootstrap_seed", "images"]


def paired_attention_csv(comparisons: Sequence[AttentionComparison]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PAIRED_COLUMNS)
    for c in comparisons:
        interval = [f"{c.interval[0]:.4f}", f"{c.interval[1]:.4f}"] if c.interval else ["", ""]
        w.writerow([c.dataset, f"{c.rate:g}", c.rival, c.rival_model, c.measure, c.value,
                    ";".join(map(str, c.seeds)), len(c.seeds), f"{c.mean_difference:.4f}",
                    ";".join(f"{d:.4f}" for d in c.differences), c.seeds_ahead, *interval, f"{LEVEL:g}", RESAMPLES,
                    SEED, c.images])
    return buf.getvalue()
