"""``python -m gtaseg.cli``: the ``gtaseg`` command where no console script is on PATH (torchrun's ``-m``)."""
from gtaseg.cli import main

main(prog_name="gtaseg")
