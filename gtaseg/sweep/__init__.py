"""Sweeps: a grid of training runs, one run directory each, that can be interrupted and restarted.

A sweep config (YAML or JSON) holds::

    name: table2                 # optional; default: the file's stem
    runs_dir: runs/paper         # optional; default: runs/<name> (``gtaseg sweep --runs-dir`` wins)
    base: {TrainConfig fields shared by every job}
    grid: {field: [values, ...], ...}        # or a list of such grids, whose jobs are joined
    labels: {field: {value: "display name"}} # optional; how ``gtaseg report`` names e.g. a source file

Each job is ``base`` plus one point of the grid (a grid value overrides ``base``). A grid key is a
:class:`~gtaseg.config.TrainConfig` field or ``lam_factor``: λ as a multiple of the method's default α (the paper's
0.1α, α, 10α). Methods without a λ (α = 0: baseline, attn-only, ffn-only, linear) ignore ``lam`` and
``lam_factor``, so they run once per remaining point.

A job's run directory is named from its values (``cub/gta_lam1_r0.15_s0``), so the same job in two configs
sharing a runs dir runs once. A run is finished iff its ``final.json`` exists (train writes it last,
atomically); a directory without one is the remains of an interrupted run and is cleared and redone (or,
with ``--resume``, continued from its checkpoint, which ends in the same result). A lock
file per job (``RUNS_DIR/.locks``) keeps two sweep processes on one runs dir from taking the same job.

Modules: :mod:`~gtaseg.sweep.config` (the config file), :mod:`~gtaseg.sweep.naming` (run folder names),
:mod:`~gtaseg.sweep.jobs` (the grid's jobs), :mod:`~gtaseg.sweep.locks`, :mod:`~gtaseg.sweep.state` (what the
runs dir holds), :mod:`~gtaseg.sweep.runner` (the local executor), :mod:`~gtaseg.sweep.commands` (``--print``).
"""
# The names the tests and scripts import from gtaseg.sweep; gtaseg's own modules import from the submodules.
from gtaseg.config import train_argv
from gtaseg.sweep.commands import command_line, pending_lines
from gtaseg.sweep.config import load_config, parse_config
from gtaseg.sweep.jobs import Job, effective, expand
from gtaseg.sweep.locks import job_lock
from gtaseg.sweep.naming import run_name
# Looked up here when a submitit task runs (gtaseg.submit.TrainJob), so tests can replace it.
from gtaseg.sweep.runner import _default_train, run_sweep

__all__ = ["Job", "_default_train", "command_line", "effective", "expand", "job_lock", "load_config", "parse_config",
           "pending_lines", "run_name", "run_sweep", "train_argv"]
