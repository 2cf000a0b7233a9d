"""Why a training run stops early: SIGINT/SIGTERM (finish the step, write a checkpoint, exit 128 + signal), or a
loss that is no longer finite (stop, keep the last good checkpoint)."""
from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gtaseg.errors import GtasegError
from gtaseg.rundir import CHECKPOINT


class Interrupted(GtasegError):
    """SIGINT/SIGTERM stopped the run after a step, with a checkpoint written; exit code 128 + signal."""

    def __init__(self, signum: int, step: int, out: Path):
        self.signum, self.step = signum, step
        self.exit_code = 128 + signum
        super().__init__(f"{signal.Signals(signum).name} received: stopped after step {step}, checkpoint written "
                         f"to {Path(out) / CHECKPOINT}; continue with: gtaseg train --resume {out}")


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


class NonFiniteLoss(GtasegError):
    """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""

    def __init__(self, out: Path, step: int, checkpoint_step: int | None):
        kept = (f"the last good checkpoint (step {checkpoint_step}) is kept in {Path(out) / CHECKPOINT}"
                if checkpoint_step is not None else "no checkpoint was written before it")
        super().__init__(f"{out}: non-finite loss at step {step}, run stopped; {kept} (a lower --lr usually helps)")


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
