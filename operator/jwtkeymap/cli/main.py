"""The root ``jwtkeymap`` group and the console-script entry point.

Every command lives in its own module and is imported only when it is invoked
(or listed by ``--help``), so ``jwtkeymap migrate`` never loads kopf or the
HTTP server, and a command's heavy imports stay out of the others.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import ClassVar

import click

from jwtkeymap import __version__
from jwtkeymap.cli.context import Group

# name -> "module:attribute"; loaded on first use.
COMMANDS: dict[str, str] = {
    "migrate": "jwtkeymap.cli.database:migrate",
    "key": "jwtkeymap.cli.keys:key",
    "map": "jwtkeymap.cli.mappings:map_group",
    "resolve": "jwtkeymap.cli.resolve:resolve",
    "resolver": "jwtkeymap.cli.resolver:resolver",
    "operator": "jwtkeymap.cli.operator:operator",
    "apply": "jwtkeymap.cli.offline:apply",
    "diff": "jwtkeymap.cli.offline:diff",
    "inject": "jwtkeymap.cli.inject:inject",
    "demo": "jwtkeymap.cli.demo:demo",
}


class LazyGroup(Group):
    """The root group: its commands are imported on demand."""

    root: ClassVar[bool] = True

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command whose module is present, sorted."""
        return sorted(name for name, target in COMMANDS.items() if _importable(target))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Import the command's module and return the command (None if it cannot load)."""
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        try:
            loaded = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            return None
        return loaded if isinstance(loaded, click.Command) else None


def _importable(target: str) -> bool:
    return importlib.util.find_spec(target.partition(":")[0]) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="jwtkeymap")
def cli() -> None:
    """Map JWT claims to LLM-gateway virtual keys, and enforce the unregistered-client policy.

    The global options --config, --database-url and --log-level may come before or
    after the subcommand; a value given after the subcommand wins.
    """


def main() -> None:
    """Console-script entry point."""
    cli()
