"""Figure 4: top-1 against λ for GTA (or, without GTA runs, the other methods with a λ), the baseline dashed
(figure4.png, figure4.csv)."""
from __future__ import annotations

import csv
import io
import math
import os
from collections import defaultdict
from dataclasses import dataclass

from gtaseg.io import atomic_write
from gtaseg.methods import METHODS
from gtaseg.report.labels import DATASET_TITLES, dataset_order, method_order, rate_header, source_label
from gtaseg.report.runs import Run
from gtaseg.report.selection import mean_std
from gtaseg.sweep.naming import round_lam


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
            groups[(r.dataset, r.method, r.source, r.rate)][round_lam(r.lam)].append(float(r.final["top1"]))
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


def figure4_csv(curves: list[Curve], labels: dict[str, dict[str, str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["dataset", "method", "source", "sampling_rate", "lam", "n", "top1_mean", "top1_std"])
    for c in curves:
        for lam, m, s, n in zip(c.lams, c.means, c.stds, c.ns):
            w.writerow([c.dataset, c.method, source_label(c.source, labels), f"{c.rate:g}", f"{lam:g}", n,
                        f"{m:.4f}", f"{s:.4f}"])
    return buf.getvalue()


def curve_summary(curves: list[Curve]) -> str:
    """How many runs each λ's points average, over all curves."""
    lams = sorted({lam for c in curves for lam in c.lams})
    return ", ".join(f"λ={lam:g}: {sum(n for c in curves for l2, n in zip(c.lams, c.ns) if l2 == lam)}" for lam in lams)
