"""``gtaseg sweep``'s local executor: the unfinished jobs one after another in this process."""
from __future__ import annotations

import gc
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gtaseg.config import RESUME_OPTIONS, TrainConfig
from gtaseg.errors import GtasegError
from gtaseg.rundir import RunDir
from gtaseg.sweep.jobs import Job
from gtaseg.sweep.locks import job_lock
from gtaseg.sweep.state import differences, is_finished, prepare_run_dir


@dataclass
class SweepResult:
    total: int = 0
    skipped: list[str] = field(default_factory=list)  # already finished
    busy: list[str] = field(default_factory=list)  # locked by another sweep process
    ran: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def _default_train(cfg: dict, out: Path, resume: bool = False) -> dict:
    """Train one job in this process (or continue it from its checkpoint); what final.json holds."""
    from gtaseg.train import train  # torch and the models: only when a job runs

    if resume:
        config = RunDir(out).resumed_config(**{k: cfg[k] for k in RESUME_OPTIONS if k in cfg})
        return train(config, out, resume=True)
    return train(TrainConfig(**cfg), out)


def run_sweep(jobs: list[Job], runs_dir: str | os.PathLike, *, keep_going: bool = False, resume: bool = False,
              train_fn: Callable[..., dict] | None = None,
              echo: Callable[[str], None] = print) -> SweepResult:
    """Run the unfinished jobs one after another in this process.

    A job whose directory holds final.json is skipped; any other existing directory is cleared first, or with
    ``resume`` continued from its checkpoint when its config.json is this job's. A failing job stops the sweep
    unless ``keep_going`` (its directory stays, and is redone next time). SIGINT/SIGTERM stop the running job
    after its current step with a checkpoint written (:class:`gtaseg.stopping.Interrupted`) and end the sweep.
    """
    from gtaseg.stopping import Interrupted

    train_fn = train_fn or _default_train
    runs_dir = Path(runs_dir)
    result = SweepResult(total=len(jobs))
    todo = []
    for job in jobs:
        if is_finished(job.dir(runs_dir)):
            result.skipped.append(job.name)
            diff = differences(job, job.dir(runs_dir))
            if diff:
                echo(f"warning: finished run {job.name} was made with other settings ({'; '.join(diff)}); "
                     f"kept — delete its folder to redo it")
        else:
            todo.append(job)
    echo(f"sweep: {len(jobs)} jobs, {len(result.skipped)} already finished, {len(todo)} to run, in {runs_dir}")
    for i, job in enumerate(todo, 1):
        out = job.dir(runs_dir)
        with job_lock(runs_dir, job) as mine:
            if not mine:
                echo(f"[{i}/{len(todo)}] {job.name}: running in another process, skipped")
                result.busy.append(job.name)
                continue
            if is_finished(out):  # another process finished it since the scan
                result.skipped.append(job.name)
                continue
            state = prepare_run_dir(job, out, resume)
            if state:
                echo(f"[{i}/{len(todo)}] {job.name}: {state} an unfinished run")
            again = state == "resuming"
            echo(f"[{i}/{len(todo)}] {job.name}")
            try:
                final = train_fn(dict(job.config), out, resume=True) if again else train_fn(dict(job.config), out)
            except (KeyboardInterrupt, Interrupted):  # a stop signal, not a failure of this job
                raise
            except Exception as e:
                msg = str(e) if isinstance(e, GtasegError) else "".join(traceback.format_exception_only(type(e), e)).strip()
                result.failed.append((job.name, msg))
                if not keep_going:
                    raise GtasegError(f"run {job.name} failed: {msg} (its folder is redone on the next sweep)") from e
                if not isinstance(e, GtasegError):
                    traceback.print_exc(file=sys.stderr)
                echo(f"[{i}/{len(todo)}] {job.name}: FAILED: {msg}")
                continue
            finally:
                _free_memory()
            result.ran.append(job.name)
            echo(f"[{i}/{len(todo)}] {job.name}: top1 {final.get('top1', float('nan')):.2f}")
    return result


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass
