"""The paper's tables as data: which rows (method, source, TransMix) each table has, over which datasets and
rates, with the cells a protocol chose. Rendering is :mod:`~gtaseg.report.render_markdown` and
:mod:`~gtaseg.report.render_csv`."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from gtaseg.report.labels import dataset_order, method_order, order, source_label
from gtaseg.report.runs import Run
from gtaseg.report.selection import PAPER_TABLES, Cell, SelectionProtocol, best_cells

GUIDE_TARGETS = {"guide-block": "block output", "guide-msa": "MSA output",
                 # the attention-transfer baselines (Li et al. 2024), beside GTA's logits
                 "attn-distill": "attention maps, all queries (CE)", "cls-distill": "[cls] attention probabilities (CE)",
                 "gta": "attention logits (GTA)"}


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


def build_tables(runs: list[Run], labels: dict[str, dict[str, str]], protocol: SelectionProtocol = PAPER_TABLES
                 ) -> tuple[list[Table], list[str]]:
    """Every table the runs hold what it compares for (Table 3: guide-block or guide-msa runs; Table 5:
    TransMix runs; Table 6: two or more sources); plus the warnings of choosing the cells."""
    cells, warnings = best_cells(runs, protocol)
    datasets = dataset_order({c.dataset for c in cells.values()})
    rates = sorted({c.rate for c in cells.values()})
    sources = order({c.source for c in cells.values()},
                    [s for s, _ in sorted(Counter(c.source for c in cells.values()).items(), key=lambda kv: -kv[1])])
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
