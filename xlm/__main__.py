"""`python -m xlm ...`: the `xlm` command (xlm/cli.py)."""

from xlm.cli import command

command()
