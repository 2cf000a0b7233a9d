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
- Figure 4: top-1 against λ for GTA (or, without GTA runs, the other methods with a λ), baseline dashed.

A table is written only when the runs hold what it compares (Table 3 needs guide-block or guide-msa runs,
Table 5 TransMix runs, Table 6 two or more sources).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from gtaseg.config import ADDED_OPTIONS
from gtaseg.errors import GtasegError
from gtaseg.io import atomic_write, write_text
from gtaseg.methods import METHODS
from gtaseg.rundir import CONFIG_NOTE

DATASET_ORDER = ("cub", "cars", "aircraft", "dogs", "pet")
DATASET_TITLES = {"cub": "CUB-200-2011", "cars": "Stanford Cars", "aircraft": "FGVC-Aircraft",
                  "dogs": "Stanford Dogs", "pet": "Oxford-IIIT Pet", "synthetic": "synthetic"}
GUIDE_TARGETS = {"guide-block": "block output", "guide-msa": "MSA output",
                 # the attention-transfer baselines (Li et al. 2024), beside GTA's logits
                 "attn-distill": "attention maps, all queries (CE)", "cls-distill": "[cls] attention probabilities (CE)",
                 "gta": "attention logits (GTA)"}
LAM_FACTORS = (0.1, 1.0, 10.0)
# Settings that do not change what a run computes, ignored when checking that pooled runs agree.
_NOISE = {"seed", "device", "workers", "log_every", "data_root", "ckpt_every", "compile", "on_bad_image", "lam", "tensorboard",
          "method", "transmix", "data", "sampling_rate", "source", "init"}


@dataclass
class Run:
    name: str
    config: dict
    final: dict

    @property
    def method(self) -> str:
        return self.config.get("method", self.final.get("method"))

    @property
    def lam(self) -> float:
        return float(self.final.get("lam", self.config.get("lam") or 0.0))

    @property
    def dataset(self) -> str:
        data = str(self.config.get("data", self.final.get("data", "?")))
        return Path(data).name if ("/" in data or os.sep in data) else data

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


@dataclass(frozen=True)
class Metric:
    """A number each run's ``final.json`` holds, as a table shows it."""

    key: str  # in final.json
    title: str
    spec: str = ".2f"  # format of the mean and the std
    bold_best: bool = True  # drift has no better end, so nothing is bold there
    optional: bool = False  # runs may lack it (no masks → no Jaccard): the CSV counts the runs that have it


TOP1 = Metric("top1", "top-1 accuracy (%)")
TOP5 = Metric("top5", "top-5 accuracy (%)")
VAL_TOP1 = Metric("val_top1", "validation top-1 accuracy (%)", optional=True)
# The last metrics.jsonl row's cross-entropy (mean over its log interval): whether a run reached the
# overfitting regime.
TRAIN_CE = Metric("train_ce", "train cross-entropy, last logged interval", spec=".3f", bold_best=False, optional=True)
ATTENTION = (Metric("jaccard_merged", "Jaccard, heads merged (%)", optional=True),
             Metric("jaccard_best", "Jaccard, best head (%)", optional=True),
             Metric("drift", "[cls] attention drift Σ‖A − A₀‖²", spec="#.3g", bold_best=False, optional=True),
             Metric("drift_per_entry", "[cls] attention drift per entry (mean over blocks, heads, patches)",
                    spec="#.3g", bold_best=False, optional=True),
             Metric("mass_object", "[cls] attention mass on the object (%)", optional=True),
             Metric("mass_cue", "[cls] attention mass on the shortcut cue (%)", bold_best=False, optional=True))


@dataclass(frozen=True)
class Protocol:
    """How a cell's hyperparameters are chosen.

    ``selected_on``: ``val`` (the validation split's top-1, ``final.json`` val_top1) or ``test`` (the top-1 the
    table reports, as the paper does). ``lr``: a fixed learning rate (only runs at it count), or None to search
    every lr that was run. ``lam_factors``: λ restricted to these multiples of the method's α, or None for every λ
    that was run. Settings are compared on the seeds that all of them have, so that adding seeds to the chosen
    setting afterwards never changes the choice.
    """

    name: str
    selected_on: str = "test"
    lr: float | None = None
    lam_factors: tuple[float, ...] | None = LAM_FACTORS
    title: str = ""


# The paper tables' choice (λ among 0.1α, α, 10α on test top-1), and the two protocols of the effect benchmark.
PAPER_TABLES = Protocol("paper-tables")
FAIR = Protocol("fair", "val", None, None, "λ and lr chosen per method on validation top-1")
PAPER_RECIPE_LR = 1e-4
PAPER = Protocol("paper", "test", PAPER_RECIPE_LR, None,
                 f"the paper's protocol: one recipe for every method (lr {PAPER_RECIPE_LR:g}), λ chosen on test top-1")


@dataclass
class Cell:
    """One method/condition at one dataset and rate, at the λ (and lr) chosen for it."""

    method: str
    source: str
    transmix: bool
    dataset: str
    rate: float
    lam: float
    runs: list[Run]  # the chosen λ's runs, by seed
    lams_tried: list[float] = field(default_factory=list)
    fallback: bool = False  # no run at 0.1α, α or 10α: the best of the λ values that were run
    lr: float | None = None
    lrs_tried: list[float] = field(default_factory=list)
    protocol: Protocol = PAPER_TABLES

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    def values(self, key: str) -> list[float]:
        """``final.json[key]`` of the cell's runs, leaving out the runs where it is absent or null."""
        return [float(v) for r in self.runs if (v := r.final.get(key)) is not None]

    def mean(self, metric: Metric) -> float | None:
        xs = self.values(metric.key)
        return mean_std(xs)[0] if xs else None


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1); the deviation of a single value is 0."""
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, s


# ------------------------------------------------------------------------------------------ reading


@dataclass
class Collected:
    runs: list[Run]
    unfinished: list[str]
    unreadable: list[str]
    labels: dict[str, dict[str, str]]


def collect(runs_dir: str | os.PathLike) -> Collected:
    root = Path(runs_dir)
    if not root.is_dir():
        raise GtasegError(f"{root}: no such folder")
    runs, unfinished, unreadable = [], [], []
    for config_path in sorted(root.rglob("config.json")):
        run_dir = config_path.parent
        rel = run_dir.relative_to(root).as_posix()
        if any(part.startswith(".") for part in run_dir.relative_to(root).parts):
            continue
        if not (run_dir / "final.json").is_file():
            unfinished.append(rel)
            continue
        try:
            config = json.loads(config_path.read_text())
            final = json.loads((run_dir / "final.json").read_text())
            float(final["top1"])
        except (OSError, ValueError, KeyError, TypeError):
            unreadable.append(rel)
            continue
        final.setdefault("train_ce", _last_logged(run_dir / "metrics.jsonl", "ce"))
        runs.append(Run(rel, config, final))
    labels: dict[str, dict[str, str]] = defaultdict(dict)
    for record in sorted(root.rglob("sweep.*.json")):
        try:
            for key, mapping in (json.loads(record.read_text()).get("labels") or {}).items():
                labels[key].update({str(a): str(b) for a, b in mapping.items()})
        except (OSError, ValueError, AttributeError):
            continue
    return Collected(runs, unfinished, unreadable, dict(labels))


def _last_logged(path: Path, key: str) -> float | None:
    try:
        lines = path.read_text().splitlines()
        return float(json.loads(lines[-1])[key]) if lines else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------------------- aggregation


def _key_lam(x: float) -> float:
    return float(f"{x:.9g}")


def has_validation(runs: list[Run]) -> bool:
    """Whether the runs report a validation top-1, so that hyperparameters can be chosen on it."""
    return bool(runs) and all(r.final.get("val_top1") is not None for r in runs)


def best_cells(runs: list[Run], protocol: Protocol = PAPER_TABLES) -> tuple[dict[tuple, Cell], list[str]]:
    """(method, source, transmix, dataset, rate) → the cell at the setting (λ, lr) ``protocol`` chooses; plus
    warnings."""
    groups: dict[tuple, dict[tuple, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if protocol.lr is not None and (run.lr is None or not math.isclose(run.lr, protocol.lr, rel_tol=1e-6)):
            continue
        lr = None if protocol.lr is None and protocol.selected_on == "test" else run.lr  # paper tables pool lrs
        groups[(run.method, run.source, run.transmix, run.dataset, run.rate)][(_key_lam(run.lam), lr)].append(run)
    metric = "val_top1" if protocol.selected_on == "val" else "top1"
    cells, warnings = {}, []
    for key, by_setting in groups.items():
        method = key[0]
        alpha = METHODS[method].default_lam if method in METHODS else 0.0
        settings = sorted(by_setting, key=lambda s: (s[0], s[1] or 0.0))
        candidates = settings
        fallback = False
        if alpha and protocol.lam_factors:
            wanted = [_key_lam(f * alpha) for f in protocol.lam_factors]
            candidates = [s for s in settings if any(math.isclose(s[0], w, rel_tol=1e-6) for w in wanted)]
            if not candidates:
                candidates, fallback = settings, True
        common = set.intersection(*({r.seed for r in by_setting[s]} for s in candidates))

        def score(setting: tuple) -> tuple[float, float]:
            scored = [r for r in by_setting[setting] if r.seed in common] or by_setting[setting]
            lam = setting[0]
            closeness = -abs(math.log(lam / alpha)) if alpha and lam > 0 else 0.0
            return (mean_std([float(r.final[metric]) for r in scored])[0], closeness)  # ties: the λ nearest α

        setting = max(candidates, key=score)
        chosen = sorted(by_setting[setting], key=lambda r: r.seed)
        warnings += _pooling_warnings(chosen)
        cells[key] = Cell(method, key[1], key[2], key[3], key[4], setting[0], chosen,
                          lams_tried=sorted({s[0] for s in candidates}), fallback=fallback, lr=setting[1],
                          lrs_tried=sorted({s[1] for s in candidates if s[1] is not None}), protocol=protocol)
    return cells, warnings


def _pooling_warnings(runs: list[Run]) -> list[str]:
    out = []
    seeds = [r.seed for r in runs]
    if len(set(seeds)) < len(seeds):
        out.append(f"{runs[0].dataset} {runs[0].method} rate {runs[0].rate:g}: several runs share a seed "
                   f"({', '.join(r.name for r in runs)}); all are averaged")
    keys = sorted({k for r in runs for k in r.config} - _NOISE)
    differing = [k for k in keys if len({json.dumps(r.config.get(k), sort_keys=True) for r in runs}) > 1]
    if differing:
        out.append(f"{runs[0].dataset} {runs[0].method} rate {runs[0].rate:g}: averaged runs differ in "
                   f"{', '.join(differing)} ({', '.join(r.name for r in runs)})")
    return out


def _order(values, order=()) -> list:
    values = set(values)
    return [v for v in order if v in values] + sorted(values - set(order), key=str)


def method_order(methods) -> list[str]:
    return _order(methods, tuple(METHODS))


def dataset_order(datasets) -> list[str]:
    return _order(datasets, DATASET_ORDER)


def source_label(source: str, labels: dict[str, dict[str, str]]) -> str:
    for key in ("source", "init"):
        if source in labels.get(key, {}):
            return labels[key][source]
    name = Path(source).name if ("/" in source or os.sep in source) else source
    for suffix in (".safetensors", ".pth", ".pt", ".bin"):
        name = name.removesuffix(suffix)
    return name


# ------------------------------------------------------------------------------------------- tables


@dataclass
class Row:
    label: list[str]  # the row's leading columns (after the dataset)
    key: tuple  # (method, source, transmix)


@dataclass
class Table:
    slug: str  # file name stem: table2, ...
    title: str
    row_header: list[str]
    rows: list[Row]  # per dataset the same rows; a row without any cell at a dataset is left out there
    cells: dict[tuple, Cell]
    datasets: list[str]
    rates: list[float]
    notes: list[str] = field(default_factory=list)

    def cell(self, row: Row, dataset: str, rate: float) -> Cell | None:
        return self.cells.get((*row.key, dataset, rate))

    def filled(self) -> list[tuple[Row, Cell]]:
        """The table's cells that have runs, dataset by dataset, then row by row, then rate by rate."""
        return [(row, c) for d in self.datasets for row in self.rows for q in self.rates if (c := self.cell(row, d, q))]


def build_tables(runs: list[Run], labels: dict[str, dict[str, str]], protocol: Protocol = PAPER_TABLES
                 ) -> tuple[list[Table], list[str]]:
    cells, warnings = best_cells(runs, protocol)
    datasets = dataset_order({c.dataset for c in cells.values()})
    rates = sorted({c.rate for c in cells.values()})
    sources = _order({c.source for c in cells.values()},
                     [s for s, _ in sorted(_count(c.source for c in cells.values()).items(), key=lambda kv: -kv[1])])
    multi_source = len(sources) > 1
    methods = method_order({c.method for c in cells.values()})
    tables = []

    def src(s: str) -> str:
        return source_label(s, labels)

    def rows_for(ms, tms=(False,), label=lambda m, s, tm: [m], among=sources) -> list[Row]:
        return [Row(label(m, s, tm), (m, s, tm)) for s in among for m in ms for tm in tms
                if any(k[:3] == (m, s, tm) for k in cells)]

    main = [m for m in methods if m not in ("guide-block", "guide-msa")]
    if main:
        rows = rows_for(main, label=lambda m, s, tm: [m + (f" [{src(s)}]" if multi_source else "")])
        if rows:
            title = "Table 2: top-1 accuracy (%) by method, dataset and sampling rate"
            tables.append(Table("table2", title + (f"; {protocol.title}" if protocol.title else ""),
                                ["Method"], rows, cells, datasets, rates))
    if {"guide-block", "guide-msa"} & set(methods):
        # Only the sources that have block/MSA guidance runs: the comparison is within a source.
        among = [s for s in sources if any(k[0] in ("guide-block", "guide-msa") and k[1] == s for k in cells)]
        rows = rows_for([m for m in GUIDE_TARGETS if m in methods], among=among,
                        label=lambda m, s, tm: [GUIDE_TARGETS[m] + (f" [{src(s)}]" if len(among) > 1 else "")])
        tables.append(Table("table3", "Table 3: guidance target (what is pulled towards the source)",
                            ["Guidance target"], rows, cells, datasets, rates))
    with_tm = [m for m in methods if any(k[0] == m and k[2] for k in cells)]
    if with_tm:
        among = [s for s in sources if any(k[1] == s and k[2] for k in cells)]
        rows = [r for r in rows_for(with_tm, tms=(False, True), among=among,
                                    label=lambda m, s, tm: [m + (f" [{src(s)}]" if len(among) > 1 else ""),
                                                            "✓" if tm else "✗"])
                if any(k[:3] == (r.key[0], r.key[1], True) for k in cells)]
        tables.append(Table("table5", "Table 5: with and without TransMix", ["Method", "TransMix"], rows, cells,
                            datasets, rates))
    if multi_source:
        rows = [Row([src(s), m], (m, s, False)) for s in sources for m in methods
                if any(k[:3] == (m, s, False) for k in cells)]
        tables.append(Table("table6", "Table 6: source model (self-supervised vs supervised pre-training)",
                            ["Source", "Method"], rows, cells, datasets, rates))
    return tables, warnings


def _count(items) -> dict:
    out: dict = defaultdict(int)
    for item in items:
        out[item] += 1
    return out


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


def rate_header(rate: float) -> str:
    return f"{rate * 100:g}%"


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
        reductions = {r.lam_reduction for r in c.runs} if alpha and METHODS[c.method].guide else set()
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


RUNS_COLUMNS = ["run", "dataset", "method", "source", "transmix", "sampling_rate", "lam", "seed", "steps",
                "train_images", "top1", "top5", "drift", "jaccard_best", "jaccard_merged"]


def runs_csv(runs: list[Run], labels) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(RUNS_COLUMNS)
    for r in sorted(runs, key=lambda r: r.name):
        w.writerow([r.name, r.dataset, r.method, source_label(r.source, labels), int(r.transmix), f"{r.rate:g}",
                    f"{r.lam:g}", r.seed, r.final.get("steps", ""), r.final.get("train_images", ""),
                    f"{float(r.final['top1']):.4f}", f"{float(r.final.get('top5', math.nan)):.4f}",
                    *(_num(r.final.get(k)) for k in ("drift", "jaccard_best", "jaccard_merged"))])
    return buf.getvalue()


def _num(x) -> str:
    return "" if x is None else f"{float(x):.4f}"


# ---------------------------------------------------------------------------- drift during training


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
            try:
                lines = (runs_dir / run.name / "metrics.jsonl").read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                try:
                    record = json.loads(line)
                    by_step[int(record["step"])].append(float(record["drift"]))
                except (ValueError, KeyError, TypeError):
                    continue  # a row without drift, or one cut short by a kill
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


def drift_png(curves: list[DriftCurve], path: str | os.PathLike) -> None:
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
    fig.suptitle("[cls] attention drift from the initial model during training (Table 2's runs; bars: ± std "
                 "over seeds)", fontsize=9)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


# ------------------------------------------------------------------------------------------ figure 4


@dataclass
class Curve:
    dataset: str
    method: str
    source: str
    rate: float
    lams: list[float]
    means: list[float]
    stds: list[float]
    ns: list[int]


def figure4_curves(runs: list[Run]) -> tuple[list[Curve], dict[tuple, float]]:
    """Top-1 against λ per (dataset, method, source, rate), without TransMix; and the baseline's means."""
    plain = [r for r in runs if not r.transmix]
    methods = ["gta"] if any(r.method == "gta" for r in plain) else \
        method_order({r.method for r in plain if r.method in METHODS and METHODS[r.method].default_lam})
    groups: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    base: dict[tuple, list[float]] = defaultdict(list)
    for r in plain:
        if r.method in methods and r.lam > 0:
            groups[(r.dataset, r.method, r.source, r.rate)][_key_lam(r.lam)].append(float(r.final["top1"]))
        elif r.method == "baseline":
            base[(r.dataset, r.source, r.rate)].append(float(r.final["top1"]))
    curves = []
    for (dataset, method, source, rate), by_lam in groups.items():
        lams = sorted(by_lam)
        stats = [mean_std(by_lam[lam]) for lam in lams]
        curves.append(Curve(dataset, method, source, rate, lams, [m for m, _ in stats], [s for _, s in stats],
                            [len(by_lam[lam]) for lam in lams]))
    order = dataset_order({c.dataset for c in curves})
    curves.sort(key=lambda c: (order.index(c.dataset), c.method, c.source, c.rate))
    return curves, {k: mean_std(v)[0] for k, v in base.items()}


def figure4_png(curves: list[Curve], baselines: dict[tuple, float], path: str | os.PathLike,
                labels: dict[str, dict[str, str]]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    datasets = dataset_order({c.dataset for c in curves})
    rates = sorted({c.rate for c in curves})
    multi = len({(c.method, c.source) for c in curves}) > 1
    ncols = min(len(datasets), 3)
    nrows = math.ceil(len(datasets) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    colors = {rate: f"C{i}" for i, rate in enumerate(rates)}
    markers, lines = "osD^v<>p*h", ("-", ":", "-.", (0, (5, 1)))
    styles = {ms: (markers[i % len(markers)], lines[i % len(lines)])
              for i, ms in enumerate(sorted({(c.method, c.source) for c in curves}))}
    legend: dict[str, tuple] = {}  # label → (sort key, handle): one legend for all panels
    for i, dataset in enumerate(datasets):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for c in (c for c in curves if c.dataset == dataset):
            name = rate_header(c.rate) + (f" {c.method} [{source_label(c.source, labels)}]" if multi else "")
            marker, line = styles[(c.method, c.source)]
            handle = ax.errorbar(c.lams, c.means, yerr=c.stds, color=colors[c.rate], marker=marker, linestyle=line,
                                 capsize=3, label=name)
            legend.setdefault(name, ((c.method, c.source, c.rate), handle))
            b = baselines.get((dataset, c.source, c.rate))
            if b is not None:
                ax.axhline(b, color=colors[c.rate], linestyle="--", linewidth=1, alpha=0.7)
        ax.set_xscale("log")
        lams = sorted({lam for c in curves if c.dataset == dataset for lam in c.lams})
        ax.set_xticks(lams, [f"{lam:g}" for lam in lams])
        ax.minorticks_off()
        ax.set_title(DATASET_TITLES.get(dataset, dataset))
        ax.set_xlabel("λ")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(True, alpha=0.3)
    order = sorted(legend, key=lambda n: legend[n][0])
    fig.legend([legend[n][1] for n in order], order, loc="outside lower center", fontsize=8,
               ncol=min(len(order), 4), title="sampling rate", title_fontsize=8)
    method_names = ", ".join(sorted({c.method for c in curves}))
    fig.suptitle(f"Figure 4: top-1 accuracy against λ ({method_names})\n"
                 "dashed: baseline at the same rate; bars: ± std over seeds", fontsize=9)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def figure4_csv(curves: list[Curve], labels) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["dataset", "method", "source", "sampling_rate", "lam", "n", "top1_mean", "top1_std"])
    for c in curves:
        for lam, m, s, n in zip(c.lams, c.means, c.stds, c.ns):
            w.writerow([c.dataset, c.method, source_label(c.source, labels), f"{c.rate:g}", f"{lam:g}", n,
                        f"{m:.4f}", f"{s:.4f}"])
    return buf.getvalue()


# ------------------------------------------------------------------------------------------- report


@dataclass
class Report:
    markdown: str
    files: list[Path]


def footnotes(tables: list[Table], runs: list[Run], effect: bool = False) -> list[str]:
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


def make_report(runs_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Report:
    got = collect(runs_dir)
    if not got.runs:
        extra = f" ({len(got.unfinished)} unfinished)" if got.unfinished else ""
        raise GtasegError(f"{runs_dir}: no finished runs (run folders with config.json and final.json){extra}")
    out = Path(out or runs_dir)
    runs = got.runs
    # With a validation split the cells are chosen on it (the fair protocol), and the paper's protocol is
    # reported beside them; without one, as the paper chooses (on test).
    effect = has_validation(runs)
    tables, warnings = build_tables(runs, got.labels, FAIR if effect else PAPER_TABLES)
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
                     f"Points (λ: n runs): {_curve_summary(curves)}.{fig_note}")
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


def settings_markdown(*tables: Table) -> str:
    """One row per chosen cell: its protocol, λ, lr and the validation top-1 it was chosen by."""
    lines = ["| protocol | rate | method | λ | lr | chosen on | val top-1 | test top-1 | seeds |",
             "|---|---:|---|---:|---:|---|---:|---:|---|"]
    for table in tables:
        for _, c in table.filled():
            has_lam = c.method in METHODS and METHODS[c.method].default_lam
            val, test = (fmt_cell(c, 0, m) for m in (VAL_TOP1, TOP1))
            lines.append(f"| {c.protocol.name} | {rate_header(c.rate)} | {c.method} | {f'{c.lam:g}' if has_lam else '–'} "
                         f"| {'' if c.lr is None else f'{c.lr:g}'} | {c.protocol.selected_on} | {val} | {test} "
                         f"| {','.join(str(x) for x in c.seeds)} |")
    return "\n".join(lines)


FOLLOWUP_SEEDS = (1, 2)
# Fields of a run's config.json that do not belong in a sweep's base: derived, or runtime-only.
_NOT_BASE = (CONFIG_NOTE, "device", "workers", "ckpt_every", "log_every", "data_root", "compile")


def seed_followup(runs_dir: str | os.PathLike, *tables: Table, seeds: tuple[int, ...] = FOLLOWUP_SEEDS) -> str:
    """A sweep config (YAML) that runs ``seeds`` at every setting the tables chose: hyperparameters are tuned
    on one seed, and only the chosen settings are repeated. Its base is the chosen runs' shared config, and
    its grid keys are the tuning sweep's, so its run folders sit beside the tuning runs under the same names."""
    import yaml

    chosen = [c for t in tables for _, c in t.filled()]
    configs = [{k: v for k, v in r.config.items() if k not in _NOT_BASE} for c in chosen for r in c.runs[:1]]
    varying = {"seed", "method", "lam", "lr", "sampling_rate"}
    base = {k: v for k, v in configs[0].items() if k not in varying and all(c.get(k) == v for c in configs)}
    grid = []
    for config in configs:
        point = {"seed": list(seeds), "sampling_rate": [config["sampling_rate"]], "lr": [config["lr"]],
                 "method": [config["method"]]}
        if METHODS[config["method"]].default_lam:
            point["lam"] = [config["lam"]]
        if point not in grid:
            grid.append(point)
    return yaml.safe_dump({"name": "seeds", "description": f"seeds {list(seeds)} of the settings chosen by gtaseg report",
                           "runs_dir": str(runs_dir), "base": base, "grid": grid}, sort_keys=False)


def _write(path: Path, text: str) -> Path:
    write_text(path, text)
    return path


def _curve_summary(curves: list[Curve]) -> str:
    lams = sorted({lam for c in curves for lam in c.lams})
    return ", ".join(f"λ={lam:g}: {sum(n for c in curves for l2, n in zip(c.lams, c.ns) if l2 == lam)}" for lam in lams)
