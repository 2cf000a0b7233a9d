"""A training state on disk, so that a stopped run continues exactly where it stopped.

``checkpoint.pt`` holds the ``state_dict()`` of every object it is handed (the model, the optimizer, the
scheduler, TransMix's generator, the bad-image policy, the batch stream, the metrics interval, ...), every global
RNG, and the run's few plain variables (step, config). Like DINO's ``restart_from_checkpoint``, this module knows
the file format and the objects it is given, not the training loop that owns them: each object saves and restores
itself.

It is written atomically (:func:`gtaseg.io.atomic_write`: temporary file, fsync, rename) with ``torch.save``
and read back with ``torch.load(weights_only=True)``, so it holds only tensors and plain containers of
primitives (numpy RNG states are converted to those), and a file planted in its place cannot run code when
it is read. Files of an earlier format are brought to this one by :func:`migrate`, the one place that knows
the earlier layouts.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gtaseg.errors import CheckpointError
from gtaseg.models.checkpoints import load_into, torch_load

FORMAT = "gtaseg-train-state"
# 2: each piece of run state under the name of the object that owns it (batches, log, bad_images, transmix).
VERSION = 2


# --------------------------------------------------------------------------------------------- RNG states

def rng_state() -> dict[str, Any]:
    """Every global RNG, as tensors and primitives (numpy's key array becomes an int64 tensor)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))


# ------------------------------------------------------------------------------------------- file format

def save_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """``torch.save`` through a temporary file, fsync and rename: the old checkpoint stays whole until the
    new one is complete."""
    from gtaseg.io import atomic_write

    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training state with ``weights_only=True``; anything else is a one-line :class:`CheckpointError`."""
    path = Path(path)
    state = torch_load(path, "not a readable training checkpoint")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a gtaseg training checkpoint")
    return migrate(state, path)


def migrate(state: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """``state`` in this version's layout, from any version this gtaseg has written."""
    version = state.get("version")
    if version == 1:
        state = _from_version_1(state)
    elif version != VERSION:
        raise CheckpointError(f"{path}: training checkpoint version {version} (this gtaseg reads 1 to {VERSION})")
    return state


def _from_version_1(state: dict[str, Any]) -> dict[str, Any]:
    """Version 1 kept the run state loose at the top level: ``draws`` (or, before skipped batches were counted,
    the stream ``position``: every rank drew step × accum micro-batches), ``log``, ``skipped`` and
    ``transmix_rng``; the oldest files also hold a ``scaler`` state, never used again."""
    state = dict(state)
    step, position = state["step"], state.pop("position", None)
    if "draws" in state:
        draws = list(state.pop("draws"))
    else:
        per_rank = step * state["config"]["batch_size"] * state["config"]["accum_steps"]
        draws = [step * state["config"]["accum_steps"]] * (position // per_rank if per_rank else 1)
    state["batches"] = {"drawn": draws}
    state["bad_images"] = {"skipped": dict(state.pop("skipped"))}
    transmix = state.pop("transmix_rng")
    if transmix is not None:
        state["transmix"] = {"rng": transmix}
    state.pop("scaler", None)
    state["version"] = VERSION
    return state


# ---------------------------------------------------------------------------------- modules <-> the file

def bare(module: torch.nn.Module) -> torch.nn.Module:
    """The module under DDP's ``.module`` and torch.compile's ``._orig_mod``."""
    while True:
        inner = getattr(module, "_orig_mod", None) or getattr(module, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return module
        module = inner


def save_checkpoint(path: str | os.PathLike, run_variables: dict[str, Any], write: bool = True,
                    **objects: Any) -> None:
    """Write ``run_variables`` (plain values and tensors), every global RNG and the ``state_dict()`` of each
    of ``objects`` (a model, an optimizer, ...) under its keyword. Under torchrun every rank calls it (an
    object's ``state_dict()`` may be a collective, as with DINO's ``save_on_master``) and only the rank with
    ``write`` writes the file."""
    state = {"format": FORMAT, "version": VERSION, **run_variables, "rng": rng_state()}
    for name, obj in objects.items():
        state[name] = bare(obj).state_dict() if isinstance(obj, torch.nn.Module) else obj.state_dict()
    if write:
        save_state(path, state)


def restore(state: dict[str, Any], path: str | os.PathLike, **objects: Any) -> None:
    """Load a state read by :func:`load_state` into each of ``objects`` under its keyword (a module's weights
    strictly, with a one-line error naming what does not fit; another object's :class:`CheckpointError` gets
    the file's name). The caller takes its run variables from ``state`` and restores the RNGs
    (:func:`set_rng_state`) once its own setup no longer draws from them."""
    for name, obj in objects.items():
        if name not in state:
            raise CheckpointError(f"{path}: holds no {name!r} state")
        if isinstance(obj, torch.nn.Module):
            load_into(bare(obj), state[name], path)
            continue
        try:
            obj.load_state_dict(state[name])
        except CheckpointError as e:  # an object's own one-line reason, e.g. another number of processes
            raise CheckpointError(f"{path}: {e}") from None
