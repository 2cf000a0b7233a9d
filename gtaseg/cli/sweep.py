"""``gtaseg sweep`` (a grid of training runs) and ``gtaseg report`` (the paper's tables from them)."""
from __future__ import annotations

import sys
from pathlib import Path

import click
from click.core import ParameterSource

from gtaseg.errors import GtasegError


@click.command(context_settings={"show_default": True})
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--runs-dir", type=click.Path(file_okay=False), default=None,
              help="Where the run folders go [default: the config's runs_dir, else runs/<config name>].")
@click.option("--print", "--dry-run", "print_only", is_flag=True,
              help="Run nothing: print one 'gtaseg train ... --out DIR' line per unfinished job, for a cluster "
                   "scheduler (a counts summary goes to stderr).")
@click.option("--keep-going", is_flag=True, help="After a failed run, go on with the next instead of stopping.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run from its checkpoint.pt (when its config.json is the job's) instead "
                   "of clearing it and starting again; the result is the same, sooner.")
@click.option("--executor", type=click.Choice(["local", "submitit"]), default="local",
              help="local: run the jobs one after another in this process. submitit: submit the unfinished jobs as "
                   "one SLURM job array (needs pip install 'gtaseg[cluster]'); calling it again resubmits only the "
                   "failed or unfinished runs, not those still queued or running.")
@click.option("--cluster", type=click.Choice(["slurm", "local", "debug"]), default="slurm",
              help="With --executor submitit: SLURM, or submitit's local (background processes) or debug (this "
                   "process) executor to try the cluster path on this machine; local and debug wait for the jobs.")
@click.option("--partition", default=None, help="With --executor submitit: the SLURM partition [default: the cluster's].")
@click.option("--gpus-per-job", type=click.IntRange(0), default=1,
              help="With --executor submitit: GPUs of each run; more than 1 trains under torchrun, one process per "
                   "GPU (the global batch is then --batch-size × --accum-steps × GPUs); 0 trains on CPUs.")
@click.option("--cpus-per-gpu", type=click.IntRange(1), default=10,
              help="With --executor submitit: CPU cores per GPU (data-loading workers need them).")
@click.option("--mem-gb-per-gpu", type=click.IntRange(1), default=None,
              help="With --executor submitit: host memory per GPU in GB [default: the partition's].")
@click.option("--time", "time_min", type=click.IntRange(1), default=720,
              help="With --executor submitit: time limit of each run in minutes (a run that reaches it is requeued "
                   "and continues from its last checkpoint).")
@click.option("--array-parallelism", type=click.IntRange(1), default=64,
              help="With --executor submitit: how many runs of the job array may run at once.")
@click.option("--slurm-opt", "slurm_opts", multiple=True, metavar="KEY=VALUE",
              help="With --executor submitit: any other submitit SLURM parameter, e.g. account=myproj, qos=high, "
                   "constraint=h100 (repeat the option).")
def sweep(config, runs_dir, print_only, keep_going, resume, executor, cluster, partition, gpus_per_job, cpus_per_gpu,
          mem_gb_per_gpu, time_min, array_parallelism, slurm_opts):
    """Run a grid of training jobs from a YAML/JSON CONFIG, one run folder each, one after another.

    A run is finished when its folder holds final.json; finished runs are skipped, and a folder left by an
    interrupted run is cleared and redone (--resume: continued), so a sweep can be killed and started again at
    any time. SIGINT/SIGTERM stop it after the current step of the current run, with a checkpoint written. Two
    sweep processes on the same runs dir share the work (a lock per job). See configs/README.md for the format.

    On a SLURM cluster, --executor submitit submits the unfinished runs as a job array instead, e.g.
    ``gtaseg sweep configs/table2.yaml --executor submitit --partition gpu --gpus-per-job 1 --time 240``.
    """
    from gtaseg.stopping import Interrupted
    from gtaseg.sweep.commands import pending_lines
    from gtaseg.sweep.config import load_config
    from gtaseg.sweep.jobs import expand
    from gtaseg.sweep.runner import run_sweep
    from gtaseg.sweep.state import write_sweep_record

    cluster_only = [p.opts[0] for p in click.get_current_context().command.params
                    if p.name in _CLUSTER_OPTIONS and click.get_current_context().get_parameter_source(p.name)
                    == ParameterSource.COMMANDLINE]
    if cluster_only and (executor != "submitit" or print_only):
        raise click.UsageError(f"{', '.join(cluster_only)} only apply with --executor submitit (and without --print)")
    cfg = load_config(config)
    jobs = expand(cfg)
    if not jobs:
        raise GtasegError(f"{config}: the grid has no jobs")
    runs_dir = Path(runs_dir or cfg.runs_dir or Path("runs") / cfg.name)
    if executor == "submitit" and not print_only:
        return _submit(cfg, jobs, runs_dir, resume, _cluster_options(
            cluster, partition, gpus_per_job, cpus_per_gpu, mem_gb_per_gpu, time_min, array_parallelism, slurm_opts))
    if print_only:
        lines, counts = pending_lines(jobs, runs_dir, resume=resume)
        write_sweep_record(cfg, runs_dir)
        for line in lines:
            click.echo(line)
        note = (f"# {len(jobs)} jobs: {counts['finished']} finished, {counts['todo']} to run"
                + (f" ({counts['leftover']} {'resume or clear' if resume else 'clear'} an unfinished folder: do "
                   f"not submit those while they still run elsewhere)" if counts["leftover"] else "")
                + (f", {counts['running']} running in a local sweep" if counts["running"] else ""))
        click.echo(note, err=True)
        return
    write_sweep_record(cfg, runs_dir)
    try:
        result = run_sweep(jobs, runs_dir, keep_going=keep_going, resume=resume, echo=lambda s: click.echo(s, err=True))
    except Interrupted as e:
        click.echo(f"sweep stopped: {e.args[0].split(';')[0]}; start the sweep again to go on "
                   f"(with --resume to continue that run from its checkpoint)", err=True)
        sys.exit(e.exit_code)
    click.echo(f"sweep {cfg.name}: {result.total} jobs; {len(result.ran)} run now, {len(result.skipped)} already "
               f"finished" + (f", {len(result.busy)} running elsewhere" if result.busy else "")
               + (f", {len(result.failed)} failed" if result.failed else "") + f"; report: gtaseg report {runs_dir}")
    if result.failed:
        raise GtasegError(f"{len(result.failed)} run(s) failed: " + "; ".join(f"{n}: {m}" for n, m in result.failed))


_CLUSTER_OPTIONS = ("cluster", "partition", "gpus_per_job", "cpus_per_gpu", "mem_gb_per_gpu", "time_min",
                    "array_parallelism", "slurm_opts")


def _cluster_options(cluster, partition, gpus_per_job, cpus_per_gpu, mem_gb_per_gpu, time_min, array_parallelism,
                       slurm_opts):
    from gtaseg.option_kinds import parse_pairs
    from gtaseg.submit import ClusterOptions

    return ClusterOptions(cluster=cluster, partition=partition, gpus_per_job=gpus_per_job, cpus_per_gpu=cpus_per_gpu,
                          mem_gb_per_gpu=mem_gb_per_gpu, time_min=time_min, array_parallelism=array_parallelism,
                          extra=parse_pairs(slurm_opts))


def _submit(cfg, jobs, runs_dir: Path, resume: bool, options) -> None:
    """--executor submitit: submit the unfinished jobs; on this machine's executors, wait for them."""
    from gtaseg.submit import describe, submit, wait
    from gtaseg.sweep.naming import slug
    from gtaseg.sweep.state import write_sweep_record

    write_sweep_record(cfg, runs_dir)
    result = submit(jobs, runs_dir, options, name=f"gtaseg-{slug(cfg.name)}", resume=resume)
    click.echo(f"sweep {cfg.name}: " + describe(result, options, runs_dir), err=True)
    if options.cluster != "slurm" and result.jobs:
        failed = wait(result, echo=lambda s: click.echo(s, err=True))
        if failed:
            raise GtasegError(f"{len(failed)} run(s) failed: " + "; ".join(f"{n}: {m}" for n, m in failed))


@click.command(context_settings={"show_default": True})
@click.argument("runs_dir", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Where report.md, table*.csv, figure4.png/.csv and runs.csv go [default: RUNS_DIR].")
def report(runs_dir, out):
    """Aggregate the finished runs under RUNS_DIR into the paper's tables and Figure 4.

    Prints the Markdown (also written to report.md): Table 2 (methods × datasets × sampling rates, mean ± std
    over seeds at each method's best λ of 0.1α/α/10α), and where the runs allow it Table 3 (guidance target),
    Table 5 (TransMix), Table 6 (source model); Figure 4 (top-1 against λ) goes to figure4.png.

    When every run reports a validation top-1 (synthetic data with val_per_class > 0), Table 2 is written for
    two protocols side by side: "fair", each method's λ and lr chosen on validation top-1 (selected_on = val in
    table2.csv), and "paper", one recipe for every method (lr 1e-4) with λ chosen on test (selected_on =
    test). Settings are compared on the seeds they all have, and seeds.yaml (a sweep config) runs seeds 1 and 2
    of every chosen setting: `gtaseg sweep OUT/seeds.yaml`, then report again.
    """
    from gtaseg.report import make_report

    rep = make_report(runs_dir, out)
    click.echo(rep.markdown, nl=False)
    click.echo("wrote " + ", ".join(str(p) for p in rep.files), err=True)
