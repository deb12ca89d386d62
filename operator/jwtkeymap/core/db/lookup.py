"""The hot path of a cache miss: find the mapping that answers a token's identity.

An issuer-scoped row beats a global one (issuer ``''``). The query is one
backward scan of LiteLLM's unique (issuer, name, value) index: the issuer's own
row sorts after the global one and so comes first.

``LookupLane`` keeps one pooled connection checked out for these lookups, so a
miss skips the pool's acquire and release (a third of the lookup's time,
bench/README.md); concurrent misses use the pool.
"""

from __future__ import annotations

import asyncio
from typing import Final

import asyncpg

from jwtkeymap.core.cache import Entry
from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db.rows import KEY_COLUMNS, entry
from jwtkeymap.core.db.schema import MAPPING_TABLE, TOKEN_TABLE

_FROM: Final = (
    f"m.is_active, {KEY_COLUMNS} FROM {MAPPING_TABLE} m "
    f"JOIN {TOKEN_TABLE} k ON k.token = m.token "
    "WHERE m.jwt_claim_name = $1 AND m.jwt_claim_value = $2 "
)
_SCOPED: Final = (
    "SELECT m.id, m.jwt_issuer, "
    + _FROM
    + "AND m.jwt_issuer = ANY(ARRAY[$3::text, '']) ORDER BY m.jwt_issuer DESC LIMIT 1"
)
_GLOBAL: Final = "SELECT m.id, '' AS jwt_issuer, " + _FROM + "LIMIT 1"


def lookup_query(identity: MappingIdentity, *, scoped: bool) -> tuple[str, tuple[str, ...]]:
    """The lookup statement for this schema, and its arguments."""
    if scoped:
        return _SCOPED, (identity.claim_name, identity.claim_value, identity.issuer)
    return _GLOBAL, (identity.claim_name, identity.claim_value)


def _usable(conn: asyncpg.pool.PoolConnectionProxy) -> bool:
    # When its server goes away, asyncpg hands a checked-out connection back to the
    # pool by itself; the proxy we hold then refuses every call.
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        return False


class LookupLane:
    """Mapping lookups on a connection kept out of the pool, or on the pool when busy.

    Off for a pool of one, so it never starves other work. A lane whose server went
    away is replaced before use; a failed or cancelled query drops it (the pool
    resets or replaces the connection, the next lookup checks out a fresh one).
    """

    def __init__(self, pool: asyncpg.Pool, *, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: asyncpg.pool.PoolConnectionProxy | None = None
        self._busy = False
        self._enabled = pool.get_max_size() >= 2

    @property
    def busy(self) -> bool:
        """Tell whether a lookup is running on the lane right now."""
        return self._busy

    @property
    def connection(self) -> asyncpg.pool.PoolConnectionProxy | None:
        """The connection the lane holds (None before the first lookup, or when off)."""
        return self._conn

    async def lookup(self, identity: MappingIdentity, *, scoped: bool) -> Entry:
        """Run the lookup: one deadline (``asyncio.timeout``, no extra task) over wait and query.

        Raises asyncpg's errors; the caller translates them.
        """
        query, args = lookup_query(identity, scoped=scoped)
        if self._enabled and not self._busy:
            self._busy = True
            try:
                return entry(await self._lane_fetchrow(query, args))
            finally:
                self._busy = False
        async with asyncio.timeout(self._timeout), self._pool.acquire() as conn:
            return entry(await conn.fetchrow(query, *args))

    async def _lane_fetchrow(self, query: str, args: tuple[str, ...]) -> asyncpg.Record | None:
        try:
            if self._conn is not None and not _usable(self._conn):
                # Its server went away while it was idle (a restart, a terminated backend).
                await self._drop()
            if self._conn is None:
                async with asyncio.timeout(self._timeout):
                    self._conn = await self._pool.acquire()
            # Bounded by the pool's command_timeout.
            return await self._conn.fetchrow(query, *args)
        except BaseException:
            await self._drop()
            raise

    async def close(self) -> None:
        """Hand the connection back and use the pool from now on."""
        self._enabled = False
        await self._drop()

    async def _drop(self) -> None:
        """Hand the lane's connection back to the pool (which discards it if broken)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                async with asyncio.timeout(self._timeout):
                    await self._pool.release(conn)
            except Exception:
                conn.terminate()
