"""``gtaseg eval-voc``, ``eval-coco``, ``eval-masks``, ``check-attention``, ``visualize`` and ``eval-acc``.

The protocol itself lives in :mod:`gtaseg.evaluation`; this module parses options, loads models and data,
and prints. eval/PROTOCOL.md documents the protocol.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from gtaseg.cli.protocol_options import (CKPT_OPTION, PRESET_HELP, protocol_from, protocol_options,
                                         voc_root_option)
from gtaseg.config import BAD_IMAGE_POLICIES
from gtaseg.data.split import Split
from gtaseg.errors import GtasegError
from gtaseg.evaluation.gate import Gate, merge_options_file
from gtaseg.evaluation.protocols import JACCARD_PRESETS, EvalProtocol, describe, short_name
from gtaseg.io import write_json
from gtaseg.option_kinds import parse_pairs

if TYPE_CHECKING:  # torch and timm load only in the commands that run a model: --help answers at once
    from gtaseg.evaluation.inputs import SegSample
    from gtaseg.evaluation.runner import EvalResult

PROTOCOL_HELP = """
Protocol (eval/PROTOCOL.md): each image is resized to S×S (--image-size, --resize), normalised with the
model's mean/std and cropped to a multiple of the patch; the label map is resized with nearest neighbour
and cropped the same way. The [cls] attention of --block over the patch tokens is thresholded per head to
keep the largest patches holding --mass of the attention. best: per image and object class, the IoU of the
best head; an image's score is the mean over its classes. merged: the heads' attention averaged (and, with
--blur-sigma, blurred), one mask (without components under --min-component patches), IoU with all
objects. --void decides what void (255) pixels count as. The Jaccard is the mean over images in percent
(--average pooled: total intersection over total union); images without any object class are left out
(--empty zero: scored 0) and listed as without_objects. --per-block adds the Jaccard of every block and
head.
""" + PRESET_HELP


def _evaluate(ckpt: str, samples: Sequence[SegSample], protocol: EvalProtocol, opts: dict[str, Any],
              export_masks: bool = False, per_block: bool = False) -> tuple[EvalResult, dict[str, Any]]:
    """Load ``ckpt`` and score ``samples``; returns the result and the model part of the report."""
    from gtaseg.evaluation.runner import evaluate, load_checked

    model, info, described = load_checked(ckpt, protocol, opts["arch"])
    result = evaluate(model, info, samples, protocol, batch_size=opts["batch_size"], workers=opts["workers"],
                      device=opts["device"], export_masks=export_masks, per_block=per_block)
    return result, described


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _print_report(result: EvalResult, model: dict[str, Any], data: str) -> None:
    s, g = result.settings, result.geometry
    click.echo(f"model     {model['ckpt']} ({model['arch']}, {model['heads']} heads, block {result.block})")
    click.echo(f"data      {data}: {len(result.scores)} images, {len(result.without_objects)} without objects")
    click.echo(describe(s) + f" (crop {g.crop}, patch {g.patch_size})")
    click.echo(f"speed     {result.images_per_second:.2f} images/s ({result.seconds:.1f} s)")
    click.echo(f"\n{'variant':<12}{'Jaccard %':>10}{'images':>8}")
    scored = len(result.scores) - len(result.without_objects)
    for name, value, run in (("best head", result.jaccard_best, s.best), ("merged", result.jaccard_merged, s.merged)):
        if run:
            click.echo(f"{name:<12}{_fmt(value):>10}{scored:>8}")
    if result.blocks is not None:
        click.echo(f"\nJaccard % per block and head (mean over images with objects)\n{result.blocks.table()}")


def _write_outputs(result: EvalResult, model: dict[str, Any], data: dict[str, Any], out: str | None,
                   coco_rle: str | None, per_block: str | None = None) -> None:
    if out:
        write_json(out, {"model": model, "data": data, **result.to_json()})
        click.echo(f"report written to {out}")
    if coco_rle:
        write_json(coco_rle, result.records)
        click.echo(f"{len(result.records)} masks written to {coco_rle} (COCO RLE)")
    if per_block and result.blocks is not None:
        result.blocks.write_csv(f"{per_block}.csv")
        result.blocks.write_png(f"{per_block}.png", f"{model['ckpt']}: Jaccard % per block and head "
                                                    f"({short_name(result.settings)})")
        click.echo(f"per-block Jaccard written to {per_block}.csv and {per_block}.png")


_OUT = click.option("--out", type=click.Path(dir_okay=False), default=None,
                    help="Write the report (Jaccards, protocol card, per-image scores) as JSON.")
_COCO_RLE = click.option("--coco-rle", type=click.Path(dir_okay=False), default=None,
                         help="Write the predicted masks at the images' original size as COCO RLE JSON.")
_PER_BLOCK = click.option("--per-block", type=click.Path(dir_okay=False), default=None, metavar="PREFIX",
                          help="Also score every head of every block: a table, PREFIX.csv, PREFIX.png and "
                               "'per_block' in the JSON.")


@click.command("eval-voc", epilog=PROTOCOL_HELP)
@CKPT_OPTION
@voc_root_option("VOCdevkit/VOC2012, or a folder with JPEGImages/, SegmentationClass/ (or SegmentationObject/), ImageSets/Segmentation/.")
@click.option("--split", default="val", help="ImageSets/Segmentation/<split>.txt lists the images.")
@protocol_options(JACCARD_PRESETS)
@_OUT
@_COCO_RLE
@_PER_BLOCK
def eval_voc(ckpt: str, voc_root: str, split: str, out: str | None, coco_rle: str | None, per_block: str | None,
             **opts: Any) -> None:
    """Jaccard of a ViT's [cls] attention masks against VOC-style segmentation labels (class masks, or
    object masks with --masks object), under a named protocol (--protocol)."""
    from gtaseg.data.voc import voc_samples

    protocol = protocol_from(opts)
    samples = voc_samples(voc_root, split, opts["limit"], protocol.masks)
    result, model = _evaluate(ckpt, samples, protocol, opts, export_masks=bool(coco_rle), per_block=bool(per_block))
    _print_report(result, model, f"{voc_root} ({split})")
    _write_outputs(result, model, {"format": "voc", "root": str(voc_root), "split": split}, out, coco_rle, per_block)


@click.command("eval-coco", epilog=PROTOCOL_HELP)
@CKPT_OPTION
@click.option("--coco", "annotations", required=True, type=click.Path(dir_okay=False),
              help="COCO instances JSON; per image, the union of a category's instance masks is its class.")
@click.option("--images", required=True, type=click.Path(file_okay=False), help="Folder of the annotation file's images.")
@protocol_options(JACCARD_PRESETS, masks=False)
@_OUT
@_COCO_RLE
@_PER_BLOCK
def eval_coco(ckpt: str, annotations: str, images: str, out: str | None, coco_rle: str | None,
              per_block: str | None, **opts: Any) -> None:
    """Jaccard of a ViT's [cls] attention masks against COCO instance annotations (category ids as classes;
    pixels of two categories are void), under a named protocol (--protocol)."""
    from gtaseg.evaluation.coco import coco_samples

    protocol = protocol_from(opts)
    samples = coco_samples(annotations, images, opts["limit"])
    result, model = _evaluate(ckpt, samples, protocol, opts, export_masks=bool(coco_rle), per_block=bool(per_block))
    _print_report(result, model, str(annotations))
    _write_outputs(result, model, {"format": "coco", "annotations": str(annotations), "images": str(images)},
                   out, coco_rle, per_block)


def _apply_config(ctx: click.Context, opts: dict[str, Any], path: str) -> dict[str, Any]:
    """``opts`` with the options not given on the command line taken from the --config file at ``path``."""
    params = {p.name: p for p in ctx.command.params}

    def cast(key: str, value: Any) -> Any:
        try:
            return params[key].type_cast_value(ctx, value)
        except click.BadParameter as e:
            raise ValueError(e.message) from None

    given = {key for key in opts if ctx.get_parameter_source(key) == ParameterSource.COMMANDLINE}
    return merge_options_file(path, opts, given, cast)


GATE_HELP = """
Gates: --min-jaccard X fails below X percent. With --reference (usually the source model the checkpoint
was fine-tuned from), scored in the same run on the same images and protocol, --min-ratio R fails below
R × the reference's Jaccard and --max-drop D below the reference's minus D points. Give any of the three;
all given must hold.
""" + PROTOCOL_HELP


@click.command("check-attention", epilog=GATE_HELP)
@click.option("--ckpt", default=None, help="The model to check [or 'ckpt' in --config].")
@click.option("--voc-root", type=click.Path(file_okay=False), default=None, help="VOC-layout data [or 'voc_root' in --config].")
@click.option("--split", default="val", help="ImageSets/Segmentation/<split>.txt lists the images.")
@click.option("--min-jaccard", type=float, default=None, help="Fail below this Jaccard (percent) [or 'min_jaccard' in --config].")
@click.option("--reference", default=None, help="A reference model (e.g. the source) scored in the same run, for the relative gates.")
@click.option("--min-ratio", type=click.FloatRange(0), default=None, help="Fail below this ratio × the reference's Jaccard.")
@click.option("--max-drop", type=float, default=None, help="Fail when the Jaccard is more than this many points below the reference's.")
@click.option("--variant", type=click.Choice(("best", "merged")), default="best", help="Which Jaccard is checked.")
@click.option("--config", type=click.Path(dir_okay=False), default=None,
              help="JSON with any of these options (underscores for dashes), e.g. eval/gate.json; "
                   "options given on the command line win.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write the verdict, both Jaccards and the protocol card as JSON.")
@protocol_options(JACCARD_PRESETS, heads=False)
@click.pass_context
def check_attention(ctx: click.Context, config: str | None, out: str | None, **opts: Any) -> None:
    """Exit 1 with a FAIL line when a model's attention Jaccard is below an absolute gate (--min-jaccard)
    or below a reference model's by a ratio or a drop, else print PASS."""
    from gtaseg.data.voc import voc_samples

    if config:
        opts = _apply_config(ctx, opts, config)
        from_file = ctx.get_parameter_source("voc_root") != ParameterSource.COMMANDLINE
        if from_file and opts["voc_root"] is not None and not Path(opts["voc_root"]).is_dir():
            raise GtasegError(f"{opts['voc_root']}: no such folder (voc_root of {config}, relative to it); "
                              f"give --voc-root DIR to gate on another VOC-layout copy")
    for key in ("ckpt", "voc_root"):
        if opts[key] is None:
            raise GtasegError(f"--{key.replace('_', '-')} is required (or '{key}' in --config)")
    gate = Gate(opts["min_jaccard"], opts["min_ratio"], opts["max_drop"])
    if gate.relative and opts["reference"] is None:
        raise GtasegError("--min-ratio and --max-drop need --reference (or 'reference' in --config)")
    if gate.min_jaccard is None and not gate.relative:
        raise GtasegError("--min-jaccard is required (or 'min_jaccard' in --config), or --reference with "
                          "--min-ratio or --max-drop")
    protocol = protocol_from({**opts, "heads": opts["variant"]})
    samples = voc_samples(opts["voc_root"], opts["split"], opts["limit"], protocol.masks)
    variant = opts["variant"]
    result, _ = _evaluate(opts["ckpt"], samples, protocol, opts)
    value = result.jaccard_of(variant)
    if value is None:
        raise GtasegError(f"{opts['voc_root']}: none of the {len(samples)} images has an object class")
    reference = None
    if opts["reference"] is not None:
        reference = _evaluate(opts["reference"], samples, protocol, opts)[0].jaccard_of(variant)
    checks = gate.checks(value, reference)
    passed = all(ok for _, ok in checks)
    line = (f"{variant} Jaccard {value:.2f}: {'; '.join(text for text, _ in checks)} ({opts['ckpt']}, "
            f"{len(samples)} images at {protocol.image_size} px, protocol {short_name(protocol)}, "
            f"{result.seconds:.0f} s)")
    if out:
        write_json(out, {"passed": passed, "variant": variant, "jaccard": value, "reference_jaccard": reference,
                         "checks": [{"check": text, "passed": ok} for text, ok in checks],
                         "model": opts["ckpt"], "reference": opts["reference"], "images": len(samples),
                         "protocol": result.card()})
    if not passed:
        click.echo(f"FAIL: {line}", err=True)
        ctx.exit(1)
    click.echo(f"PASS: {line}")


@click.command()
@click.option("--ckpt", "ckpts", multiple=True, required=True, help="A model per column, in order (repeat the option).")
@click.option("--label", "labels", multiple=True, help="Column titles, one per --ckpt [default: the --ckpt specs].")
@click.option("--images", multiple=True, required=True, type=click.Path(exists=True),
              help="Image files or folders (repeatable); one row per image.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
@click.option("--mode", type=click.Choice(("attention", "mask")), default="attention",
              help="attention: max over heads; mask: the merged mask of the evaluation protocol.")
@click.option("--limit", type=click.IntRange(1), default=8, help="At most this many images (rows).")
@click.option("--arch", default=None, help="timm architecture, where a checkpoint file cannot tell.")
@click.option("--image-size", type=click.IntRange(1), default=480, help="Images are resized to S×S.")
@click.option("--mass", type=click.FloatRange(0, 1, min_open=True), default=0.6, help="Mask mode: share of the attention mass kept.")
@click.option("--block", type=int, default=-1, help="Block whose [cls] attention is drawn.")
@click.option("--device", default="auto", help="auto (CUDA when available), cpu, cuda, ...")
def visualize(ckpts: tuple[str, ...], labels: tuple[str, ...], images: tuple[str, ...], out: str, mode: str,
              limit: int, arch: str | None, image_size: int, mass: float, block: int, device: str) -> None:
    """A PNG grid like the DINO/GTA paper figures: rows are images, columns are models (e.g. source,
    baseline, GTA), each cell the image overlaid with the model's [cls] attention or mask."""
    from gtaseg.data.images import load_rgb
    from gtaseg.evaluation.figures import Column, list_images, model_maps, render_grid
    from gtaseg.devices import pick_device
    from gtaseg.models import load_model

    if labels and len(labels) != len(ckpts):
        raise click.BadParameter(f"{len(labels)} labels for {len(ckpts)} checkpoints", param_hint="--label")
    paths = list_images(images)[:limit]
    pictures = [load_rgb(p) for p in paths]
    dev = pick_device(device)
    columns = []
    for spec, label in zip(ckpts, labels or ckpts):
        model, info = load_model(spec, arch=arch)
        columns.append(Column(label, model_maps(model, info, pictures, size=image_size, mode=mode, mass=mass,
                                                block=block, device=dev)))
        del model  # one model in memory at a time
    render_grid(pictures, [f"{p.parent.name}/{p.stem}" for p in paths], columns, size=image_size, mode=mode, out=out)
    click.echo(f"{len(paths)}x{len(columns)} grid written to {out}")


def _load_split(data: str, data_root: str | None, split: str, synthetic_opts: tuple[str, ...]) -> Split:
    """The ``split`` split of --data (``synthetic``: generated from the --synthetic options)."""
    from gtaseg.data.dataset import load_split
    from gtaseg.data.synthetic import synthetic_root

    try:
        synthetic_options = parse_pairs(synthetic_opts)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return load_split(data, split, data_root, synthetic_root(data, synthetic_options))


@click.command("eval-masks", epilog=PROTOCOL_HELP)
@CKPT_OPTION
@click.option("--data", "--dataset", "data", required=True,
              help="pet or cub with --data-root (trimaps / segmentations), synthetic, or an ImageFolder root with masks/<split>/.")
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help="A named dataset's root (data/README.md).")
@click.option("--split", default="test", help="Which split's images and masks to score.")
@click.option("--synthetic", "synthetic_opts", multiple=True, metavar="KEY=VALUE", help="Synthetic generator options used at training.")
@protocol_options(JACCARD_PRESETS, masks=False)
@_OUT
@_COCO_RLE
@_PER_BLOCK
def eval_masks(ckpt: str, data: str, data_root: str | None, split: str, synthetic_opts: tuple[str, ...],
               out: str | None, coco_rle: str | None, per_block: str | None, **opts: Any) -> None:
    """Jaccard of a ViT's [cls] attention masks against a classification dataset's own object masks:
    attention quality on the target data itself (same protocol as eval-voc)."""
    from gtaseg.evaluation.split_masks import dataset_mask_samples

    samples = dataset_mask_samples(data, split, _load_split(data, data_root, split, synthetic_opts), opts["limit"])
    result, model = _evaluate(ckpt, samples, protocol_from(opts), opts, export_masks=bool(coco_rle),
                              per_block=bool(per_block))
    _print_report(result, model, f"{data} ({split})")
    _write_outputs(result, model, {"format": "masks", "data": data, "root": data_root, "split": split}, out,
                   coco_rle, per_block)


@click.command("eval-acc")
@click.option("--ckpt", required=True, help="A fine-tuned checkpoint (with its classifier head).")
@click.option("--data", default=None, help="synthetic, or a dataset name with --data-root [default: the ImageFolder root at --data-root].")
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help="ImageFolder root with <split>/, or a named dataset's root.")
@click.option("--split", default="test", help="Which split to score.")
@click.option("--synthetic", "synthetic_opts", multiple=True, metavar="KEY=VALUE", help="Synthetic generator options used at training.")
@click.option("--arch", default=None, help="timm architecture, where a checkpoint file cannot tell.")
@click.option("--image-size", type=click.IntRange(16), default=None,
              help="Eval resolution [default: the run's, stored in a gtaseg checkpoint; else 224, 112 with --data synthetic].")
@click.option("--batch-size", type=click.IntRange(1), default=64, help="Images per forward pass.")
@click.option("--workers", type=click.IntRange(0), default=2, help="Data-loader worker processes.")
@click.option("--device", default="auto", help="auto (CUDA when available), cpu, cuda, ...")
@click.option("--on-bad-image", type=click.Choice(list(BAD_IMAGE_POLICIES)), default="stop",
              help="An unreadable image file: stop with its name, or skip it (and count it in the report).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write the accuracy (top1, top5, images scored, image size, crop) as JSON.")
def eval_acc(ckpt: str, data: str | None, data_root: str | None, split: str, synthetic_opts: tuple[str, ...],
             arch: str | None, image_size: int | None, batch_size: int, workers: int, device: str, on_bad_image: str,
             out: str | None) -> None:
    """Top-1 and top-5 accuracy of a fine-tuned checkpoint, through the accuracy path training uses: the run's
    image size and centre crop (stored in its model.safetensors), so it reproduces final.json."""
    from gtaseg.config import PRESETS, preset_name
    from gtaseg.data.pipeline import BadImages, LoaderSettings
    from gtaseg.devices import pick_device
    from gtaseg.evaluation.end_of_run import split_accuracy
    from gtaseg.models import load_model

    if data is None and data_root is None:
        raise click.UsageError("give --data-root (an ImageFolder root) or --data synthetic")
    data = data or str(data_root)
    test = _load_split(data, data_root, split, synthetic_opts)
    model, info = load_model(ckpt, arch=arch)
    if model.num_classes != len(test.classes):
        raise GtasegError(f"{ckpt}: its head has {model.num_classes} classes but {data} ({split}) has {len(test.classes)}")
    if info.classes is not None and list(info.classes) != list(test.classes):
        raise GtasegError(f"{ckpt}: trained on other class names than {data} ({split}) has, or in another order")
    preset = PRESETS[preset_name(data)]
    size = image_size or info.image_size or preset["image_size"]
    crop = info.eval_crop_pct if info.eval_crop_pct is not None else preset["eval_crop_pct"]
    dev = pick_device(device)
    bad = BadImages(on_bad_image)
    acc = split_accuracy(model.to(dev), info, test, LoaderSettings(size, crop, batch_size, workers, dev, bad),
                         desc=f"eval {split}")
    click.echo(f"{'top1':>8}{'top5':>8}{'images':>8}")
    click.echo(f"{acc['top1']:>8.2f}{acc['top5']:>8.2f}{acc['count']:>8}")
    if bad.skipped:
        click.echo(f"{len(bad.skipped)} unreadable images skipped")
    if out:
        write_json(out, {"model": {"ckpt": ckpt, "arch": info.arch}, "data": data, "split": split,
                         "image_size": size, "crop_pct": crop, **acc, "skipped_images": len(bad.skipped)})
        click.echo(f"report written to {out}")
