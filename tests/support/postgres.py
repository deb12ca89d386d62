"""A throwaway PostgreSQL that is migrated before the test gets it (for tests that stop it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import asyncpg

from jwtkeymap.core.db.schema import migrate
from jwtkeymap.demo.postgres import ThrowawayPostgres, throwaway_postgres


@contextlib.contextmanager
def migrated_postgres(channel: str = "jwtkeymap_invalidate") -> Iterator[ThrowawayPostgres]:
    """A private server whose ``postgres`` database is migrated."""

    async def migrate_admin_database(url: str) -> None:
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn, channel=channel)
        finally:
            await conn.close()

    with throwaway_postgres() as pg:
        asyncio.run(migrate_admin_database(pg.url))
        yield pg
