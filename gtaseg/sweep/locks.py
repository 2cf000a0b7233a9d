"""Job locks: two sweep processes on one runs dir never take the same job."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gtaseg.sweep.jobs import Job

LOCKS = ".locks"  # under the runs dir; ``gtaseg report`` skips folders whose name starts with a dot


@contextmanager
def job_lock(runs_dir: str | os.PathLike, job: Job) -> Iterator[bool]:
    """Yield True while this process holds the job's lock, False when another process does.

    The lock is an flock on a file under RUNS_DIR/.locks: the kernel drops it when its holder dies, so a killed
    sweep never leaves a stale lock. Where flock is missing (Windows) every job counts as free.
    """
    try:
        import fcntl
    except ImportError:
        yield True
        return
    path = Path(runs_dir) / LOCKS / (job.name.replace("/", "__") + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def is_locked(runs_dir: str | os.PathLike, job: Job) -> bool:
    with job_lock(runs_dir, job) as mine:
        return not mine
