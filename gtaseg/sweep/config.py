"""A sweep config file: read it (YAML or JSON), check it, and hold it as a :class:`SweepConfig`."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gtaseg.config import FIELDS
from gtaseg.errors import GtasegError

TOP_KEYS = {"name", "description", "runs_dir", "base", "grid", "labels"}
# A grid key that is not a training option: λ as a multiple of the method's default α.
LAM_FACTOR = "lam_factor"


@dataclass
class SweepConfig:
    name: str
    base: dict
    grids: list[dict]
    runs_dir: str | None = None
    labels: dict = field(default_factory=dict)
    description: str | None = None
    path: str | None = None

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "config": self.path, "base": self.base,
                "grid": self.grids if len(self.grids) > 1 else self.grids[0], "labels": self.labels}


def read_config_file(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise GtasegError(f"{path}: no such sweep config")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise GtasegError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or write it as JSON") from None
            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
    except GtasegError:
        raise
    except Exception as e:  # yaml.YAMLError / json.JSONDecodeError, with line numbers in the message
        raise GtasegError(f"{path}: not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'}: "
                          f"{' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise GtasegError(f"{path}: expected a mapping with 'base' and 'grid' at the top")
    return raw


def load_config(path: str | os.PathLike) -> SweepConfig:
    raw = read_config_file(path)
    return parse_config(raw, name=Path(path).stem, where=str(path))


def parse_config(raw: dict, name: str = "sweep", where: str = "sweep config") -> SweepConfig:
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise GtasegError(f"{where}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
                          f"expected {', '.join(sorted(TOP_KEYS))}")
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise GtasegError(f"{where}: 'base' must be a mapping of TrainConfig fields")
    base = {k: _coerce(k, v, f"{where}: base.{k}") for k, v in base.items()}
    for key in base:
        if key not in FIELDS:
            raise GtasegError(f"{where}: base.{key} is not a training option; known: {', '.join(FIELDS)}")
    grids = raw.get("grid")
    if grids is None:
        grids = [{}]
    grids = grids if isinstance(grids, list) else [grids]
    parsed = []
    for i, grid in enumerate(grids):
        at = f"{where}: grid" + (f"[{i}]" if len(grids) > 1 else "")
        if not isinstance(grid, dict):
            raise GtasegError(f"{at} must be a mapping of field → list of values")
        out = {}
        for key, values in grid.items():
            if key not in FIELDS and key != LAM_FACTOR:
                raise GtasegError(f"{at}.{key} is not a training option (nor {LAM_FACTOR}); known: {', '.join(FIELDS)}")
            if not isinstance(values, list) or not values:
                raise GtasegError(f"{at}.{key} must be a non-empty list of values")
            out[key] = [_coerce(key, v, f"{at}.{key}") for v in values]
        if "lam" in out and LAM_FACTOR in out:
            raise GtasegError(f"{at}: give lam or {LAM_FACTOR}, not both")
        parsed.append(out)
    labels = raw.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, dict) for v in labels.values()):
        raise GtasegError(f"{where}: 'labels' must map a field to {{value: display name}}")
    runs_dir = raw.get("runs_dir")
    return SweepConfig(name=str(raw.get("name") or name), base=base, grids=parsed,
                       runs_dir=None if runs_dir is None else str(runs_dir),
                       labels={k: {str(a): str(b) for a, b in v.items()} for k, v in labels.items()},
                       description=raw.get("description"), path=None if where == "sweep config" else where)


def _coerce(key: str, value: Any, where: str) -> Any:
    """YAML 1.1 reads ``1e-4`` as a string; turn numeric strings of numeric fields into numbers."""
    # The annotation is a string (gtaseg.config postpones annotations), e.g. "float | None".
    kind = "float" if key == LAM_FACTOR else str(FIELDS[key].type) if key in FIELDS else ""
    if "float" in kind and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # λ 1 and λ 1.0 are one job
    if isinstance(value, str) and ("float" in kind or "int" in kind):
        try:
            return int(value) if "int" in kind and "float" not in kind else float(value)
        except ValueError:
            raise GtasegError(f"{where}: {value!r} is not a number") from None
    return value
