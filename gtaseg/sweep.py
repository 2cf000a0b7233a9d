"""Sweeps: a grid of training runs, one run directory each, that can be interrupted and restarted.

A sweep config (YAML or JSON) holds::

    name: table2                 # optional; default: the file's stem
    runs_dir: runs/paper         # optional; default: runs/<name> (``gtaseg sweep --runs-dir`` wins)
    base: {TrainConfig fields shared by every job}
    grid: {field: [values, ...], ...}        # or a list of such grids, whose jobs are joined
    labels: {field: {value: "display name"}} # optional; how ``gtaseg report`` names e.g. a source file

Each job is ``base`` plus one point of the grid (a grid value overrides ``base``). A grid key is a :class:`~gtaseg.train.TrainConfig` field or
``lam_factor``: λ as a multiple of the method's default α (the paper's 0.1α, α, 10α). Methods without a λ
(α = 0: baseline, attn-only, ffn-only, linear) ignore ``lam`` and ``lam_factor``, so they run once per remaining point.

A job's run directory is named from its values (``cub/gta_lam1_r0.15_s0``), so the same job in two configs
sharing a runs dir runs once. A run is finished iff its ``final.json`` exists (train writes it last,
atomically); a directory without one is the remains of an interrupted run and is cleared and redone (or,
with ``--resume``, continued from its checkpoint, which ends in the same result). A lock
file per job (``RUNS_DIR/.locks``) keeps two sweep processes on one runs dir from taking the same job.
"""
from __future__ import annotations

import dataclasses
import gc
import itertools
import json
import math
import os
import re
import shlex
import shutil
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gtaseg.errors import GtasegError
from gtaseg.io import write_json
from gtaseg.methods import METHODS

TOP_KEYS = {"name", "description", "runs_dir", "base", "grid", "labels"}
LAM_FACTOR = "lam_factor"
# Fields that every run name spells out in a fixed place; any other grid key is appended as _key-value.
_NAMED = ("data", "method", "transmix", "lam", LAM_FACTOR, "sampling_rate", "seed")
_LOCKS = ".locks"
# Settings that do not change a run's result (gtaseg.checkpointing.RUNTIME_OPTIONS, plus where the data lies and
# how often metrics are logged): a finished or interrupted run that differs only in these is still the job.
_RUNTIME = ("device", "workers", "ckpt_every", "log_every", "data_root", "compile", "tensorboard")


def train_fields() -> dict[str, str]:
    """TrainConfig field name → its annotation (a string: the module uses postponed annotations)."""
    from gtaseg.train import TrainConfig

    return {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}


def train_default(name: str):
    from gtaseg.train import TrainConfig

    f = {f.name: f for f in dataclasses.fields(TrainConfig)}[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@dataclass
class SweepConfig:
    name: str
    base: dict
    grids: list[dict]
    runs_dir: str | None = None
    labels: dict = field(default_factory=dict)
    description: str | None = None
    path: str | None = None

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "config": self.path, "base": self.base,
                "grid": self.grids if len(self.grids) > 1 else self.grids[0], "labels": self.labels}


@dataclass(frozen=True)
class Job:
    name: str  # the run directory, relative to the runs dir, with '/' separators
    config: dict  # TrainConfig fields to set (the rest keep their defaults)
    point: dict  # the grid point it came from

    def dir(self, runs_dir: str | os.PathLike) -> Path:
        return Path(runs_dir, *self.name.split("/"))


# ---------------------------------------------------------------------------------------------- config


def read_config_file(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise GtasegError(f"{path}: no such sweep config")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise GtasegError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or write it as JSON") from None
            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
    except GtasegError:
        raise
    except Exception as e:  # yaml.YAMLError / json.JSONDecodeError, with line numbers in the message
        raise GtasegError(f"{path}: not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'}: "
                          f"{' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise GtasegError(f"{path}: expected a mapping with 'base' and 'grid' at the top")
    return raw


def load_config(path: str | os.PathLike) -> SweepConfig:
    raw = read_config_file(path)
    return parse_config(raw, name=Path(path).stem, where=str(path))


def parse_config(raw: dict, name: str = "sweep", where: str = "sweep config") -> SweepConfig:
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise GtasegError(f"{where}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
                          f"expected {', '.join(sorted(TOP_KEYS))}")
    fields = train_fields()
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise GtasegError(f"{where}: 'base' must be a mapping of TrainConfig fields")
    base = {k: _coerce(k, v, fields, f"{where}: base.{k}") for k, v in base.items()}
    for key in base:
        if key not in fields:
            raise GtasegError(f"{where}: base.{key} is not a training option; known: {', '.join(fields)}")
    grids = raw.get("grid")
    if grids is None:
        grids = [{}]
    grids = grids if isinstance(grids, list) else [grids]
    parsed = []
    for i, grid in enumerate(grids):
        at = f"{where}: grid" + (f"[{i}]" if len(grids) > 1 else "")
        if not isinstance(grid, dict):
            raise GtasegError(f"{at} must be a mapping of field → list of values")
        out = {}
        for key, values in grid.items():
            if key not in fields and key != LAM_FACTOR:
                raise GtasegError(f"{at}.{key} is not a training option (nor {LAM_FACTOR}); known: {', '.join(fields)}")
            if not isinstance(values, list) or not values:
                raise GtasegError(f"{at}.{key} must be a non-empty list of values")
            out[key] = [_coerce(key, v, fields, f"{at}.{key}") for v in values]
        if "lam" in out and LAM_FACTOR in out:
            raise GtasegError(f"{at}: give lam or {LAM_FACTOR}, not both")
        parsed.append(out)
    labels = raw.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, dict) for v in labels.values()):
        raise GtasegError(f"{where}: 'labels' must map a field to {{value: display name}}")
    runs_dir = raw.get("runs_dir")
    return SweepConfig(name=str(raw.get("name") or name), base=base, grids=parsed,
                       runs_dir=None if runs_dir is None else str(runs_dir),
                       labels={k: {str(a): str(b) for a, b in v.items()} for k, v in labels.items()},
                       description=raw.get("description"), path=None if where == "sweep config" else where)


def _coerce(key: str, value, fields: dict[str, str], where: str):
    """YAML 1.1 reads ``1e-4`` as a string; turn numeric strings of numeric fields into numbers."""
    kind = "float" if key == LAM_FACTOR else fields.get(key, "")
    if "float" in kind and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # λ 1 and λ 1.0 are one job
    if isinstance(value, str) and ("float" in kind or "int" in kind):
        try:
            return int(value) if "int" in kind and "float" not in kind else float(value)
        except ValueError:
            raise GtasegError(f"{where}: {value!r} is not a number") from None
    return value


# ----------------------------------------------------------------------------------------- expansion


def expand(config: SweepConfig) -> list[Job]:
    """Every job of the config, in grid order (later keys vary fastest), without duplicates."""
    jobs: dict[str, Job] = {}
    for grid in config.grids:
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            point = dict(zip(keys, values))
            job = make_job({**config.base, **point}, point, keys)
            seen = jobs.get(job.name)
            if seen is None:
                jobs[job.name] = job
            elif effective(seen.config) != effective(job.config):
                raise GtasegError(f"two different jobs would share the run name {job.name!r} "
                                  f"({seen.point} and {job.point}); make the grid values distinguishable")
    return list(jobs.values())


def make_job(cfg: dict, point: dict, grid_keys: list[str]) -> Job:
    cfg = dict(cfg)
    method = cfg.get("method", train_default("method"))
    if method not in METHODS:
        raise GtasegError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    alpha = METHODS[method].default_lam
    factor = cfg.pop(LAM_FACTOR, None)
    if alpha == 0:
        cfg.pop("lam", None)  # nothing to weigh: one run, whatever λ the grid lists
    elif factor is not None:
        cfg["lam"] = round_lam(float(factor) * alpha)
    elif cfg.get("lam") is None:
        cfg["lam"] = alpha  # spelled out, so a job is the same whether its λ was given or defaulted
    return Job(run_name(cfg, grid_keys), cfg, point)


def round_lam(x: float) -> float:
    """0.1 × 0.01 is 0.0010000000000000002 in floating point; names and tables want 0.001."""
    return float(f"{x:.12g}")


def run_name(cfg: dict, grid_keys: list[str] = ()) -> str:
    """``<data>/<method>[_tm][_lam<λ>]_r<rate>_s<seed>[_<key>-<value>...]`` from a job's fields."""
    get = lambda k: cfg.get(k, train_default(k))  # noqa: E731
    method = get("method")
    parts = [method]
    if get("transmix"):
        parts.append("tm")
    alpha = METHODS[method].default_lam
    if alpha:
        lam = cfg.get("lam")
        parts.append(f"lam{fmt_num(alpha if lam is None else lam)}")
    parts.append(f"r{fmt_num(get('sampling_rate'))}")
    parts.append(f"s{get('seed')}")
    for key in grid_keys:
        if key not in _NAMED:
            parts.append(f"{key}-{slug(cfg.get(key))}")
    return f"{data_slug(get('data'))}/{'_'.join(parts)}"


def fmt_num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def data_slug(data: str) -> str:
    return slug(Path(str(data)).name if ("/" in str(data) or os.sep in str(data)) else data)


def slug(value) -> str:
    """A short, file-name-safe spelling of a grid value (a checkpoint path becomes its stem)."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        text = fmt_num(value)
    elif isinstance(value, (list, tuple)):
        text = "-".join(slug(v) for v in value)
    elif isinstance(value, dict):
        text = ",".join(f"{k}={slug(v)}" for k, v in value.items())
    elif value is None:
        text = "none"
    else:
        text = str(value)
        if "/" in text or os.sep in text:
            text = Path(text).name
        for suffix in (".safetensors", ".pth", ".pt", ".bin", ".ckpt"):
            text = text.removesuffix(suffix)
    return re.sub(r"[^A-Za-z0-9.,=+-]+", "-", text).strip("-") or "x"


def effective(cfg: dict) -> str:
    """A canonical spelling of a job's settings, leaving out those equal to TrainConfig's default."""
    return _canon({k: v for k, v in cfg.items() if _canon(v) != _canon(train_default(k))})


def _canon(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


# ------------------------------------------------------------------------------------------- the CLI


def train_argv(cfg: dict) -> list[str]:
    """The ``gtaseg train`` options that reproduce ``cfg`` (without --out)."""
    import click

    from gtaseg.cli.train import train as train_command

    options = {o: p for p in train_command.params if isinstance(p, click.Option) for o in p.opts}
    argv: list[str] = []
    for key, value in cfg.items():
        if value is None:
            continue
        if key == "randaugment":
            if not value:
                argv.append("--no-randaugment")
            continue
        if key == "synthetic":
            for k, v in (value or {}).items():
                argv += ["--synthetic", f"{k}={v}"]
            continue
        if key == "blocks":
            value = ",".join(str(b) for b in value) if isinstance(value, (list, tuple)) else str(value)
        flag = "--" + key.replace("_", "-")
        opt = options.get(flag)
        if opt is None:
            raise GtasegError(f"{key!r} has no gtaseg train option, so it cannot go on a printed command line; "
                              f"leave it to the preset or run the sweep with gtaseg sweep (no --print)")
        if opt.is_flag:
            if value:
                argv.append(flag)
            continue
        argv += [flag, repr(value) if isinstance(value, float) else str(value)]
    return argv


def command_line(job: Job, runs_dir: str | os.PathLike) -> str:
    return shlex.join(["gtaseg", "train", *train_argv(job.config), "--out", str(job.dir(runs_dir))])


# --------------------------------------------------------------------------------------- run state


def is_finished(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / "final.json").is_file()


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
    path = Path(runs_dir) / _LOCKS / (job.name.replace("/", "__") + ".lock")
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


def differences(job: Job, run_dir: str | os.PathLike) -> list[str]:
    """Fields the job sets to something other than what the finished run's config.json recorded."""
    try:
        saved = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return []
    out = []
    for key, want in job.config.items():
        if key in _RUNTIME or want is None or key not in saved:
            continue
        have = saved[key]
        same = (math.isclose(float(want), float(have), rel_tol=1e-9)
                if isinstance(want, (int, float)) and isinstance(have, (int, float)) and not isinstance(want, bool)
                else _canon(want) == _canon(have) or (isinstance(have, list) and _canon(list(want)) == _canon(have)))
        if not same:
            out.append(f"{key}: run has {have!r}, config says {want!r}")
    return out


def write_sweep_record(config: SweepConfig, runs_dir: str | os.PathLike) -> Path:
    """RUNS_DIR/sweep.<name>.json: the config as run, where ``gtaseg report`` finds its labels."""
    path = Path(runs_dir) / f"sweep.{slug(config.name)}.json"
    write_json(path, config.to_json())
    return path


# ----------------------------------------------------------------------------------------- running


@dataclass
class SweepResult:
    total: int = 0
    skipped: list[str] = field(default_factory=list)  # already finished
    busy: list[str] = field(default_factory=list)  # locked by another sweep process
    ran: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def _default_train(cfg: dict, out: Path, resume: bool = False) -> dict:
    from gtaseg.train import TrainConfig, train

    if resume:
        from gtaseg.config import RESUME_OPTIONS
        from gtaseg.rundir import RunDir

        return train(RunDir(out).resumed_config(**{k: cfg[k] for k in RESUME_OPTIONS if k in cfg}), out, resume=True)
    return train(TrainConfig(**cfg), out)


def resumable(job: Job, run_dir: str | os.PathLike) -> bool:
    """An interrupted run of this very job: config.json is there, readable, and agrees with the job."""
    path = Path(run_dir) / "config.json"
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
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


def run_sweep(jobs: list[Job], runs_dir: str | os.PathLike, *, keep_going: bool = False, resume: bool = False,
              train_fn: Callable[..., dict] | None = None,
              echo: Callable[[str], None] = print) -> SweepResult:
    """Run the unfinished jobs one after another in this process.

    A job whose directory holds final.json is skipped; any other existing directory is cleared first, or with
    ``resume`` continued from its checkpoint when its config.json is this job's. A failing job stops the sweep
    unless ``keep_going`` (its directory stays, and is redone next time). SIGINT/SIGTERM stop the running job
    after its current step with a checkpoint written (:class:`gtaseg.checkpointing.Interrupted`) and end the sweep.
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
