"""Choosing each cell's setting: runs grouped by method, source, TransMix, dataset and rate, and the λ (and lr)
a :class:`SelectionProtocol` picks among them; mean ± std over seeds."""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field

from gtaseg.config import RESULT_NEUTRAL
from gtaseg.methods import METHODS
from gtaseg.report.metrics import Metric
from gtaseg.report.runs import Run
from gtaseg.sweep.naming import round_lam

LAM_FACTORS = (0.1, 1.0, 10.0)
# Keys of config.json left out when checking that the runs a cell averages agree: the result-neutral settings,
# the keys that tell cells and seeds apart (λ only up to rounding), and on_bad_image, which changes nothing unless
# an image is unreadable (final.json counts those).
POOLING_IGNORED = {*RESULT_NEUTRAL, "seed", "on_bad_image", "lam", "method", "transmix", "data", "sampling_rate",
                   "source", "init"}


@dataclass(frozen=True)
class SelectionProtocol:
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
PAPER_TABLES = SelectionProtocol("paper-tables")
FAIR = SelectionProtocol("fair", "val", None, None, "λ and lr chosen per method on validation top-1")
PAPER_RECIPE_LR = 1e-4
PAPER = SelectionProtocol("paper", "test", PAPER_RECIPE_LR, None,
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
    protocol: SelectionProtocol = PAPER_TABLES

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


def has_validation(runs: list[Run]) -> bool:
    """Whether the runs report a validation top-1, so that hyperparameters can be chosen on it."""
    return bool(runs) and all(r.final.get("val_top1") is not None for r in runs)


def protocol_for(runs: list[Run]) -> SelectionProtocol:
    """How the report chooses its cells: on validation where every run has a validation top-1 (the fair
    protocol), else as the paper does (on test)."""
    return FAIR if has_validation(runs) else PAPER_TABLES


def best_cells(runs: list[Run], protocol: SelectionProtocol = PAPER_TABLES) -> tuple[dict[tuple, Cell], list[str]]:
    """(method, source, transmix, dataset, rate) → the cell at the setting (λ, lr) ``protocol`` chooses; plus
    warnings."""
    groups: dict[tuple, dict[tuple, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if protocol.lr is not None and (run.lr is None or not math.isclose(run.lr, protocol.lr, rel_tol=1e-6)):
            continue
        lr = None if protocol.lr is None and protocol.selected_on == "test" else run.lr  # paper tables pool lrs
        groups[(run.method, run.source, run.transmix, run.dataset, run.rate)][(round_lam(run.lam), lr)].append(run)
    metric = "val_top1" if protocol.selected_on == "val" else "top1"
    cells = {}
    warnings = [f"{', '.join(r.repeats)} repeat{'s' if len(r.repeats) == 1 else ''} the setting and seed of {r.name}: "
                f"counted once" for r in runs if r.repeats]
    for key, by_setting in groups.items():
        method = key[0]
        alpha = METHODS[method].default_lam if method in METHODS else 0.0
        settings = sorted(by_setting, key=lambda s: (s[0], s[1] or 0.0))
        candidates = settings
        fallback = False
        if alpha and protocol.lam_factors:
            wanted = [round_lam(f * alpha) for f in protocol.lam_factors]
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
    keys = sorted({k for r in runs for k in r.config} - POOLING_IGNORED)
    differing = [k for k in keys if len({json.dumps(r.config.get(k), sort_keys=True) for r in runs}) > 1]
    if differing:
        out.append(f"{runs[0].dataset} {runs[0].method} rate {runs[0].rate:g}: averaged runs differ in "
                   f"{', '.join(differing)} ({', '.join(r.name for r in runs)})")
    return out
