"""``gtaseg table4``: the attention of a sweep's chosen models on real photos (the paper's Table 4)."""
from __future__ import annotations

from pathlib import Path

import click

from gtaseg.cli.protocol_options import run_options, voc_root_option


@click.command("table4", context_settings={"show_default": True})
@click.argument("runs_dir", type=click.Path(file_okay=False, exists=True))
@voc_root_option("VOC-layout segmentation folder (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/).")
@click.option("--split", default="val", help="ImageSets/Segmentation/<split>.txt: the images the Jaccard is on.")
@click.option("--image-size", "sizes", type=click.IntRange(14), multiple=True, default=(224, 480),
              help="Jaccard at each of these sizes (repeat the option), under eval-voc's default protocol.")
@click.option("--boxes-root", type=click.Path(file_okay=False, exists=True), default=None,
              help="VOC-layout folder with Annotations/*.xml and ImageSets/Main/ for CorLoc [default: --voc-root].")
@click.option("--boxes-split", default="trainval", help="ImageSets/Main/<split>.txt: the images CorLoc is on.")
@click.option("--corloc-size", type=click.IntRange(0), default=224,
              help="CorLoc (eval-corloc's default protocol) at this size; 0 for none.")
@click.option("--full-split", type=click.IntRange(1), default=None,
              help="How many images the full split has, when the folder holds part of it (VOC 2012 val: 1449); "
                   "the caption then says 'n of N'.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Where table4.md, table4.csv and table4_paired.csv go [default: RUNS_DIR].")
@run_options
def table4(runs_dir: str, voc_root: str, split: str, sizes: tuple[int, ...], boxes_root: str | None,
           boxes_split: str, corloc_size: int, full_split: int | None, out: str | None, batch_size: int,
           workers: int, device: str) -> None:
    """Score the [cls] attention of the models that Table 2 of `gtaseg report RUNS_DIR` chose (every seed of
    each chosen setting) and of their source: best-head and merged Jaccard on a VOC segmentation split at each
    --image-size, and CorLoc on VOC boxes. Prints the table and writes table4.md and table4.csv; with GTA
    against each rival (paired by seed, with a bootstrap interval over images and seeds) in table4_paired.csv.

    Each model's scores are stored in its run folder (attention/<measure>.json, the source's under
    RUNS_DIR/.sources/) and reused while the data and protocol stay the same, so the command can be run again
    as a sweep adds seeds. A chosen run without model.safetensors or stored scores is left out and named.
    """
    from gtaseg.evaluation.model_scores import corloc_measure, jaccard_measure
    from gtaseg.evaluation.protocols import resolve
    from gtaseg.report.table4 import make_table4

    measures = [jaccard_measure(voc_root, resolve("gtaseg", image_size=s), split) for s in dict.fromkeys(sizes)]
    if corloc_size:
        measures.append(corloc_measure(boxes_root or voc_root, resolve("gtaseg", image_size=corloc_size), boxes_split))
    result = make_table4(Path(runs_dir), measures, out, full_split=full_split, batch_size=batch_size,
                         workers=workers, device=device, log=lambda s: click.echo(s, err=True))
    click.echo(result.markdown, nl=False)
    click.echo(f"wrote {Path(out or runs_dir) / 'table4.md'}, {Path(out or runs_dir) / 'table4.csv'}", err=True)
