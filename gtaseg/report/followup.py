"""seeds.yaml: a sweep config that repeats the settings a report chose with more seeds (hyperparameters are
tuned on one seed, and only the chosen settings are repeated)."""
from __future__ import annotations

import os

from gtaseg.config import RESULT_NEUTRAL
from gtaseg.methods import METHODS
from gtaseg.report.tables import Table
from gtaseg.rundir import CONFIG_NOTE

FOLLOWUP_SEEDS = (1, 2)
# Keys of a run's config.json that do not belong in a sweep's base: the derived note, and the settings that do
# not change the result.
_NOT_BASE = (CONFIG_NOTE, *RESULT_NEUTRAL)


def seed_followup(runs_dir: str | os.PathLike, *tables: Table, seeds: tuple[int, ...] = FOLLOWUP_SEEDS) -> str:
    """A sweep config (YAML) that runs ``seeds`` at every setting the tables chose. Its base is the chosen runs'
    shared config, and its grid keys are the tuning sweep's, so its run folders sit beside the tuning runs under
    the same names."""
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
