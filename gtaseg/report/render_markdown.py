"""The report's tables as Markdown: cells as mean ± std with the best in bold, the attention section, the chosen
settings, GTA against each rival, and the footnotes."""
from __future__ import annotations

import math

from gtaseg.methods import METHODS, lam_text
from gtaseg.report.labels import DATASET_TITLES, method_order, rate_header
from gtaseg.report.metrics import ATTENTION, TOP1, VAL_TOP1, Metric
from gtaseg.report.paired import LEVEL, RESAMPLES, SEED
from gtaseg.report.rivals import Comparison
from gtaseg.report.runs import Run
from gtaseg.report.selection import FAIR, PAPER, Cell, mean_std
from gtaseg.report.tables import Table


def fmt_cell(cell: Cell | None, max_n: int, metric: Metric = TOP1) -> str:
    xs = cell.values(metric.key) if cell else []
    if not xs:
        return "–"
    m, s = mean_std(xs)
    text = f"{m:{metric.spec}}" if len(xs) == 1 else f"{m:{metric.spec}} ± {s:{metric.spec}}"
    if len(xs) < max_n:
        text += f" (n={len(xs)})"
    if cell.fallback:
        text += " †"
    return text


def table_markdown(table: Table, metric: Metric = TOP1) -> str:
    header = ["Dataset", *table.row_header, *(rate_header(r) for r in table.rates)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * (1 + len(table.row_header))
                                                                + ["---:"] * len(table.rates)) + "|"]
    max_n = max((len(c.values(metric.key)) for _, c in table.filled()), default=1)
    for dataset in table.datasets:
        rows = [r for r in table.rows if any(table.cell(r, dataset, q) for q in table.rates)]
        best = {}
        for rate in table.rates:
            means = [m for r in rows if (c := table.cell(r, dataset, rate)) and (m := c.mean(metric)) is not None]
            best[rate] = max(means) if metric.bold_best and len(means) > 1 else None
        for i, row in enumerate(rows):
            texts = []
            for rate in table.rates:
                cell = table.cell(row, dataset, rate)
                text = fmt_cell(cell, max_n, metric)
                mean = cell.mean(metric) if cell else None
                if best[rate] is not None and mean is not None and math.isclose(mean, best[rate]):
                    text = f"**{text}**"
                texts.append(text)
            name = DATASET_TITLES.get(dataset, dataset) if i == 0 else ""
            lines.append("| " + " | ".join([name, *row.label, *texts]) + " |")
    return "\n".join(lines)


def has_attention(table: Table) -> bool:
    """Whether a run of the table's cells has a Jaccard or an attention mass: without masks there is nothing
    to show."""
    return any(c.values(key) for _, c in table.filled() for key in ("jaccard_merged", "mass_object"))


def attention_markdown(table: Table) -> str:
    """The attention section's body: one table per metric, laid out (and λ-chosen) as ``table``."""
    intro = ("Table 2's cells at the setting chosen there on top-1 (not re-chosen on the Jaccard): mean ± sample "
             "standard deviation over seeds of the Jaccard (%) between the last block's [cls] attention masks and "
             "the test split's object masks (heads merged; best head per image), at the training resolution, and of "
             "the drift Σ‖A − A₀‖² between the trained and the initial model's [cls] attention logits on a probe "
             "batch; where the data has them, the share of the last block's head-mean [cls] attention on the object "
             "and on the shortcut cue. –: no run with a value (no masks); (n=k): fewer runs with a value than "
             "elsewhere.")
    shown = [m for m in ATTENTION if m.key in ("jaccard_merged", "jaccard_best", "drift")
             or any(c.values(m.key) for _, c in table.filled())]
    return "\n\n".join([intro, *(f"### {m.title}\n\n{table_markdown(table, m)}" for m in shown)])


def settings_markdown(*tables: Table) -> str:
    """One row per chosen cell: its protocol, λ, lr and the validation top-1 it was chosen by."""
    lines = ["| protocol | rate | method | λ | lr | chosen on | val top-1 | test top-1 | seeds |",
             "|---|---:|---|---:|---:|---|---:|---:|---|"]
    for table in tables:
        for _, c in table.filled():
            val, test = (fmt_cell(c, 0, m) for m in (VAL_TOP1, TOP1))
            lines.append(f"| {c.protocol.name} | {rate_header(c.rate)} | {c.method} | {lam_text(c.method, c.lam)} "
                         f"| {'' if c.lr is None else f'{c.lr:g}'} | {c.protocol.selected_on} | {val} | {test} "
                         f"| {','.join(str(x) for x in c.seeds)} |")
    return "\n".join(lines)


def paired_markdown(comparisons: list[Comparison]) -> str:
    """The paired section's body: per dataset, rate and rival, GTA's mean lead in test top-1 over the paired
    seeds, its bootstrap interval, and on how many seeds GTA is ahead."""
    protocol = comparisons[0].gta.protocol
    intro = (f"GTA's test top-1 minus each rival's (points), both at the setting Table 2 chose "
             f"({protocol.name} protocol, chosen on {protocol.selected_on}). Runs are paired by seed number, and "
             f"only the seeds both methods have count. Interval: {100 * LEVEL:g} % percentile interval of the mean "
             f"difference from a paired bootstrap over test images and seeds ({RESAMPLES} resamples, bootstrap seed "
             f"{SEED}): each resample draws the seeds and the test images with replacement, the same images for "
             f"both methods and every seed. n/a: no interval, because a paired run has no test_predictions.csv "
             f"(it was written before runs saved one) or another reason given in paired.csv's ci_missing. GTA "
             f"ahead: the seeds on which GTA's test top-1 is higher (a tie is not). Per seed and with the "
             f"settings: paired.csv.")
    lines = [f"| Dataset | Rate | Rival | Seeds | GTA − rival | {100 * LEVEL:g} % interval | GTA ahead |",
             "|---|---:|---|---|---:|---|---:|"]
    for c in comparisons:
        mean = "–" if c.mean_difference is None else f"{c.mean_difference:+.2f}"
        interval = "n/a" if c.interval is None else f"[{c.interval[0]:+.2f}, {c.interval[1]:+.2f}]"
        seeds = ",".join(str(s) for s in c.seeds)
        lines.append(f"| {DATASET_TITLES.get(c.gta.dataset, c.gta.dataset)} | {rate_header(c.gta.rate)} | {c.label} "
                     f"| {seeds} | {mean} | {interval} | {c.seeds_ahead} of {len(c.seeds)} |")
    return "\n\n".join([intro, "\n".join(lines)])


def footnotes(tables: list[Table], runs: list[Run], effect: bool = False) -> list[str]:
    """What the cells mean and how their settings were chosen (``effect``: the fair and paper protocols)."""
    with_lam = method_order({r.method for r in runs if r.method in METHODS and METHODS[r.method].default_lam})
    without = method_order({r.method for r in runs if r.method not in with_lam})
    notes = ["Cells: mean ± sample standard deviation (n − 1) of top-1 accuracy (%) over seeds; "
             "**bold**: the best mean of its dataset and sampling rate; (n=k): fewer seeds than elsewhere."]
    if effect:
        notes.append(
            f"Settings: {FAIR.title} (selected_on = val in table2.csv), scored on the seeds every candidate setting "
            f"has (seed 0 when only the chosen settings have more); {PAPER.title} (selected_on = test), which "
            f"favours the methods with a λ. Every λ and lr that was run is a candidate; both are in the CSV files.")
    elif with_lam:
        alphas = ", ".join(f"{m} α = {METHODS[m].default_lam:g}" for m in with_lam)
        notes.append(
            f"λ: for each method, dataset and sampling rate the λ among {{0.1α, α, 10α}} ({alphas}) with the best "
            f"mean top-1 over seeds, as in the paper. The grid has no validation split, so this choice is made on "
            f"the test accuracy it reports, which favours the methods with a λ; the chosen λ is in the CSV files.")
    if any(c.fallback for t in tables for c in t.cells.values()):
        notes.append("†: no run at 0.1α, α or 10α; the best of the λ values that were run.")
    if without:
        notes.append(f"{', '.join(without)}: no λ, one setting.")
    return notes
