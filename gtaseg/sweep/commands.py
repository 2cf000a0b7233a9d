"""``gtaseg sweep --print``: the ``gtaseg train`` shell line of each unfinished job, for a cluster scheduler."""
from __future__ import annotations

import os
import shlex

from gtaseg.config import train_argv
from gtaseg.sweep.jobs import Job
from gtaseg.sweep.locks import is_locked
from gtaseg.sweep.state import is_finished, resumable


def command_line(job: Job, runs_dir: str | os.PathLike) -> str:
    return shlex.join(["gtaseg", "train", *train_argv(job.config), "--out", str(job.dir(runs_dir))])


def pending_lines(jobs: list[Job], runs_dir: str | os.PathLike, resume: bool = False) -> tuple[list[str], dict[str, int]]:
    """Shell lines for the unfinished jobs and counts by state. A leftover directory (no final.json, not locked
    by a local sweep) would make ``gtaseg train`` refuse, so its line removes it first, or with ``resume``
    continues it (``gtaseg train --resume DIR``) when it is this job's."""
    lines, counts = [], {"finished": 0, "todo": 0, "leftover": 0, "running": 0}
    for job in jobs:
        out = job.dir(runs_dir)
        if is_finished(out):
            counts["finished"] += 1
            continue
        if out.exists() and is_locked(runs_dir, job):
            counts["running"] += 1
            continue
        line = command_line(job, runs_dir)
        if out.exists():
            counts["leftover"] += 1
            if resume and resumable(job, out):
                line = shlex.join(["gtaseg", "train", "--resume", str(out)])
            else:
                line = f"rm -rf {shlex.quote(str(out))} && {line}"
        counts["todo"] += 1
        lines.append(line)
    return lines, counts
