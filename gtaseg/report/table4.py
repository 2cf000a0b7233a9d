"""Table 4: the [cls] attention of Table 2's chosen models on real photos (Jaccard of the attention masks, and
CorLoc of its box), next to the source model's, as mean ± std over seeds. It reads the scores that
:mod:`gtaseg.evaluation.model_scores` keeps in each run folder; scoring is ``gtaseg table4``'s job."""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gtaseg.errors import GtasegError
from gtaseg.evaluation.model_scores import Measure, MissingWeights, image_count, score_model, summary
from gtaseg.io import write_text
from gtaseg.report.labels import rate_header
from gtaseg.report.runs import collect
from gtaseg.report.selection import Cell, mean_std, protocol_for
from gtaseg.report.table4_paired import (PAIRED_FILE, attention_comparisons, paired_attention_csv,
                                        paired_attention_markdown)
from gtaseg.report.tables import build_tables
from gtaseg.rundir import MODEL
from gtaseg.sweep.naming import slug

SOURCE_ROW = "source"


@dataclass
class AttentionRow:
    """One row: a chosen cell's runs (by seed) or a source model, with each run's stored reports."""

    method: str  # the report's method, or SOURCE_ROW
    model: str  # the source's name (source rows), or the cell's setting
    dataset: str
    rate: float | None
    seeds: list[int]  # of the runs in ``reports``, in their order
    reports: list[dict[str, dict]]  # per run: measure name → stored report

    def values(self, measure: str, value: str) -> list[float]:
        return [float(v) for r in self.reports if measure in r and (v := summary(r[measure]).get(value)) is not None]


def cell_row(cell: Cell, scored: list[tuple[int, dict[str, dict]]]) -> AttentionRow:
    """``scored``: (seed, reports) of each of the cell's runs that has scores."""
    setting = ", ".join(([f"lr {cell.lr:g}"] if cell.lr is not None else []) +
                        ([f"λ {cell.lam:g}"] if cell.lam else []))
    return AttentionRow(cell.method, setting, cell.dataset, cell.rate, [s for s, _ in scored],
                        [r for _, r in scored])


def source_row(source: str, reports: dict[str, dict]) -> AttentionRow:
    return AttentionRow(SOURCE_ROW, source, "", None, [], [reports])


def columns(measures: Sequence[Measure]) -> list[tuple[str, str, str]]:
    """(measure, value, header) for every number a row shows."""
    out = []
    for m in measures:
        size = m.protocol.image_size
        if m.metric == "corloc":
            out.append((m.name, "corloc", f"CorLoc {size}"))
        else:
            out += [(m.name, "best", f"best head {size}"), (m.name, "merged", f"merged {size}")]
    return out


def _ratio_column(measures: Sequence[Measure]) -> tuple[str, str] | None:
    """The merged Jaccard of the first Jaccard measure: the one the product's target compares with the source."""
    return next(((m.name, "merged") for m in measures if m.metric == "jaccard"), None)


def _source_value(rows: Sequence[AttentionRow], measure: str, value: str) -> float | None:
    xs = [x for r in rows if r.method == SOURCE_ROW for x in r.values(measure, value)]
    return xs[0] if len(xs) == 1 else None  # with two sources, a ratio to "the" source means nothing


def caption(measures: Sequence[Measure], images: dict[str, int], full_split: int | None) -> str:
    """What each number is on, e.g. '321 of 1,449 val images of voc2012-subset'."""
    parts = []
    for m in measures:
        n = images.get(m.name)
        of = f"{n:,} of {full_split:,}" if full_split and m.metric == "jaccard" and n is not None else f"{n:,}"
        what = "Jaccard (%)" if m.metric == "jaccard" else "CorLoc (%)"
        parts.append(f"{what} at {m.protocol.image_size} px on {of} {m.split} images of {m.root.name}")
    return "; ".join(dict.fromkeys(parts))


def table4_markdown(rows: Sequence[AttentionRow], measures: Sequence[Measure]) -> str:
    cols = columns(measures)
    ratio = _ratio_column(measures)
    header = ["Data", "Rate", "Method", "Setting", "Seeds", *(h for *_, h in cols)]
    if ratio:
        header.append(f"merged / source ({measures[0].protocol.image_size})")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    source = _source_value(rows, *ratio) if ratio else None
    for r in rows:
        cells = [r.dataset or "–", rate_header(r.rate) if r.rate is not None else "–", r.method, r.model,
                 ",".join(map(str, r.seeds)) or "–"]
        for measure, value, _ in cols:
            cells.append(_mean_std(r.values(measure, value)))
        if ratio:
            xs = r.values(*ratio)
            cells.append(f"{mean_std(xs)[0] / source:.3f}" if xs and source else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_std(xs: list[float]) -> str:
    if not xs:
        return "–"
    m, s = mean_std(xs)
    return f"{m:.2f}" if len(xs) == 1 else f"{m:.2f} ± {s:.2f}"


def table4_csv(rows: Sequence[AttentionRow], measures: Sequence[Measure]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = columns(measures)
    w.writerow(["dataset", "sampling_rate", "method", "model", "n", "seeds",
                *(f"{measure}_{value}_{part}" for measure, value, _ in cols for part in ("mean", "std"))])
    for r in rows:
        stats = []
        for measure, value, _ in cols:
            xs = r.values(measure, value)
            stats += [f"{x:.4f}" for x in mean_std(xs)] if xs else ["", ""]
        w.writerow([r.dataset, "" if r.rate is None else f"{r.rate:g}", r.method, r.model, len(r.reports),
                    ";".join(map(str, r.seeds)), *stats])
    return buf.getvalue()


SOURCES_DIR = ".sources"  # under the runs dir: each source model's stored scores (collect skips dot folders)


@dataclass
class Table4:
    markdown: str
    rows: list[AttentionRow]
    left_out: list[str]  # runs of chosen cells without weights or stored scores


def make_table4(runs_dir: str | Path, measures: Sequence[Measure], out: str | Path | None = None, *,
                full_split: int | None = None, batch_size: int = 8, workers: int = 2, device: str = "auto",
                log=print) -> Table4:
    """Score the source models and every run of Table 2's chosen cells (scores already stored are reused) and
    write table4.md and table4.csv into ``out`` (default: ``runs_dir``)."""
    runs_dir, out = Path(runs_dir), Path(out or runs_dir)
    got = collect(runs_dir)
    if not got.runs:
        raise GtasegError(f"{runs_dir}: no finished runs (run folders with config.json and final.json)")
    protocol = protocol_for(got.runs)
    table = next((t for t in build_tables(got.runs, got.labels, protocol)[0] if t.slug == "table2"), None)
    if table is None:
        raise GtasegError(f"{runs_dir}: no Table 2 cells to score")
    cells = [c for _, c in table.filled()]
    prepared = [m.prepare() for m in measures]
    rows, left_out = [], []
    for source in dict.fromkeys(c.source for c in cells):
        reports = score_model(source, runs_dir / SOURCES_DIR / slug(source), prepared, batch_size=batch_size,
                              workers=workers, device=device, log=log)
        rows.append(source_row(source, reports))
    for cell in cells:
        scored = []
        for run in cell.runs:
            folder = runs_dir / run.name
            try:
                scored.append((run.seed, score_model(folder / MODEL, folder, prepared, batch_size=batch_size,
                                                     workers=workers, device=device, log=log)))
            except MissingWeights:
                left_out.append(run.name)
        rows.append(cell_row(cell, scored))
    images = {name: image_count(report) for name, report in rows[0].reports[0].items()}  # the first source's
    parts = [f"## Table 4: [cls] attention of the chosen models on real photos ({protocol.title or protocol.name})",
             "", table4_markdown(rows, measures), "",
             f"{caption(measures, images, full_split)}. Cells: mean ± sample std over the seeds of Table 2's chosen "
             f"setting (lr and λ chosen on {'validation' if protocol.selected_on == 'val' else 'test'} top-1, not "
             f"on attention). best head: per image and class the best head's mask; merged: the heads' mean map. "
             f"merged / source: the row's merged Jaccard over the source's."]
    if left_out:
        parts += ["", f"Left out (no {MODEL} and no stored scores): {', '.join(left_out)}."]
    comparisons = attention_comparisons(rows, columns(measures))
    if comparisons:
        parts += ["", "### GTA against each rival, paired by seed", "", paired_attention_markdown(comparisons)]
        write_text(out / PAIRED_FILE, paired_attention_csv(comparisons))
    markdown = "\n".join(parts) + "\n"
    write_text(out / "table4.md", markdown)
    write_text(out / "table4.csv", table4_csv(rows, measures))
    return Table4(markdown, rows, left_out)
