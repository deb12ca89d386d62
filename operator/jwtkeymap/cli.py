"""The ``jwtkeymap`` command line.

Subcommands that belong to an edge (``resolver``, ``operator``, ``apply``, …)
live next to that edge and are imported only when invoked, so ``jwtkeymap
migrate`` never loads kopf or the HTTP server.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import click

from jwtkeymap import __version__
from jwtkeymap.core import keys as keylib
from jwtkeymap.core.claims import MappingIdentity, canonicalize
from jwtkeymap.core.errors import (
    ClaimError,
    ConfigError,
    DatabaseUnavailable,
    InvalidToken,
    JwtKeyMapError,
    KeyNotFound,
    MappingConflict,
    MappingNotFound,
    SchemaError,
    StoreError,
)
from jwtkeymap.core.logs import configure_logging
from jwtkeymap.core.settings import Settings, load_settings
from jwtkeymap.core.store import NewKey, Store

T = TypeVar("T")

# name -> "module:attribute"; loaded on first use.
LAZY_COMMANDS: dict[str, str] = {
    "resolver": "jwtkeymap.resolver.cli:resolver",
    "operator": "jwtkeymap.operator.cli:operator",
    "apply": "jwtkeymap.operator.cli:apply",
    "diff": "jwtkeymap.operator.cli:diff",
    "inject": "jwtkeymap.operator.inject:inject",
    "demo": "jwtkeymap.demo:demo",
}


class LazyGroup(click.Group):
    """A click group whose edge commands are imported on demand."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command, eager and lazy, sorted."""
        available = [n for n, t in LAZY_COMMANDS.items() if _importable(t)]
        return sorted({*super().list_commands(ctx), *available})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Return an eager command, or import a lazy one."""
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None or cmd_name not in LAZY_COMMANDS:
            return cmd
        module, _, attr = LAZY_COMMANDS[cmd_name].partition(":")
        try:
            loaded = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            return None
        return loaded if isinstance(loaded, click.Command) else None


def _importable(target: str) -> bool:
    module = target.partition(":")[0]
    return importlib.util.find_spec(module) is not None


class Context:
    """Options shared by every command."""

    def __init__(self, config: str | None, database_url: str | None, log_level: str | None):
        self.config = config
        self.database_url = database_url
        self.log_level = log_level
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        """The loaded settings (flags beat environment beat file)."""
        if self._settings is None:
            self._settings = load_settings(
                self.config, database_url=self.database_url, log_level=self.log_level
            )
        return self._settings

    def require_database(self) -> str:
        """The database URL, or a usage error."""
        url = self.settings.database_url
        if not url:
            raise click.UsageError(
                "no database configured: pass --database-url or set JWTKEYMAP_DATABASE_URL"
            )
        return url


pass_ctx = click.make_pass_decorator(Context)


def run_async(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async click command, turning core errors into one-line failures."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return asyncio.run(fn(*args, **kwargs))
        except JwtKeyMapError as exc:
            raise click.ClickException(describe_error(exc)) from None

    return wrapper


def describe_error(exc: JwtKeyMapError) -> str:
    """One line for a core error."""
    kind = {
        ConfigError: "configuration error",
        DatabaseUnavailable: "database unavailable",
        SchemaError: "schema error",
        InvalidToken: "invalid token",
        KeyNotFound: "key not found",
        MappingConflict: "conflict",
        MappingNotFound: "not found",
        ClaimError: "invalid claim",
        StoreError: "database error",
    }
    for cls, label in kind.items():
        if isinstance(exc, cls):
            return f"{label}: {exc}"
    return str(exc)


async def open_store(ctx: Context) -> Store:
    """Open a small pool for a one-shot command."""
    s = ctx.settings
    return await Store.open(
        ctx.require_database(), min_size=1, max_size=2, timeout=s.db_timeout_seconds
    )


async def with_store(ctx: Context, body: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``body`` with an open store, closing it afterwards."""
    store = await open_store(ctx)
    try:
        return await body(store)
    finally:
        await store.close()


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", type=click.Path(dir_okay=False), help="YAML settings file.")
@click.option(
    "--database-url",
    envvar="JWTKEYMAP_DATABASE_URL",
    show_envvar=True,
    help="PostgreSQL URL (postgresql://…).",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
@click.version_option(__version__, prog_name="jwtkeymap")
@click.pass_context
def cli(
    ctx: click.Context, config: str | None, database_url: str | None, log_level: str | None
) -> None:
    """Map JWT claims to LLM-gateway virtual keys, and enforce the unregistered-client policy."""
    ctx.obj = Context(config, database_url, log_level)


@cli.command()
@pass_ctx
@run_async
async def migrate(ctx: Context) -> None:
    """Create the tables, ownership table and NOTIFY triggers (idempotent)."""
    import asyncpg

    from jwtkeymap.core import schema
    from jwtkeymap.core.store import translate_errors

    configure_logging(ctx.settings.log_level, json=False)
    url = ctx.require_database()
    with translate_errors("migrate"):
        conn = await asyncpg.connect(url, timeout=ctx.settings.db_timeout_seconds)
        try:
            report = await schema.migrate(conn, channel=ctx.settings.invalidation_channel)
        finally:
            await conn.close()
    created = ", ".join(report.created) or "nothing (already up to date)"
    click.echo(f"migrated: created {created}; {report.schema.describe()}")


@cli.group()
def key() -> None:
    """Manage virtual keys."""


@key.command("create")
@click.option("--team-id")
@click.option("--user-id")
@click.option("--org-id")
@click.option("--alias")
@click.option("--models", help="Comma-separated model names the key may use.")
@pass_ctx
@run_async
async def key_create(
    ctx: Context,
    team_id: str | None,
    user_id: str | None,
    org_id: str | None,
    alias: str | None,
    models: str | None,
) -> None:
    """Create a virtual key; its plaintext is printed once and never stored."""
    from jwtkeymap.core.settings import KeyDefaults

    defaults = KeyDefaults(models=[m for m in (models or "").split(",") if m])
    spec = NewKey(team_id=team_id, user_id=user_id, org_id=org_id, alias=alias, defaults=defaults)
    plaintext, identity = await with_store(
        ctx, lambda store: store.create_key(spec, actor="jwtkeymap:cli")
    )
    click.echo(plaintext)
    click.echo(
        f"created key {identity.fingerprint} (store the value above now: it is not shown again)",
        err=True,
    )


@cli.group("map")
def map_group() -> None:
    """Manage claim → key mappings directly in the database."""


def _identity(ctx: Context, issuer: str, claim: str | None, value: str) -> MappingIdentity:
    name = claim or ctx.settings.claim_field
    try:
        canonical = canonicalize(value, field=name, casefold=ctx.settings.casefold_claim)
    except ClaimError as exc:
        raise click.BadParameter(str(exc), param_hint="VALUE") from None
    return MappingIdentity(issuer=issuer, claim_name=name, claim_value=canonical)


@map_group.command("add")
@click.argument("value")
@click.option("--claim", help="Claim name (default: the configured claim_field).")
@click.option("--issuer", default="", help="Issuer scope; empty means any trusted issuer.")
@click.option("--key", "key_plain", envvar="JWTKEYMAP_KEY", help="Plaintext virtual key.")
@click.option("--key-hash", help="sha256 hex of an existing virtual key.")
@click.option("--description")
@click.option("--inactive", is_flag=True, help="Create the mapping disabled.")
@pass_ctx
@run_async
async def map_add(
    ctx: Context,
    value: str,
    claim: str | None,
    issuer: str,
    key_plain: str | None,
    key_hash: str | None,
    description: str | None,
    inactive: bool,
) -> None:
    """Map a claim VALUE to a key (give exactly one of --key or --key-hash)."""
    if bool(key_plain) == bool(key_hash):
        raise click.UsageError("give exactly one of --key (plaintext) or --key-hash (its sha256)")
    if key_hash is not None and not keylib.is_key_hash(key_hash):
        raise click.BadParameter(
            "must be 64 lowercase hex characters; pass the plaintext with --key instead",
            param_hint="--key-hash",
        )
    token_hash = key_hash or keylib.hash_key(key_plain or "")
    identity = _identity(ctx, issuer, claim, value)
    row = await with_store(
        ctx,
        lambda store: store.add_mapping(
            identity,
            token_hash,
            description=description,
            active=not inactive,
            actor="jwtkeymap:cli",
        ),
    )
    click.echo(f"added mapping {row.id} ({row.identity.label()} -> key {row.key_fingerprint})")


@map_group.command("list")
@click.option("--claim", help="Only this claim name.")
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table")
@pass_ctx
@run_async
async def map_list(ctx: Context, claim: str | None, output: str) -> None:
    """List mappings; keys appear only as fingerprints."""
    rows = await with_store(ctx, lambda store: store.list_mappings(claim_name=claim))
    if output == "json":
        click.echo(
            json.dumps(
                [
                    {
                        "id": r.id,
                        **r.identity.to_json(),
                        "key_fingerprint": r.key_fingerprint,
                        "active": r.is_active,
                        "description": r.description,
                        "owner": r.owner,
                        "created_by": r.created_by,
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
        return
    table = [("ID", "ISSUER", "CLAIM", "VALUE", "KEY", "ACTIVE", "OWNER")]
    for r in rows:
        table.append(
            (
                r.id,
                r.identity.issuer or "*",
                r.identity.claim_name,
                r.identity.claim_value,
                r.key_fingerprint,
                "yes" if r.is_active else "no",
                r.owner or r.created_by or "",
            )
        )
    click.echo(format_table(table))


@map_group.command("disable")
@click.argument("mapping_id")
@pass_ctx
@run_async
async def map_disable(ctx: Context, mapping_id: str) -> None:
    """Disable a mapping (its client is then denied, never re-registered)."""
    row = await with_store(ctx, lambda s: s.set_active(mapping_id, False, actor="jwtkeymap:cli"))
    click.echo(f"disabled mapping {row.id} ({row.identity.label()})")


@map_group.command("enable")
@click.argument("mapping_id")
@pass_ctx
@run_async
async def map_enable(ctx: Context, mapping_id: str) -> None:
    """Enable a disabled mapping."""
    row = await with_store(ctx, lambda s: s.set_active(mapping_id, True, actor="jwtkeymap:cli"))
    click.echo(f"enabled mapping {row.id} ({row.identity.label()})")


@map_group.command("remove")
@click.argument("mapping_id")
@pass_ctx
@run_async
async def map_remove(ctx: Context, mapping_id: str) -> None:
    """Delete a mapping (the key itself is kept)."""
    removed = await with_store(ctx, lambda s: s.remove_mapping(mapping_id))
    if not removed:
        raise MappingNotFound(f"mapping {mapping_id} not found")
    click.echo(f"removed mapping {mapping_id}")


@cli.command()
@click.option("--token", envvar="JWTKEYMAP_TOKEN", required=True, help="The JWT to resolve.")
@pass_ctx
@run_async
async def resolve(ctx: Context, token: str) -> None:
    """Verify a token and print the policy's decision as JSON (exit 1 when denied)."""
    import aiohttp

    from jwtkeymap.core.policy import Resolver
    from jwtkeymap.core.tokens import TokenVerifier

    settings = ctx.settings
    if not settings.issuers:
        raise ConfigError("no trusted issuers configured: add `issuers:` to the config file")
    async with aiohttp.ClientSession() as session:
        verifier = TokenVerifier(settings, session=session)
        verified = await verifier.verify(token.strip())
    store = await open_store(ctx) if settings.database_url else None
    try:
        decision = await Resolver(settings, store=store).resolve(verified.claims, verified.issuer)
    finally:
        if store is not None:
            await store.close()
    click.echo(json.dumps(decision.to_json(), indent=2))
    if not decision.allowed:
        sys.exit(1)


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Align rows of strings into columns."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def main() -> None:
    """Console-script entry point."""
    try:
        cli(standalone_mode=True)
    except ConfigError as exc:  # raised while loading settings lazily
        click.echo(f"Error: {describe_error(exc)}", err=True)
        sys.exit(2)
