"""A sweep's jobs: each point of each grid on top of the base, with λ resolved and its run folder named."""
from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gtaseg.config import default
from gtaseg.errors import GtasegError
from gtaseg.methods import METHODS
from gtaseg.sweep.config import LAM_FACTOR, SweepConfig
from gtaseg.sweep.naming import round_lam, run_name


@dataclass(frozen=True)
class Job:
    name: str  # the run directory, relative to the runs dir, with '/' separators
    config: dict  # TrainConfig fields to set (the rest keep their defaults)
    point: dict  # the grid point it came from

    def dir(self, runs_dir: str | os.PathLike) -> Path:
        return Path(runs_dir, *self.name.split("/"))


def expand(config: SweepConfig) -> list[Job]:
    """Every job of the config, in grid order (later keys vary fastest), without duplicates."""
    jobs: dict[str, Job] = {}
    for grid in config.grids:
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            point = dict(zip(keys, values))
            job = make_job({**config.base, **point}, point, keys)
            seen = jobs.get(job.name)
            if seen is None:
                jobs[job.name] = job
            elif effective(seen.config) != effective(job.config):
                raise GtasegError(f"two different jobs would share the run name {job.name!r} "
                                  f"({seen.point} and {job.point}); make the grid values distinguishable")
    return list(jobs.values())


def make_job(cfg: dict, point: dict, grid_keys: list[str]) -> Job:
    cfg = dict(cfg)
    method = cfg.get("method", default("method"))
    if method not in METHODS:
        raise GtasegError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    alpha = METHODS[method].default_lam
    factor = cfg.pop(LAM_FACTOR, None)
    if alpha == 0:
        cfg.pop("lam", None)  # nothing to weigh: one run, whatever λ the grid lists
    elif factor is not None:
        cfg["lam"] = round_lam(float(factor) * alpha)
    elif cfg.get("lam") is None:
        cfg["lam"] = alpha  # spelled out, so a job is the same whether its λ was given or defaulted
    return Job(run_name(cfg, grid_keys), cfg, point)


def effective(cfg: dict) -> str:
    """A canonical spelling of a job's settings, leaving out those equal to TrainConfig's default."""
    return canon({k: v for k, v in cfg.items() if canon(v) != canon(default(k))})


def canon(obj: Any) -> str:
    """One spelling per value (keys sorted), so that settings compare equal however they were written."""
    return json.dumps(obj, sort_keys=True, default=str)
