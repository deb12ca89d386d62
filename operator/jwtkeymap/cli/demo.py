"""``jwtkeymap demo``: the whole decision flow on a throwaway PostgreSQL, no cluster needed."""

from __future__ import annotations

import click

from jwtkeymap.cli.context import Command
from jwtkeymap.demo.tour import tour


@click.command(cls=Command)
def demo() -> None:
    """Show every policy's decision for sample JWTs, on a throwaway PostgreSQL."""
    tour()
