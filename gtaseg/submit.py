"""Sweeps on a cluster through submitit (the launcher of DINO, dinov2 and attention-transfer).

``gtaseg sweep CONFIG --executor submitit`` submits every unfinished job of the sweep as one SLURM job array.
Each array task trains one run into its folder under the runs dir, so what counts as finished is what
``gtaseg sweep`` already uses: the run folder holds ``final.json``. Calling it again submits only the jobs that
are neither finished nor still queued or running: the failed and the unfinished ones.

A task with one GPU (or none) trains in the task's process. A task with several GPUs runs ``gtaseg train``
under torchrun (``python -m torch.distributed.run --standalone --nproc_per_node G -m gtaseg.cli train ...``),
one process per GPU, which is how ``gtaseg train`` trains on several GPUs anywhere.

What was submitted is recorded in ``RUNS_DIR/.submitit/jobs.json`` (run name → scheduler job id); submitit
keeps each task's script, logs and pickled result in ``RUNS_DIR/.submitit/<job id>/``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from gtaseg.config import train_argv
from gtaseg.errors import GtasegError
from gtaseg.io import write_json
from gtaseg.rundir import RunDir
from gtaseg.sweep.jobs import Job
from gtaseg.sweep.locks import is_locked, job_lock
from gtaseg.sweep.state import is_finished, prepare_run_dir

SUBMITIT_DIR = ".submitit"
RECORD = "jobs.json"
# Scheduler states of a job that is still to run or running (SLURM's, and submitit's local executor's):
# such a job is not submitted again.
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED",
                 "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "READY"}
CLUSTERS = ("slurm", "local", "debug")


@dataclass(frozen=True)
class ClusterOptions:
    """Resources of each array task; SLURM's names where submitit has them."""

    cluster: str = "slurm"  # submitit's executor: slurm, or local/debug to try the path on this machine
    partition: str | None = None
    gpus_per_job: int = 1
    cpus_per_gpu: int = 10
    mem_gb_per_gpu: int | None = None
    time_min: int = 720
    array_parallelism: int = 64  # array tasks running at once
    extra: dict = field(default_factory=dict)  # more submitit slurm parameters: account, qos, constraint, ...

    def executor_parameters(self, name: str) -> dict:
        """``AutoExecutor.update_parameters`` arguments. One task per job: torchrun starts the per-GPU processes."""
        gpus = self.gpus_per_job
        params = dict(name=name, timeout_min=self.time_min, nodes=1, tasks_per_node=1,
                      cpus_per_task=self.cpus_per_gpu * max(gpus, 1), slurm_array_parallelism=self.array_parallelism)
        if gpus:
            params["gpus_per_node"] = gpus
        if self.mem_gb_per_gpu:
            params["mem_gb"] = self.mem_gb_per_gpu * max(gpus, 1)
        if self.partition:
            params["slurm_partition"] = self.partition
        params.update({f"slurm_{k}": v for k, v in self.extra.items()})
        return params


def torchrun_command(job: Job, runs_dir: str | os.PathLike, gpus: int, resume: bool = False) -> list[str]:
    """``gtaseg train`` for ``job`` under torchrun with ``gpus`` processes on this node (``--standalone``: its own
    rendezvous on a free port, so several tasks may share a node)."""
    out = str(job.dir(runs_dir))
    train = ["train", "--resume", out] if resume else ["train", *train_argv(job.config), "--out", out]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
            "-m", "gtaseg.cli", *train]


@dataclass(frozen=True)
class TrainJob:
    """One array task: train ``name`` into its folder, unless it is finished or running elsewhere.

    Picklable (submitit ships it to the node). Holds the job's lock while it trains, like a local sweep.
    """

    name: str
    config: dict
    runs_dir: str
    gpus: int = 1
    resume: bool = False

    def __call__(self) -> dict:
        from gtaseg.sweep import _default_train  # looked up when the task runs: tests replace it there

        job = Job(self.name, self.config, {})
        out = job.dir(self.runs_dir)
        with job_lock(self.runs_dir, job) as mine:
            if not mine:
                raise GtasegError(f"{self.name}: running in another process")
            if is_finished(out):
                return RunDir(out).final()
            again = prepare_run_dir(job, out, self.resume) == "resuming"
            if self.gpus > 1:
                subprocess.run(torchrun_command(job, self.runs_dir, self.gpus, resume=again), check=True)
                return RunDir(out).final()
            return _default_train(dict(self.config), out, resume=again)

    def checkpoint(self, *args, **kwargs):
        """submitit calls this when the task is preempted or times out: requeue it, continuing the run from its
        last checkpoint.pt (its result is the same as an uninterrupted run's)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(dataclasses.replace(self, resume=True))


@dataclass
class SubmitResult:
    total: int
    finished: list[str] = field(default_factory=list)
    active: list[str] = field(default_factory=list)  # queued or running, on the cluster or in a local sweep
    submitted: list[tuple[str, str]] = field(default_factory=list)  # (run name, scheduler job id)
    jobs: list = field(default_factory=list)  # submitit Job objects, in ``submitted`` order


def import_submitit() -> ModuleType:
    """submitit, or a one-line error saying how to install it (it is an optional extra)."""
    try:
        import submitit
    except ImportError:
        raise GtasegError("--executor submitit needs submitit: pip install 'gtaseg[cluster]' (or pip install submitit)") from None
    return submitit


def read_record(runs_dir: str | os.PathLike) -> dict[str, dict]:
    """Run name → {"job_id", "cluster", "submitted"} of its last submission (empty before the first)."""
    path = Path(runs_dir) / SUBMITIT_DIR / RECORD
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def scheduler_states(entries: dict[str, dict], runs_dir: str | os.PathLike) -> dict[str, str]:
    """Run name → the scheduler's state of its recorded job ("UNKNOWN" where it cannot tell)."""
    states, slurm = {}, {}
    for name, entry in entries.items():
        if entry.get("cluster") == "debug":
            states[name] = "FINISHED"  # ran inside the submitting process, which has ended
        elif entry.get("cluster") == "local":
            try:
                os.kill(int(entry["job_id"]), 0)  # the local executor's job id is the task's pid
                states[name] = "RUNNING"
            except (OSError, ValueError, KeyError):
                states[name] = "FINISHED"
        else:
            slurm[name] = str(entry.get("job_id"))
    if slurm:
        submitit = import_submitit()
        try:
            watcher = submitit.SlurmJob.watcher
            for job_id in slurm.values():
                watcher.register_job(job_id)  # all first: then one sacct call answers for all of them
            states.update({name: str(watcher.get_state(job_id)) for name, job_id in slurm.items()})
        except Exception:  # no sacct here: the runs' own folders decide
            states.update({name: "UNKNOWN" for name in slurm if name not in states})
    return states


def submit(jobs: list[Job], runs_dir: str | os.PathLike, options: ClusterOptions, *, name: str = "gtaseg",
           resume: bool = False,
           states_fn: Callable[[dict[str, dict], str | os.PathLike], dict[str, str]] = scheduler_states) -> SubmitResult:
    """Submit the jobs that are not finished, queued or running as one job array; record their ids."""
    submitit = import_submitit()
    if options.cluster not in CLUSTERS:
        raise GtasegError(f"--cluster {options.cluster!r}: choose from {', '.join(CLUSTERS)}")
    runs_dir = Path(runs_dir)
    record = read_record(runs_dir)
    result = SubmitResult(total=len(jobs))
    unfinished = [job for job in jobs if not is_finished(job.dir(runs_dir))]
    result.finished = [job.name for job in jobs if job not in unfinished]
    states = states_fn({job.name: record[job.name] for job in unfinished if job.name in record}, runs_dir)
    todo = []
    for job in unfinished:
        if is_locked(runs_dir, job) or states.get(job.name) in ACTIVE_STATES:
            result.active.append(job.name)
        else:
            todo.append(job)
    if options.gpus_per_job > 1:
        for job in todo:  # every field must have a gtaseg train option: fail here, not on the node
            torchrun_command(job, runs_dir, options.gpus_per_job)
    if not todo:
        return result
    try:
        executor = submitit.AutoExecutor(folder=runs_dir / SUBMITIT_DIR / "%j", cluster=options.cluster)
    except RuntimeError as e:  # submitit's "Could not detect srun"
        raise GtasegError(f"--cluster {options.cluster}: no SLURM here ({e}); submit from a login node, or try the "
                          f"path on this machine with --cluster local or --cluster debug") from None
    try:
        executor.update_parameters(**options.executor_parameters(name))
    except (NameError, AssertionError) as e:  # submitit names the parameters it does not know
        raise GtasegError(f"--slurm-opt: {' '.join(str(e).split())[:300]}") from None
    tasks = [TrainJob(job.name, job.config, str(runs_dir), options.gpus_per_job, resume) for job in todo]
    try:
        with executor.batch():
            submitted = [executor.submit(task) for task in tasks]
    except Exception as e:  # sbatch missing or refusing: its message is the useful part
        raise GtasegError(f"submitting {len(tasks)} jobs failed: {' '.join(str(e).split())[:400]}") from None
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    for job, sub in zip(todo, submitted):
        record[job.name] = {"job_id": str(sub.job_id), "cluster": options.cluster, "submitted": now}
        result.submitted.append((job.name, str(sub.job_id)))
    result.jobs = submitted
    write_json(runs_dir / SUBMITIT_DIR / RECORD, record)
    return result


def wait(result: SubmitResult, echo: Callable[[str], None] = print) -> list[tuple[str, str]]:
    """Wait for the submitted tasks (local and debug clusters: they run on this machine); the failed ones."""
    failed = []
    for (name, _), job in zip(result.submitted, result.jobs):
        try:
            final = job.result()
            echo(f"{name}: top1 {final.get('top1', float('nan')):.2f}")
        except Exception as e:
            failed.append((name, " ".join(str(e).split())[-300:]))
            echo(f"{name}: FAILED")
    return failed


def describe(result: SubmitResult, options: ClusterOptions, runs_dir: str | os.PathLike) -> str:
    """One summary line for the submitting user."""
    ids = sorted({jid.split("_")[0] for _, jid in result.submitted})
    where = (f"{options.cluster} job array {', '.join(ids)}" if options.cluster == "slurm"
             else f"submitit's {options.cluster} executor")
    launch = f"torchrun × {options.gpus_per_job} GPUs" if options.gpus_per_job > 1 else \
        f"{options.gpus_per_job} GPU" if options.gpus_per_job else "CPU"
    return (f"{result.total} jobs: {len(result.finished)} finished, {len(result.active)} queued or running, "
            f"{len(result.submitted)} submitted" + (f" to {where} ({launch} each; logs in "
                                                     f"{shlex.quote(str(Path(runs_dir) / SUBMITIT_DIR))})"
                                                     if result.submitted else "")
            + "; run the same command again to resubmit failed or unfinished runs")
