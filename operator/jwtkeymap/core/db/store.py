"""The store: the connection pool, and the operations the policy engine and the CLI use.

Each operation checks out one connection, runs statements from ``mappings``,
``keys`` and ``lookup`` on it, and translates errors once (``errors``). The
pool never holds session state, so its reset query is a no-op: one round trip
per checkout instead of two.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import asyncpg

from jwtkeymap.core.cache import Entry, Mapped, Unmapped
from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db import keys, mappings, schema
from jwtkeymap.core.db.errors import connect_error, translate_errors
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.core.db.lookup import LookupLane
from jwtkeymap.core.db.rows import MappingRow
from jwtkeymap.core.errors import DatabaseUnavailable, MappingNotFound
from jwtkeymap.core.keys import KeyIdentity, generate_key
from jwtkeymap.core.owners import AUTO_REGISTER_ACTOR, AUTO_REGISTERED
from jwtkeymap.core.reconcile.desired import spec_digest

log = logging.getLogger(__name__)

# Called with (operation, seconds) after each hot-path query: ``lookup``, ``register``.
QueryObserver = Callable[[str, float], None]


class RegistrationVanished(DatabaseUnavailable):
    """Auto-registration lost a race, and the winner's row was gone when read."""


class _LostRace(Exception):
    """Raised inside the registration transaction to roll it back."""


async def _noop_reset(conn: asyncpg.Connection) -> None:
    """The pool keeps no session state, so there is nothing to reset."""


class Store:
    """Async access to the mapping and key tables through an asyncpg pool."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        timeout: float = 5.0,
        observe: QueryObserver | None = None,
    ) -> None:
        self._pool = pool
        self._timeout = timeout
        self._schema: schema.SchemaInfo | None = None
        self._observe = observe
        self.lane = LookupLane(pool, timeout=timeout)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        timeout: float = 5.0,
        observe: QueryObserver | None = None,
        statement_cache_size: int = 100,
    ) -> Store:
        """Create the pool. With ``min_size=0`` this succeeds even while the database is down.

        ``statement_cache_size=0`` behind a pooler that hands each transaction any server
        connection (PgBouncer in transaction mode): asyncpg then prepares every statement
        unnamed, in the same round trip as its execution.
        """
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=min_size,
                max_size=max_size,
                reset=_noop_reset,
                timeout=timeout,
                command_timeout=timeout,
                statement_cache_size=statement_cache_size,
                server_settings={"timezone": "UTC", "application_name": "jwtkeymap"},
            )
        except Exception as exc:
            raise connect_error(exc) from exc
        return cls(pool, timeout=timeout, observe=observe)

    async def close(self) -> None:
        """Close the pool; waits for checked-out connections up to the timeout."""
        await self.lane.close()
        with contextlib.suppress(Exception):
            await self._pool.close()

    @contextlib.asynccontextmanager
    async def connection(self, what: str) -> AsyncIterator[asyncpg.Connection]:
        """Check a connection out of the pool, translating errors for ``what``."""
        with translate_errors(what):
            async with self._pool.acquire(timeout=self._timeout) as conn:
                if self._schema is None:
                    self._schema = await schema.inspect(conn)
                yield conn

    @property
    def scoped(self) -> bool:
        """Tell whether mappings have an issuer column (known after the first checkout)."""
        assert self._schema is not None, "no connection was checked out yet"
        return self._schema.issuer_scoped

    async def schema_info(self) -> schema.SchemaInfo:
        """Describe the database (issuer column present, LiteLLM-owned).

        Read on the pool's first checkout and kept: later calls cost no checkout at all,
        which matters to a reconcile that asks once per mapping.
        """
        if self._schema is None:
            async with self.connection("inspect schema"):
                pass
        return self._info()

    async def ping(self) -> None:
        """Raise DatabaseUnavailable unless a trivial query succeeds."""
        async with self.connection("ping") as conn:
            await conn.fetchval("SELECT 1", timeout=self._timeout)

    # -- the hot path ------------------------------------------------------------------

    async def lookup(self, identity: MappingIdentity) -> Entry:
        """Find the mapping that answers a token's identity; issuer-scoped beats global."""
        if self._schema is None:
            async with self.connection("mapping lookup"):
                pass
        start = time.perf_counter()
        try:
            with translate_errors("mapping lookup"):
                return await self.lane.lookup(identity, scoped=self.scoped)
        finally:
            if self._observe is not None:
                self._observe("lookup", time.perf_counter() - start)

    async def register(
        self, identity: MappingIdentity, spec: NewKey, *, description: str | None = None
    ) -> tuple[Entry, bool]:
        """Create a key and its mapping in one transaction, or return the winner's.

        Returns ``(entry, created)``. When another writer won the race, our
        transaction is rolled back (so no orphan key can exist) and the winner's
        mapping is returned; if it vanished in between, RegistrationVanished.
        """
        start = time.perf_counter()
        try:
            return await self._register(identity, spec, description)
        finally:
            if self._observe is not None:
                self._observe("register", time.perf_counter() - start)

    async def _register(
        self, identity: MappingIdentity, spec: NewKey, description: str | None
    ) -> tuple[Entry, bool]:
        async with self.connection("auto-register") as conn:
            schema.require_scope(self._info(), identity)
            try:
                async with conn.transaction():
                    key = await keys.insert_key(
                        conn, generate_key(), spec, actor=AUTO_REGISTER_ACTOR, timeout=self._timeout
                    )
                    # Owned, so that a JWTKeyMapping takes it over only where a policy says so.
                    digest = spec_digest(identity, key.token_hash, description, True)
                    mapping_id = await mappings.insert(
                        conn,
                        mappings.Content(identity, key.token_hash, description),
                        scoped=self.scoped,
                        actor=AUTO_REGISTER_ACTOR,
                        if_absent=True,
                        owned=mappings.Ownership(AUTO_REGISTERED, AUTO_REGISTERED, digest),
                    )
                    if mapping_id is None:
                        raise _LostRace
                    return Mapped(mapping_id=mapping_id, scope=identity.issuer, key=key), True
            except _LostRace:
                pass
            found = await mappings.entry_at(conn, identity, scoped=self.scoped)
        if isinstance(found, Unmapped):
            raise RegistrationVanished(
                "auto-registration lost a race and the winning mapping was removed; retry"
            )
        return found, False

    # -- keys --------------------------------------------------------------------------

    async def create_key(self, spec: NewKey, *, actor: str) -> tuple[str, KeyIdentity]:
        """Create a key row; return the plaintext (shown once, never stored) and its identity."""
        plaintext = generate_key()
        async with self.connection("create key") as conn:
            key = await keys.insert_key(conn, plaintext, spec, actor=actor, timeout=self._timeout)
        return plaintext, key

    # -- mapping management ------------------------------------------------------------

    async def add_mapping(
        self,
        identity: MappingIdentity,
        token_hash: str,
        *,
        description: str | None = None,
        active: bool = True,
        actor: str,
    ) -> MappingRow:
        """Insert a mapping; MappingConflict if the identity is taken, KeyNotFound if no key."""
        async with self.connection("add mapping") as conn:
            schema.require_scope(self._info(), identity)
            content = mappings.Content(identity, token_hash, description, active)
            mapping_id = await mappings.insert(conn, content, scoped=self.scoped, actor=actor)
            assert mapping_id is not None  # no if_absent: a clash raises instead
            row = await mappings.get(conn, mapping_id, scoped=self.scoped)
        assert row is not None
        return row

    async def get_mapping(self, mapping_id: str) -> MappingRow | None:
        """Read one mapping by id."""
        async with self.connection("read mapping") as conn:
            return await mappings.get(conn, mapping_id, scoped=self.scoped)

    async def find_mapping(self, identity: MappingIdentity) -> MappingRow | None:
        """Read the mapping stored under exactly this identity (no global fallback)."""
        async with self.connection("find mapping") as conn:
            schema.require_scope(self._info(), identity)
            found = await mappings.at_identity(conn, identity, scoped=self.scoped)
        return found[0] if found else None

    async def list_mappings(
        self, *, claim_name: str | None = None, limit: int = 1000, offset: int = 0
    ) -> list[MappingRow]:
        """List mappings, newest first, optionally for one claim name."""
        async with self.connection("list mappings") as conn:
            return await mappings.page(
                conn, scoped=self.scoped, claim_name=claim_name, limit=limit, offset=offset
            )

    async def set_active(self, mapping_id: str, active: bool, *, actor: str) -> MappingRow:
        """Enable or disable a mapping; MappingNotFound if there is no such row."""
        async with self.connection("update mapping") as conn:
            if not await mappings.set_active(conn, mapping_id, active, actor):
                raise MappingNotFound(f"mapping {mapping_id} not found")
            row = await mappings.get(conn, mapping_id, scoped=self.scoped)
        assert row is not None
        return row

    async def remove_mapping(self, mapping_id: str) -> bool:
        """Delete a mapping; return False if it was already gone."""
        async with self.connection("remove mapping") as conn:
            return await mappings.delete(conn, mapping_id)

    def _info(self) -> schema.SchemaInfo:
        assert self._schema is not None
        return self._schema
