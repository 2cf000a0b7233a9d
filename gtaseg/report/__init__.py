"""Aggregate finished runs into the paper's tables (Markdown + CSV) and its Figure 4 (PNG).

Every run directory under RUNS_DIR with a ``final.json`` (and its ``config.json``) counts; unfinished ones are
counted and left out. Runs that differ only in seed are one cell: mean ± sample standard deviation of top-1 over
seeds. Where a method has a λ, a cell shows the λ among {0.1α, α, 10α} (α = the method's default) with the best
mean top-1, the selection the paper describes. With only a train and a test split that choice is made on test
accuracy, which flatters the regularised methods a little; the report's footnote says so.

- Table 2: methods × datasets × sampling rates (runs without TransMix; guide-block/guide-msa go to Table 3).
- Table 3: guidance target: block output (guide-block), MSA output (guide-msa), attention logits (gta), and the
  attention-transfer baselines' maps (attn-distill) and [cls] probabilities (cls-distill) when they were run.
- Table 5: each method that has TransMix runs, without and with TransMix.
- Table 6: per source model (config ``source``; SSL vs supervised), for every source found.
- Attention (Table 2's runs): for Table 2's cells, at the λ chosen there on top-1, the mean ± std of the
  Jaccard of the [cls] attention masks (heads merged, best head) and of the attention drift; written only when
  a run of those cells has a Jaccard (``final.json`` ``jaccard_merged``; null where the data has no masks).
- Drift during training: for Table 2's cells, the attention drift each run logged in ``metrics.jsonl``, mean ±
  std over seeds per step (drift.png, drift.csv); written only when those runs logged it.
- GTA against each rival (paired.csv): for Table 2's cells, GTA's test top-1 minus each other method's over the
  seeds both have, the seeds GTA is ahead on, and a paired bootstrap interval over test images and seeds from
  the runs' test_predictions.csv (n/a for runs without one); written when Table 2 has GTA and another method.
- Figure 4: top-1 against λ for GTA (or, without GTA runs, the other methods with a λ), baseline dashed.

A table is written only when the runs hold what it compares (Table 3 needs guide-block or guide-msa runs,
Table 5 TransMix runs, Table 6 two or more sources).

Modules: :mod:`~gtaseg.report.runs` (reading run folders), :mod:`~gtaseg.report.selection` (each cell's setting),
:mod:`~gtaseg.report.tables` (which tables and rows), :mod:`~gtaseg.report.render_markdown`,
:mod:`~gtaseg.report.render_csv`, :mod:`~gtaseg.report.drift`, :mod:`~gtaseg.report.figure4`,
:mod:`~gtaseg.report.followup` (seeds.yaml), :mod:`~gtaseg.report.rivals` (GTA against each rival) and
:mod:`~gtaseg.report.paired` (its bootstrap); here, :func:`make_report` puts them together.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from gtaseg.errors import GtasegError
from gtaseg.io import write_text
from gtaseg.report.drift import drift_csv, drift_curves, drift_png
from gtaseg.report.figure4 import curve_summary, figure4_csv, figure4_curves, figure4_png
from gtaseg.report.followup import seed_followup
from gtaseg.report.labels import dataset_order, method_order
from gtaseg.report.metrics import ATTENTION, TOP1, TOP5, TRAIN_CE, VAL_TOP1
from gtaseg.report.render_csv import CSV_COLUMNS, paired_csv, runs_csv, table_csv
from gtaseg.report.render_markdown import (attention_markdown, footnotes, has_attention, paired_markdown,
                                           settings_markdown, table_markdown)
from gtaseg.report.rivals import gta_versus_rivals
from gtaseg.report.runs import collect
from gtaseg.report.selection import PAPER, has_validation, mean_std, protocol_for
from gtaseg.report.tables import build_tables

__all__ = ["CSV_COLUMNS", "Report", "collect", "make_report", "mean_std"]


@dataclass
class Report:
    markdown: str
    files: list[Path]


def make_report(runs_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Report:
    """Write report.md, the tables' CSV files, the figures and runs.csv into ``out`` (default: ``runs_dir``)."""
    got = collect(runs_dir)
    if not got.runs:
        extra = f" ({len(got.unfinished)} unfinished)" if got.unfinished else ""
        raise GtasegError(f"{runs_dir}: no finished runs (run folders with config.json and final.json){extra}")
    out = Path(out or runs_dir)
    runs = got.runs
    # With a validation split the cells are chosen on it (the fair protocol), and the paper's protocol is
    # reported beside them; without one, as the paper chooses (on test).
    effect = has_validation(runs)
    tables, warnings = build_tables(runs, got.labels, protocol_for(runs))
    paper = next((t for t in build_tables(runs, got.labels, PAPER)[0] if t.slug == "table2"), None) if effect else None
    files = []
    parts = [f"# Results: {runs_dir}", "",
             f"{len(runs)} finished runs; datasets: {', '.join(dataset_order({r.dataset for r in runs}))}; "
             f"methods: {', '.join(method_order({r.method for r in runs}))}; "
             f"seeds: {', '.join(str(s) for s in sorted({r.seed for r in runs}))}."]
    if got.unfinished:
        parts.append(f"{len(got.unfinished)} unfinished run folder(s) left out (no final.json): "
                     f"{', '.join(got.unfinished[:5])}{' …' if len(got.unfinished) > 5 else ''}.")
    if got.unreadable:
        parts.append(f"{len(got.unreadable)} run(s) with an unreadable config.json/final.json left out: "
                     f"{', '.join(got.unreadable[:5])}.")
    for table in tables:
        parts += ["", f"## {table.title}", "", table_markdown(table)]
        metrics = (TOP1, TOP5, VAL_TOP1, TRAIN_CE) if effect else (TOP1, TOP5)
        text = table_csv(table, got.labels, metrics)
        if table.slug == "table2" and paper is not None:
            parts += ["", f"## {paper.title}", "", table_markdown(paper)]
            text += table_csv(paper, got.labels, metrics, header=False)
            parts += ["", "### The chosen settings", "", settings_markdown(table, paper), "",
                      "### Train cross-entropy at the end (fair protocol's settings)", "", table_markdown(table, TRAIN_CE)]
            files.append(_write(out / "seeds.yaml", seed_followup(runs_dir, table, paper)))
            parts += ["", "Settings chosen on seed 0 alone get their other seeds from `seeds.yaml` (a sweep config "
                          "of the chosen settings): `gtaseg sweep seeds.yaml`, then this report again."]
        files.append(_write(out / f"{table.slug}.csv", text))
        if table.slug == "table2" and (comparisons := gta_versus_rivals(table, Path(runs_dir))):
            parts += ["", "## GTA against each rival, paired by seed (Table 2's settings)", "",
                      paired_markdown(comparisons)]
            files.append(_write(out / "paired.csv", paired_csv(comparisons, got.labels)))
        if table.slug == "table2" and has_attention(table):
            parts += ["", "## Attention (Table 2's runs)", "", attention_markdown(table)]
            files.append(_write(out / "table2_attention.csv", table_csv(table, got.labels, ATTENTION)))
        if table.slug == "table2" and (drift := drift_curves(table, Path(runs_dir))):
            drift_png(drift, out / "drift.png")
            files += [out / "drift.png", _write(out / "drift.csv", drift_csv(drift))]
            parts += ["", "## Attention drift during training (Table 2's runs)", "", "![drift](drift.png)", "",
                      ("Drift Σ‖A − A₀‖² of the [cls] attention logits from the initial model on the run's probe "
                       "images, as logged in metrics.jsonl; per step in drift.csv.")]
    fig_runs, fig_note = runs, ""
    if effect:  # one lr per method: the one chosen on validation (a curve over pooled lrs would mean nothing)
        chosen = {(c.method, c.dataset, c.rate): c.lr for t in tables if t.slug == "table2" for _, c in t.filled()}
        fig_runs = [r for r in runs if r.lr is not None
                    and math.isclose(r.lr, chosen.get((r.method, r.dataset, r.rate)) or -1.0, rel_tol=1e-6)]
        fig_note = " Each method at the lr chosen for it on validation."
    curves, baselines = figure4_curves(fig_runs)
    parts.append("")
    if curves:
        png = out / "figure4.png"
        figure4_png(curves, baselines, png, got.labels)
        write_text(out / "figure4.csv", figure4_csv(curves, got.labels))
        files += [png, out / "figure4.csv"]
        parts.append("## Figure 4: accuracy against λ\n\n![Figure 4](figure4.png)\n\n"
                     f"Points (λ: n runs): {curve_summary(curves)}.{fig_note}")
    else:
        parts.append("## Figure 4\n\nNo runs of a method with a λ; no figure.")
    parts += ["", "---", ""] + [f"- {n}" for n in footnotes(tables, runs, effect)]
    if warnings:
        parts += ["", "Warnings:", ""] + [f"- {w}" for w in dict.fromkeys(warnings)]
    write_text(out / "runs.csv", runs_csv(runs, got.labels))
    files.append(out / "runs.csv")
    markdown = "\n".join(parts) + "\n"
    write_text(out / "report.md", markdown)
    files.insert(0, out / "report.md")
    return Report(markdown, files)


def _write(path: Path, text: str) -> Path:
    write_text(path, text)
    return path
