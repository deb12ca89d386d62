"""``jwtkeymap migrate``: create or update the database objects jwtkeymap needs."""

from __future__ import annotations

import asyncpg
import click

from jwtkeymap.cli.context import Command, Context, pass_ctx
from jwtkeymap.core.db.errors import translate_errors
from jwtkeymap.core.db.schema import migrate as migrate_schema
from jwtkeymap.core.logs import configure_logging


@click.command(cls=Command)
@pass_ctx
async def migrate(ctx: Context) -> None:
    """Create the tables, ownership table and NOTIFY triggers (idempotent)."""
    configure_logging(ctx.settings.log_level, json=False)
    url = ctx.require_database()
    with translate_errors("migrate"):
        conn = await asyncpg.connect(url, timeout=ctx.settings.db_timeout_seconds)
        try:
            report = await migrate_schema(conn, channel=ctx.settings.invalidation_channel)
        finally:
            await conn.close()
    created = ", ".join(report.created) or "nothing (already up to date)"
    click.echo(f"migrated: created {created}; {report.schema.describe()}")
