"""``gtaseg sweep`` (a grid of training runs) and ``gtaseg report`` (the paper's tables from them)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

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
def sweep(config, runs_dir, print_only, keep_going, resume):
    """Run a grid of training jobs from a YAML/JSON CONFIG, one run folder each, one after another.

    A run is finished when its folder holds final.json; finished runs are skipped, and a folder left by an
    interrupted run is cleared and redone (--resume: continued), so a sweep can be killed and started again at
    any time. SIGINT/SIGTERM stop it after the current step of the current run, with a checkpoint written. Two
    sweep processes on the same runs dir share the work (a lock per job). See configs/README.md for the format.
    """
    from gtaseg.checkpointing import Interrupted
    from gtaseg.sweep import expand, load_config, pending_lines, run_sweep, write_sweep_record

    cfg = load_config(config)
    jobs = expand(cfg)
    if not jobs:
        raise GtasegError(f"{config}: the grid has no jobs")
    runs_dir = Path(runs_dir or cfg.runs_dir or Path("runs") / cfg.name)
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


@click.command(context_settings={"show_default": True})
@click.argument("runs_dir", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Where report.md, table*.csv, figure4.png/.csv and runs.csv go [default: RUNS_DIR].")
def report(runs_dir, out):
    """Aggregate the finished runs under RUNS_DIR into the paper's tables and Figure 4.

    Prints the Markdown (also written to report.md): Table 2 (methods × datasets × sampling rates, mean ± std
    over seeds at each method's best λ of 0.1α/α/10α), and where the runs allow it Table 3 (guidance target),
    Table 5 (TransMix), Table 6 (source model); Figure 4 (top-1 against λ) goes to figure4.png.
    """
    from gtaseg.report import make_report

    rep = make_report(runs_dir, out)
    click.echo(rep.markdown, nl=False)
    click.echo("wrote " + ", ".join(str(p) for p in rep.files), err=True)
