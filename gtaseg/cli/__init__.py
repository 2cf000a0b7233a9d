"""The ``gtaseg`` command: a click group; each subcommand lives in its own module."""
from __future__ import annotations

import sys

import click

from gtaseg import __version__
from gtaseg.errors import GtasegError, one_line


class _Group(click.Group):
    """Turns :class:`GtasegError` into one line on stderr and exit code 1 (a traceback only with --debug)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except GtasegError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {one_line(e)}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="gtaseg")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Fine-tune Vision Transformers with GTA and measure the quality of their [cls] attention."""
    ctx.obj = {"debug": debug}


from gtaseg.cli.train import train  # noqa: E402

main.add_command(train)

from gtaseg.cli.data import data  # noqa: E402

main.add_command(data)

from gtaseg.cli.evaluate import check_attention, eval_acc, eval_coco, eval_masks, eval_voc, visualize  # noqa: E402

main.add_command(eval_voc)
main.add_command(eval_coco)
main.add_command(eval_masks)
main.add_command(eval_acc)
main.add_command(check_attention)
main.add_command(visualize)

from gtaseg.cli.corloc import eval_corloc  # noqa: E402

main.add_command(eval_corloc)

from gtaseg.cli.sweep import report, sweep  # noqa: E402

main.add_command(sweep)
main.add_command(report)

from gtaseg.cli.table4 import table4  # noqa: E402

main.add_command(table4)
