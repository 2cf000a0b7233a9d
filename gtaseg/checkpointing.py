"""A training state on disk, so that a stopped run continues exactly where it stopped.

``checkpoint.pt`` holds the state dicts of the modules it is handed (model, optimizer, scheduler, TransMix's
generator, ...), every global RNG, and the run's own variables (step, stream position, partial metrics sums,
skipped files, config). Like DINO's ``restart_from_checkpoint``, this module knows the file format and the
objects it is given, not the training loop that owns them.

It is written atomically (:func:`gtaseg.io.atomic_write`: temporary file, fsync, rename) with ``torch.save``
and read back with ``torch.load(weights_only=True)``, so it holds only tensors and plain containers of
primitives (numpy RNG states are converted to those), and a file planted in its place cannot run code when
it is read.
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
VERSION = 1


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
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: training checkpoint version {state.get('version')} (this gtaseg reads {VERSION})")
    return state


# ---------------------------------------------------------------------------------- modules <-> the file

def bare(module: torch.nn.Module) -> torch.nn.Module:
    """The module under DDP's ``.module`` and torch.compile's ``._orig_mod``."""
    while True:
        inner = getattr(module, "_orig_mod", None) or getattr(module, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return module
        module = inner


def save_checkpoint(path: str | os.PathLike, run_variables: dict[str, Any], **objects: Any) -> None:
    """Write ``run_variables`` (plain values and tensors), every global RNG and the ``state_dict()`` of each
    of ``objects`` (a model, an optimizer, ...) under its keyword."""
    state = {"format": FORMAT, "version": VERSION, **run_variables, "rng": rng_state()}
    for name, obj in objects.items():
        state[name] = bare(obj).state_dict() if isinstance(obj, torch.nn.Module) else obj.state_dict()
    save_state(path, state)


def restore(state: dict[str, Any], path: str | os.PathLike, **objects: Any) -> None:
    """Load a state read by :func:`load_state` into each of ``objects`` under its keyword (a module's weights
    strictly, with a one-line error naming what does not fit). The caller takes its run variables from
    ``state`` and restores the RNGs (:func:`set_rng_state`) once its own setup no longer draws from them."""
    for name, obj in objects.items():
        if name not in state:
            raise CheckpointError(f"{path}: holds no {name!r} state")
        if isinstance(obj, torch.nn.Module):
            load_into(bare(obj), state[name], path)
        else:
            obj.load_state_dict(state[name])
