"""The global options and the command classes that make them work after a subcommand.

``--config``, ``--database-url`` and ``--log-level`` are accepted by the root group
and by every group and command under it, so ``jwtkeymap migrate --database-url URL``
works like ``jwtkeymap --database-url URL migrate`` (as kubectl and helm users
expect). Each occurrence records its value in the one shared :class:`Context` as
click parses it; click parses the root first and each subcommand after its parent,
so a value given after the subcommand replaces one given before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import click

from jwtkeymap.cli.errors import one_line_errors
from jwtkeymap.core.db.store import Store
from jwtkeymap.core.settings import Settings, load_settings

LOG_LEVELS = ("debug", "info", "warning", "error")
# Who rows written from the command line are attributed to.
ACTOR = "jwtkeymap:cli"
GLOBAL_OPTIONS = ("config", "database_url", "log_level")


@dataclasses.dataclass
class Context:
    """The global options, wherever on the command line they were given."""

    config: str | None = None
    database_url: str | None = None
    log_level: str | None = None
    _settings: Settings | None = dataclasses.field(default=None, init=False, repr=False)

    def load(self, **overrides: Any) -> Settings:
        """Settings with these command-specific overrides (flags beat environment beat file)."""
        return load_settings(
            self.config, database_url=self.database_url, log_level=self.log_level, **overrides
        )

    @property
    def settings(self) -> Settings:
        """The loaded settings (flags beat environment beat file), loaded once."""
        if self._settings is None:
            self._settings = self.load()
        return self._settings

    def require_database(self) -> str:
        """The database URL, or a usage error."""
        url = self.settings.database_url
        if not url:
            raise click.UsageError(
                "no database configured: pass --database-url or set JWTKEYMAP_DATABASE_URL"
            )
        return url

    async def open_store(self) -> Store:
        """Open a small pool for a one-shot command."""
        return await Store.open(
            self.require_database(),
            min_size=1,
            max_size=2,
            timeout=self.settings.db_timeout_seconds,
            statement_cache_size=self.settings.db_statement_cache_size,
        )

    @contextlib.asynccontextmanager
    async def store(self) -> AsyncIterator[Store]:
        """An open store for the duration of the block."""
        store = await self.open_store()
        try:
            yield store
        finally:
            await store.close()


pass_ctx = click.make_pass_decorator(Context, ensure=True)


def _record(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Store a global option's value in the shared Context (a later one replaces it)."""
    context = ctx.ensure_object(Context)
    if value is not None and param.name is not None:
        setattr(context, param.name, value)


def global_options(*, root: bool) -> list[click.Parameter]:
    """Fresh ``--config``, ``--database-url`` and ``--log-level`` options for one command."""
    # Only the root falls back to JWTKEYMAP_DATABASE_URL: a subcommand's option that did
    # would replace a --database-url given before the subcommand with the environment's.
    env: dict[str, Any] = {"envvar": "JWTKEYMAP_DATABASE_URL", "show_envvar": True} if root else {}
    return [
        click.Option(
            ["--config", "config"],
            type=click.Path(dir_okay=False),
            help="YAML settings file.",
            expose_value=False,
            callback=_record,
        ),
        click.Option(
            ["--database-url", "database_url"],
            help="PostgreSQL URL (postgresql://…).",
            expose_value=False,
            callback=_record,
            **env,
        ),
        click.Option(
            ["--log-level", "log_level"],
            type=click.Choice(LOG_LEVELS),
            default=None,
            expose_value=False,
            callback=_record,
        ),
    ]


class Command(click.Command):
    """A subcommand: takes the global options, may be ``async``, fails in one line.

    An ``async def`` callback is run with ``asyncio.run``; a core error from any
    command, sync or async, becomes ``Error: <kind>: <message>`` and exit code 1.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(global_options(root=False))

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command's own options as click lists them, then the global ones."""
        own, shared = _help_records(self, ctx)
        _write_options(formatter, own)
        _write_global_options(formatter, shared)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the callback (to completion, if it is a coroutine), translating core errors."""
        with one_line_errors():
            result = super().invoke(ctx)
            if inspect.iscoroutine(result):
                # Through ctx.invoke, as click runs a sync callback: a UsageError raised
                # while the coroutine runs then shows the command's usage line too.
                return ctx.invoke(asyncio.run, result)
            return result


class Group(click.Group):
    """A group that takes the global options and builds its commands from :class:`Command`."""

    command_class = Command
    group_class = type  # subgroups are of this same class
    root: ClassVar[bool] = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.root:  # listed first, as jwtkeymap --help always did
            self.params[:0] = global_options(root=True)
        else:
            self.params.extend(global_options(root=False))

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The group's own options, its subcommands, then the global options."""
        if self.root:  # the global options are its own
            super().format_options(ctx, formatter)
            return
        own, shared = _help_records(self, ctx)
        _write_options(formatter, own)
        self.format_commands(ctx, formatter)
        _write_global_options(formatter, shared)


def _help_records(
    command: click.Command, ctx: click.Context
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Help lines for a command's own options and for the global ones."""
    own: list[tuple[str, str]] = []
    shared: list[tuple[str, str]] = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is not None and isinstance(param, click.Option):
            (shared if param.name in GLOBAL_OPTIONS else own).append(record)
    return own, shared


def _write_options(formatter: click.HelpFormatter, own: list[tuple[str, str]]) -> None:
    if own:
        with formatter.section("Options"):
            formatter.write_dl(own)


def _write_global_options(formatter: click.HelpFormatter, shared: list[tuple[str, str]]) -> None:
    with formatter.section("Global options"):
        formatter.write_text(
            "Also accepted before the subcommand; a value given here wins over that one."
        )
        formatter.write_dl(shared)
