"""A run's training state on disk, so that a stopped run continues exactly where it stopped.

``checkpoint.pt`` in the run directory holds the model, optimizer, scheduler, (AMP) scaler, every RNG the
run draws from, the position in the seeded data stream, the step and the partial sums of the current
metrics interval. It is written atomically (:func:`gtaseg.io.atomic_write`: temporary file, fsync, rename)
with ``torch.save`` and read back with ``torch.load(weights_only=True)``, so it holds only tensors and plain
containers of primitives (numpy RNG states are converted to those), and a file planted in its place cannot
run code when it is read.

The data order and every sample's augmentation are pure functions of (seed, stream position) (see
:class:`gtaseg.data.sampler.SeededStream`), so the position is all that the data side needs: a resumed run
ends with the same weights and metrics as one that was never stopped.
"""
from __future__ import annotations

import json
import pickle
import random
import signal
import threading
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from gtaseg.errors import CheckpointError, GtasegError
from gtaseg.io import atomic_write, write_text

if TYPE_CHECKING:
    from gtaseg.train import Trainer

CHECKPOINT = "checkpoint.pt"
FORMAT = "gtaseg-train-state"
VERSION = 1
# Options that may differ between the start of a run and its resumption: they do not change the result.
RUNTIME_OPTIONS = ("device", "workers", "ckpt_every")
# Options added after runs were written, with the value a config (or checkpoint) without them implies: runs from
# before --lam-reduction summed their term, and none logged to TensorBoard.
ADDED_OPTIONS = {"lam_reduction": "sum", "tensorboard": False}
# The key of config.json that holds what λ means in the other reduction: derived, not an option, so a resumed
# run's config ignores it.
CONFIG_NOTE = "lam_conversion"


class Interrupted(GtasegError):
    """SIGINT/SIGTERM stopped the run after a step, with a checkpoint written; exit code 128 + signal."""

    def __init__(self, signum: int, step: int, out: Path):
        self.signum, self.step = signum, step
        self.exit_code = 128 + signum
        super().__init__(f"{signal.Signals(signum).name} received: stopped after step {step}, checkpoint written "
                         f"to {out / CHECKPOINT}; continue with: gtaseg train --resume {out}")


class NonFiniteLoss(GtasegError):
    """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


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

def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` through a temporary file, fsync and rename: the old checkpoint stays whole until the
    new one is complete."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a training state with ``weights_only=True``; anything else is a one-line :class:`CheckpointError`."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: refused to load, not a plain tensor checkpoint ({first})") from None
    except Exception as e:  # other bytes make the unpickler fail in many ways (IndexError, KeyError, ...)
        raise CheckpointError(f"{path}: not a readable training checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a gtaseg training checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: training checkpoint version {state.get('version')} (this gtaseg reads {VERSION})")
    return state


# ------------------------------------------------------------------------------------ trainer <-> state

def _bare(module: torch.nn.Module) -> torch.nn.Module:
    """The module under DDP's ``.module`` and torch.compile's ``._orig_mod``."""
    while True:
        inner = getattr(module, "_orig_mod", None) or getattr(module, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return module
        module = inner


def trainer_state(trainer: Trainer) -> dict[str, Any]:
    cfg = trainer.cfg
    scaler = getattr(trainer, "scaler", None)
    world_size = trainer.dist.world_size if hasattr(trainer, "dist") else 1
    return {
        "format": FORMAT,
        "version": VERSION,
        "step": trainer.step,
        # Where the next optimizer step's first sample sits in the seeded stream.
        "position": trainer.step * cfg.batch_size * cfg.accum_steps * world_size,
        "config": asdict(cfg),
        "model": _bare(trainer.model).state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "transmix_rng": trainer.transmix.rng.bit_generator.state if trainer.transmix is not None else None,
        "log": {"sums": {k: torch.as_tensor(v).detach().cpu() for k, v in trainer.log_sums.items()},
                "count": trainer.log_count},
        "skipped": dict(trainer.skipped),
    }


def restore_trainer(trainer: Trainer, state: dict[str, Any], path: str | Path) -> None:
    """Load ``state`` into a freshly built trainer of the same config. The global RNGs are handed to the
    trainer to restore once its data loader exists (creating one draws from torch's RNG)."""
    theirs = {**ADDED_OPTIONS, **{k: v for k, v in state["config"].items() if k not in RUNTIME_OPTIONS}}
    ours = {k: v for k, v in _json_roundtrip(asdict(trainer.cfg)).items() if k not in RUNTIME_OPTIONS}
    theirs = _json_roundtrip(theirs)
    changed = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if changed:
        raise CheckpointError(f"{path}: written by a run with other settings ({', '.join(changed)}) than its "
                              f"config.json")
    world_size = trainer.dist.world_size if hasattr(trainer, "dist") else 1
    cfg = trainer.cfg
    ranks = state["position"] // max(state["step"] * cfg.batch_size * cfg.accum_steps, 1)
    if state["step"] and ranks != world_size:
        raise CheckpointError(f"{path}: written by a run of {ranks} processes; resume it with as many "
                              f"(torchrun --nproc_per_node {ranks}), not {world_size}")
    from gtaseg.models.checkpoints import load_into

    load_into(_bare(trainer.model), state["model"], path)
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    scaler = getattr(trainer, "scaler", None)
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    if trainer.transmix is not None:
        trainer.transmix.rng.bit_generator.state = state["transmix_rng"]
    trainer.step = int(state["step"])
    trainer.log_sums = {k: v.to(trainer.device) for k, v in state["log"]["sums"].items()}
    trainer.log_count = int(state["log"]["count"])
    trainer.skipped = dict(state["skipped"])
    trainer.checkpoint_step = trainer.step
    trainer.pending_rng = state["rng"]


def _json_roundtrip(obj: Any) -> Any:
    """Tuples become lists, as in config.json."""
    return json.loads(json.dumps(obj))


# ---------------------------------------------------------------------------------------------- resuming

def prepare_resume(trainer: Trainer, out: str | Path, write: bool = True) -> None:
    """Bring a freshly built trainer to the state of the run in ``out``: check that the training files are
    the ones the run started with, load its checkpoint (none: start again from step 0, which gives the same
    result) and (``write``: on rank 0) drop the metrics rows written after that checkpoint."""
    out = Path(out)
    files = out / "train_files.txt"
    listed = "".join(f"{p}\t{trainer.classes[y]}\n" for p, y in trainer.train_split.samples)
    if files.is_file() and files.read_text() != listed:
        raise GtasegError(f"{files}: the training images changed since the run started; resume needs the same "
                          f"files (or start a new run)")
    ckpt = out / CHECKPOINT
    if ckpt.exists():
        restore_trainer(trainer, load_state(ckpt), ckpt)
    if write:
        truncate_metrics(out / "metrics.jsonl", trainer.step)


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the rows of ``metrics.jsonl`` up to ``step``; a half-written last line goes too."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if not isinstance(row, dict) or row.get("step", step + 1) > step:
            break
        keep.append(line + "\n")
    write_text(path, "".join(keep))


# ------------------------------------------------------------------------------- signals, finite losses

class StopSignals:
    """While active, SIGINT and SIGTERM only set :attr:`signum`; the training loop checks it after each step,
    writes a checkpoint and stops. A second SIGINT raises KeyboardInterrupt at once. Outside the main thread
    (where handlers cannot be installed) this does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn`` of the training loader: SIGINT/SIGTERM sent to the whole process group (Ctrl-C in a
    terminal, a scheduler's kill) must stop the run through the main process, which writes the checkpoint;
    a worker that died of them would abort the run instead. Workers still exit when the main process does."""
    for s in StopSignals.SIGNALS:
        signal.signal(s, signal.SIG_IGN)


class FiniteGuard:
    """Remembers, on the device, the first step whose loss was not finite, so that checking costs no host
    sync per step; reading :meth:`bad_step` is one sync."""

    def __init__(self) -> None:
        self.first_bad: Tensor | None = None

    def update(self, loss: Tensor, step: int) -> None:
        if self.first_bad is None:
            self.first_bad = torch.zeros((), dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss.detach()).all()
        self.first_bad = torch.where((self.first_bad == 0) & bad, torch.full_like(self.first_bad, step),
                                     self.first_bad)

    def bad_step(self) -> int:
        return 0 if self.first_bad is None else int(self.first_bad)


def non_finite_loss(out: Path, step: int, checkpoint_step: int | None) -> NonFiniteLoss:
    kept = (f"the last good checkpoint (step {checkpoint_step}) is kept in {out / CHECKPOINT}"
            if checkpoint_step is not None else "no checkpoint was written before it")
    return NonFiniteLoss(f"{out}: non-finite loss at step {step}, run stopped; {kept} (a lower --lr usually helps)")
