"""Run folder names: how a job's settings spell its directory under the runs dir, and λ rounded for names and
grouping.

``<data>/<method>[_tm][_lam<λ>]_r<rate>_s<seed>[_<key>-<value>...]`` (``cub/gta_lam1_r0.15_s0``): the same job in
two configs sharing a runs dir gets the same folder, so it runs once.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gtaseg.config import default
from gtaseg.methods import METHODS
from gtaseg.sweep.config import LAM_FACTOR

# Fields that every run name spells out in a fixed place; any other grid key is appended as _key-value.
_NAMED = ("data", "classes", "method", "transmix", "lam", LAM_FACTOR, "sampling_rate", "seed")


def round_lam(x: float) -> float:
    """0.1 × 0.01 is 0.0010000000000000002 in floating point; names and tables want 0.001."""
    return float(f"{x:.12g}")


def run_name(cfg: dict, grid_keys: Sequence[str] = ()) -> str:
    """``<data>/<method>[_tm][_lam<λ>]_r<rate>_s<seed>[_<key>-<value>...]`` from a job's fields."""
    get = lambda k: cfg.get(k, default(k))  # noqa: E731
    method = get("method")
    parts = [method]
    if get("transmix"):
        parts.append("tm")
    alpha = METHODS[method].default_lam
    if alpha:
        lam = cfg.get("lam")
        parts.append(f"lam{fmt_num(alpha if lam is None else lam)}")
    parts.append(f"r{fmt_num(get('sampling_rate'))}")
    parts.append(f"s{get('seed')}")
    for key in grid_keys:
        if key not in _NAMED:
            parts.append(f"{key}-{slug(cfg.get(key))}")
    return f"{slug(data_label(str(get('data')), get('classes')))}/{'_'.join(parts)}"


def fmt_num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def path_name(text: str) -> str:
    """The last component of a value that is a path (``data/cub`` → ``cub``); any other value as it is."""
    return Path(text).name if ("/" in text or os.sep in text) else text


def data_label(data: str, classes: int = 0) -> str:
    """How runs and tables name a run's data: ``stanford-cars``, or ``stanford-cars-first50`` under --classes 50."""
    return path_name(data) + (f"-first{classes}" if classes else "")


def slug(value: Any) -> str:
    """A short, file-name-safe spelling of a grid value (a checkpoint path becomes its stem)."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        text = fmt_num(value)
    elif isinstance(value, (list, tuple)):
        text = "-".join(slug(v) for v in value)
    elif isinstance(value, dict):
        text = ",".join(f"{k}={slug(v)}" for k, v in value.items())
    elif value is None:
        text = "none"
    else:
        text = path_name(str(value))
        for suffix in (".safetensors", ".pth", ".pt", ".bin", ".ckpt"):
            text = text.removesuffix(suffix)
    return re.sub(r"[^A-Za-z0-9.,=+-]+", "-", text).strip("-") or "x"
