"""The ``jwtkeymap demo`` click command: a thin wrapper over :func:`jwtkeymap.demo.run`."""

from __future__ import annotations

import click

from jwtkeymap.demo import run


@click.command()
def demo() -> None:
    """Show every policy's decision for sample JWTs, on a throwaway PostgreSQL."""
    run()
