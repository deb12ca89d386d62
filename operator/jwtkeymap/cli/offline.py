"""``jwtkeymap apply`` and ``jwtkeymap diff``: JWTKeyMapping manifests without a cluster."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

import click

from jwtkeymap.cli.context import Command, Context, pass_ctx
from jwtkeymap.cli.output import format_table
from jwtkeymap.core.db.store import Store
from jwtkeymap.core.litellm import LiteLLMCache
from jwtkeymap.core.logs import configure_logging
from jwtkeymap.core.reconcile.writer import OFFLINE_ACTOR, Reconciler
from jwtkeymap.operator.offline import Row, load, reconcile, summary

HEADER = ("RESOURCE", "ISSUER", "CLAIM", "KEY", "RESULT", "DETAIL")

_files_option = click.option(
    "-f",
    "--filename",
    "paths",
    multiple=True,
    required=True,
    help="Manifest file or folder ('-' for stdin); repeatable.",
)
_namespace_option = click.option(
    "-n",
    "--namespace",
    default="default",
    show_default=True,
    help="Namespace of manifests that name none.",
)
_env_option = click.option(
    "--secret-from-env",
    is_flag=True,
    help="Read Secrets missing from the files from JWTKEYMAP_SECRET_<NAME>_<KEY>.",
)
_prune_option = click.option(
    "--prune",
    is_flag=True,
    help="Remove mappings made by an earlier offline apply whose manifest is gone.",
)


def _offline_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options `apply` and `diff` share, in the order --help lists them."""
    for option in (_env_option, _prune_option, _namespace_option, _files_option):
        command = option(command)
    return command


def format_rows(rows: Iterable[Row]) -> str:
    """The apply/diff table, one line per resource."""
    cells = [(r.resource, r.issuer, r.claim, r.key, r.result, r.detail) for r in rows]
    return format_table([HEADER, *cells])


async def _run(
    ctx: Context,
    paths: tuple[str, ...],
    *,
    namespace: str,
    dry_run: bool,
    prune: bool,
    secret_from_env: bool,
) -> None:
    """Validate every manifest, then reconcile them (or plan it); exit 1 on any failure."""
    settings = ctx.settings
    configure_logging(settings.log_level, json=False)
    manifests = load(paths, default_namespace=namespace)
    for note in manifests.skipped:
        click.echo(note, err=True)
    if manifests.errors:
        for error in manifests.errors:
            click.echo(f"error: {error}", err=True)
        click.echo(f"{len(manifests.errors)} invalid manifest(s): nothing was applied", err=True)
        sys.exit(1)
    if not settings.database_url:
        raise click.UsageError("no database configured: pass --database-url")
    store = await Store.open(
        settings.database_url,
        min_size=1,
        max_size=2,
        timeout=settings.db_timeout_seconds,
        statement_cache_size=settings.db_statement_cache_size,
    )
    evictor = LiteLLMCache(settings.redis_url) if settings.redis_url and not dry_run else None
    try:
        reconciler = Reconciler(
            store, actor=OFFLINE_ACTOR, evict=evictor.evict if evictor else None
        )
        rows = await reconcile(
            reconciler,
            manifests,
            settings,
            dry_run=dry_run,
            prune=prune,
            secret_from_env=secret_from_env,
        )
    finally:
        if evictor is not None:
            await evictor.close()
        await store.close()
    click.echo(format_rows(rows))
    click.echo(("would: " if dry_run else "") + summary(rows), err=True)
    sys.exit(1 if any(r.failed for r in rows) else 0)


@click.command(cls=Command)
@_offline_options
@pass_ctx
async def apply(
    ctx: Context, paths: tuple[str, ...], namespace: str, prune: bool, secret_from_env: bool
) -> None:
    """Reconcile JWTKeyMapping manifests into the database, without a cluster.

    Exits 1 on any conflict, missing key or Secret, or invalid manifest.
    """
    await _run(
        ctx, paths, namespace=namespace, dry_run=False, prune=prune, secret_from_env=secret_from_env
    )


@click.command(cls=Command)
@_offline_options
@pass_ctx
async def diff(
    ctx: Context, paths: tuple[str, ...], namespace: str, prune: bool, secret_from_env: bool
) -> None:
    """Show what `apply` would change, writing nothing."""
    await _run(
        ctx, paths, namespace=namespace, dry_run=True, prune=prune, secret_from_env=secret_from_env
    )
