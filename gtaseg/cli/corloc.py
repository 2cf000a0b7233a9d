"""``gtaseg eval-corloc``: CorLoc of the box the [cls] attention gives, as LOST and TokenCut report."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from gtaseg.cli.protocol_options import (CKPT_OPTION, PRESET_HELP, protocol_from, protocol_options,
                                         voc_root_option)
from gtaseg.evaluation.protocols import describe
from gtaseg.io import write_json

CORLOC_HELP = """
Protocol (eval/PROTOCOL.md section 10): the image is resized and cropped as for eval-voc. The box comes
from the merged (head-mean) [cls] attention of --block thresholded at --mass (or from one head's mask,
--box-head): the largest 8-connected component of the patch mask, boxed in pixels. Ground truth: the
boxes of Annotations/<id>.xml (VOC07/VOC12 detection, split from ImageSets/Main/), scaled like the image;
where a folder has only masks, one box per 8-connected component of each class's pixels (void excluded)
of the label map resized and cropped like the image (one box per instance with --masks object). An image
is correct when its box's IoU with any ground-truth box is above 0.5; CorLoc is the percentage of correct
images. --protocol lost reproduces LOST's dino_seg: each image at its own size, zero-padded to a multiple
of the patch (--resize none), head 4 (main_lost.py's --dinoseg_head default), scipy's 4-connectivity, its
component search as written, IoU >= 0.5.
""" + PRESET_HELP


def _samples(voc_root: str, split: str, limit: int | None, boxes: str, masks: str) -> tuple[list, str]:
    from gtaseg.data.voc import voc_box_samples, voc_samples

    root = Path(voc_root)
    if boxes == "auto":
        boxes = "xml" if (root / "Annotations").is_dir() and (root / "ImageSets" / "Main" / f"{split}.txt").is_file() else "masks"
    if boxes == "xml":
        return voc_box_samples(root, split, limit), "Annotations/*.xml"
    return voc_samples(root, split, limit, masks), f"components of {masks} masks"


@click.command("eval-corloc", epilog=CORLOC_HELP)
@CKPT_OPTION
@voc_root_option("VOCdevkit/VOC2007 or VOC2012 (Annotations/, ImageSets/Main/), or a VOC segmentation folder.")
@click.option("--split", default="val", help="ImageSets/Main/<split>.txt (XML boxes) or ImageSets/Segmentation/<split>.txt (masks); LOST uses trainval.")
@click.option("--boxes", type=click.Choice(("auto", "xml", "masks")), default="auto",
              help="Ground-truth boxes from the XML annotations or from the masks [auto: XML where there are any].")
@protocol_options(corloc=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write the report (CorLoc under 'corloc', protocol card, per-image boxes) as JSON.")
def eval_corloc(ckpt: str, voc_root: str, split: str, boxes: str, out: str | None, **opts: Any) -> None:
    """CorLoc: the percentage of images where the box of the [cls] attention's largest connected
    component overlaps a ground-truth box (IoU > 0.5), under a named protocol (--protocol)."""
    from gtaseg.evaluation.runner import evaluate_corloc, load_checked

    protocol = protocol_from(opts)
    samples, source = _samples(voc_root, split, opts["limit"], boxes, protocol.masks)
    model, info, described = load_checked(ckpt, protocol, opts["arch"])
    result = evaluate_corloc(model, info, samples, protocol, batch_size=opts["batch_size"],
                             workers=opts["workers"], device=opts["device"])
    g = result.geometry
    counted = len(samples) - len(result.without_boxes)
    click.echo(f"model     {ckpt} ({info.arch}, {described['heads']} heads, block {result.block})")
    click.echo(f"data      {voc_root} ({split}): {len(samples)} images, ground truth from {source}, "
               f"{len(result.without_boxes)} without a box")
    frame = f"patch {g.patch_size}" if protocol.resize == "none" else f"crop {g.crop}, patch {g.patch_size}"
    click.echo(describe(protocol, "corloc") + f" ({frame})")
    click.echo(f"speed     {len(samples) / max(result.seconds, 1e-9):.2f} images/s ({result.seconds:.1f} s)")
    correct = sum(s.correct for s in result.scores if s.gt_boxes)
    value = "-" if result.corloc is None else f"{result.corloc:.2f}"
    click.echo(f"\nCorLoc    {value} % ({correct}/{counted} images)")
    if out:
        write_json(out, {"model": described, "data": {"format": "voc", "root": str(voc_root), "split": split,
                                                      "boxes": source}, **result.to_json()})
        click.echo(f"report written to {out}")
