"""What a runs dir holds for a sweep: finished runs, the remains of interrupted ones, and the sweep record.

A run is finished iff its ``final.json`` exists (train writes it last, atomically); a folder without one is the
remains of an interrupted run, cleared and redone, or continued from its checkpoint when it is this very job.
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from gtaseg.config import RESULT_NEUTRAL
from gtaseg.errors import GtasegError
from gtaseg.io import write_json
from gtaseg.rundir import RunDir
from gtaseg.sweep.config import SweepConfig
from gtaseg.sweep.jobs import Job, canon
from gtaseg.sweep.naming import slug

# RUNS_DIR/sweep.<name>.json: each sweep's config as run, where ``gtaseg report`` finds its labels.
SWEEP_RECORD = "sweep.{name}.json"


def is_finished(run_dir: str | os.PathLike) -> bool:
    return RunDir(run_dir).is_finished()


def differences(job: Job, run_dir: str | os.PathLike) -> list[str]:
    """Fields the job sets to something other than what the run's config.json recorded (none when it is
    unreadable; settings that do not change the result are not compared)."""
    try:
        saved = RunDir(run_dir).raw_config()
    except (OSError, GtasegError):
        return []
    out = []
    for key, want in job.config.items():
        if key in RESULT_NEUTRAL or want is None or key not in saved:
            continue
        have = saved[key]
        same = (math.isclose(float(want), float(have), rel_tol=1e-9)
                if isinstance(want, (int, float)) and isinstance(have, (int, float)) and not isinstance(want, bool)
                else canon(want) == canon(have) or (isinstance(have, list) and canon(list(want)) == canon(have)))
        if not same:
            out.append(f"{key}: run has {have!r}, config says {want!r}")
    return out


def resumable(job: Job, run_dir: str | os.PathLike) -> bool:
    """An interrupted run of this very job: config.json is there, readable, and agrees with the job."""
    try:
        RunDir(run_dir).raw_config()
    except (OSError, GtasegError):
        return False
    return not differences(job, run_dir)


def prepare_run_dir(job: Job, out: Path, resume: bool) -> str | None:
    """Ready ``out`` for ``job`` (whose lock the caller holds): an unfinished run there is continued
    ("resuming", with ``resume`` when its config.json is the job's) or removed ("clearing"); None when there
    was nothing."""
    if not out.exists():
        return None
    if resume and resumable(job, out):
        return "resuming"
    shutil.rmtree(out)
    return "clearing"


def write_sweep_record(config: SweepConfig, runs_dir: str | os.PathLike) -> Path:
    """RUNS_DIR/sweep.<name>.json: the config as run, where ``gtaseg report`` finds its labels."""
    path = Path(runs_dir) / SWEEP_RECORD.format(name=slug(config.name))
    write_json(path, config.to_json())
    return path
