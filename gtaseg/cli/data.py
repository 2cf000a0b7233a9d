"""``gtaseg data``: inspect the fine-grained benchmarks on disk before training on them."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from gtaseg.data.finegrained import DATASETS, check_dataset

# A copy missing a whole folder lists thousands of images; the first few name the folder well enough.
_MAX_PROBLEMS_SHOWN = 20


@click.group()
def data() -> None:
    """Inspect the fine-grained benchmarks (see data/README.md for the expected layouts)."""


@data.command()
@click.option("--dataset", "name", required=True, type=click.Choice(list(DATASETS), case_sensitive=False),
              help="Which benchmark.")
@click.option("--data-root", required=True, type=click.Path(path_type=Path),
              help="The folder holding the official top-level dataset folder (or that folder itself).")
def check(name: str, data_root: Path) -> None:
    """Compare a dataset copy with the official sizes and list missing or malformed files; exit 1 on problems."""
    info = DATASETS[name]
    report = check_dataset(name, data_root)
    click.echo(f"{info.title} ({name}) in {report.base}")
    if info.mask_reader is not None:
        click.echo(f"masks: {report.masks or 'none (optional, see data/README.md)'}")
    click.echo(f"{'split':<10}{'expected':>10}{'found':>10}")
    for row in report.rows:
        click.echo(f"{row.what:<10}{row.expected:>10}{'-' if row.found is None else row.found:>10}")
    if report.ok:
        click.echo("ok")
        return
    click.echo(f"{len(report.problems)} problem(s):")
    for problem in report.problems[:_MAX_PROBLEMS_SHOWN]:
        click.echo(f"  {problem}")
    if len(report.problems) > _MAX_PROBLEMS_SHOWN:
        click.echo(f"  ... and {len(report.problems) - _MAX_PROBLEMS_SHOWN} more")
    sys.exit(1)
