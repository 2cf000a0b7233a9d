"""``gtaseg train --tensorboard``: every ``metrics.jsonl`` row also as TensorBoard scalars.

The events go to ``<run>/tensorboard/``, so ``tensorboard --logdir runs/paper`` shows every run of a sweep, each
under its run name. TensorBoard is an optional extra (``pip install 'gtaseg[tensorboard]'``), imported only
when the option is used.
"""
from __future__ import annotations

import math
from pathlib import Path

from gtaseg.errors import GtasegError

SUBDIR = "tensorboard"


def require() -> None:
    """A one-line error now, before a run starts, when the extra is not installed."""
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it; its own import error is long)
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise GtasegError("--tensorboard needs the tensorboard package: pip install 'gtaseg[tensorboard]' "
                          "(or pip install tensorboard)") from None


class MetricsWriter:
    """Writes metrics rows (``{"step": n, name: number, ...}``) as scalars at their step."""

    def __init__(self, run_dir: str | Path):
        require()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / SUBDIR))

    def write(self, row: dict) -> None:
        step = int(row["step"])
        for key, value in row.items():
            # Numbers only: a row may also carry text or nulls (e.g. a metric the data cannot give).
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a row is rare (every --log-every steps); flushing keeps TensorBoard live

    def close(self) -> None:
        self.writer.close()
