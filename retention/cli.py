"""The command-line interface: a thin click layer over the library."""

from __future__ import annotations

import click

from retention import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="retention")
def cli() -> None:
    """Delete old runs (catalog rows plus artifact directories) safely."""


def main() -> None:
    cli()
