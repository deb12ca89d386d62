"""The store: every SQL statement jwtkeymap runs against the mapping tables.

* Only named columns are selected: LiteLLM's tables grow between releases.
* Errors are classified by SQLSTATE (23505 unique, 23503 foreign key, class 08
  and friends for outages), never by message text (W13).
* The lookup pool never holds session state, so its reset query is a no-op:
  that halves lookup latency (one round trip instead of two).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import asyncpg

from jwtkeymap.core import schema
from jwtkeymap.core.cache import UNMAPPED, Entry, Inactive, Mapped
from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.errors import (
    DatabaseUnavailable,
    KeyNotFound,
    MappingConflict,
    MappingNotFound,
    SchemaError,
    StoreError,
)
from jwtkeymap.core.keys import KeyIdentity, fingerprint, generate_key, hash_key
from jwtkeymap.core.settings import KeyDefaults

log = logging.getLogger(__name__)

AUTO_REGISTER_ACTOR: Final = "jwtkeymap:auto_register"

# SQLSTATE classes and codes that mean "the database is not there right now".
_OUTAGE_CLASSES: Final = ("08", "53", "57P")
_OUTAGE_CODES: Final = frozenset({"40001", "40P01", "55P03", "25006"})


def _is_outage(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, TimeoutError, asyncpg.InterfaceError)):
        return True
    state = getattr(exc, "sqlstate", None) or ""
    # asyncpg raises InternalClientError when a pooled connection's server went away
    # underneath it (the protocol is left mid-operation): that is an outage too.
    return (
        state.startswith(_OUTAGE_CLASSES)
        or state in _OUTAGE_CODES
        or isinstance(exc, asyncpg.InternalClientError)
    )


@contextlib.contextmanager
def translate_errors(what: str) -> Any:
    """Turn asyncpg exceptions into ``core.errors``, by SQLSTATE."""
    try:
        yield
    except (MappingConflict, KeyNotFound, SchemaError, MappingNotFound, DatabaseUnavailable):
        raise
    except asyncpg.UniqueViolationError as exc:  # 23505
        raise MappingConflict(f"{what}: the identity is already mapped") from exc
    except asyncpg.ForeignKeyViolationError as exc:  # 23503
        raise KeyNotFound(f"{what}: the key does not exist") from exc
    except asyncpg.UndefinedTableError as exc:  # 42P01
        raise SchemaError(f"{what}: tables missing, run `jwtkeymap migrate`") from exc
    except Exception as exc:
        if _is_outage(exc):
            raise DatabaseUnavailable(
                f"{what}: database unavailable ({type(exc).__name__})"
            ) from exc
        raise StoreError(f"{what} failed: {type(exc).__name__}") from exc


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    # LiteLLM's columns are TIMESTAMP(3) without time zone, written in UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


_DURATION_RE: Final = re.compile(r"^(\d+)(s|m|h|d|w|mo)$")
_DURATION_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "mo": 2592000}


def budget_period(duration: str | None) -> dt.timedelta | None:
    """Parse a LiteLLM budget duration (``30s``, ``1h``, ``7d``, ``1mo``); None for none."""
    if not duration:
        return None
    match = _DURATION_RE.match(duration)
    if not match:
        raise ValueError(f"budget_duration {duration!r} is not like 30s, 10m, 1h, 7d, 2w or 1mo")
    return dt.timedelta(seconds=int(match.group(1)) * _DURATION_UNITS[match.group(2)])


@dataclasses.dataclass(frozen=True, slots=True)
class MappingRow:
    """One row of ``LiteLLM_JWTKeyMapping`` (with its owner, if jwtkeymap manages it)."""

    id: str
    identity: MappingIdentity
    token_hash: str = dataclasses.field(repr=False)
    is_active: bool = True
    description: str | None = None
    created_by: str | None = None
    updated_by: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    owner: str | None = None
    ref: str | None = None

    @property
    def key_fingerprint(self) -> str:
        """Short digest of the mapped key's hash."""
        return fingerprint(self.token_hash)


@dataclasses.dataclass(frozen=True, slots=True)
class NewKey:
    """Identity and limits of a key to create."""

    team_id: str | None = None
    user_id: str | None = None
    org_id: str | None = None
    alias: str | None = None
    defaults: KeyDefaults = dataclasses.field(default_factory=KeyDefaults)
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class RegistrationVanished(DatabaseUnavailable):
    """Auto-registration lost a race, and the winner's row was gone when read."""


# Columns of a MappingRow (``m`` the mapping, ``o`` its owner row); add the issuer column.
MAPPING_COLUMNS = (
    "m.id, m.jwt_claim_name, m.jwt_claim_value, m.token, m.description, m.is_active, "
    "m.created_by, m.updated_by, m.created_at, m.updated_at, o.owner, o.ref"
)


_LOOKUP_COLUMNS: Final = (
    "m.is_active, k.token, k.team_id, k.user_id, k.organization_id, k.blocked, k.expires "
    'FROM "LiteLLM_JWTKeyMapping" m '
    'JOIN "LiteLLM_VerificationToken" k ON k.token = m.token '
    "WHERE m.jwt_claim_name = $1 AND m.jwt_claim_value = $2 "
)
_LOOKUP_SCOPED: Final = (
    "SELECT m.id, m.jwt_issuer, "
    + _LOOKUP_COLUMNS
    # One backward scan of LiteLLM's unique (issuer, name, value) index: the issuer's own
    # row sorts after the global one ('') and so comes first.
    + "AND m.jwt_issuer = ANY(ARRAY[$3::text, '']) ORDER BY m.jwt_issuer DESC LIMIT 1"
)
_LOOKUP_GLOBAL: Final = "SELECT m.id, '' AS jwt_issuer, " + _LOOKUP_COLUMNS + "LIMIT 1"


def _usable(conn: asyncpg.pool.PoolConnectionProxy) -> bool:
    # When its server goes away, asyncpg hands a checked-out connection back to the
    # pool by itself; the proxy we hold then refuses every call.
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        return False


async def _noop_reset(conn: asyncpg.Connection) -> None:
    """The lookup pool keeps no session state, so there is nothing to reset."""


class Store:
    """Async access to the mapping and key tables through an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool, *, timeout: float = 5.0) -> None:
        self._pool = pool
        self._timeout = timeout
        self._schema: schema.SchemaInfo | None = None
        # The lookup lane: one pooled connection kept checked out for mapping lookups,
        # so a cache miss skips the pool's acquire and release (a third of the lookup's
        # time, bench/README.md). Only with a second connection left for everything else.
        self._lane: asyncpg.pool.PoolConnectionProxy | None = None
        self._lane_busy = False
        self._lane_enabled = pool.get_max_size() >= 2

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        timeout: float = 5.0,
    ) -> Store:
        """Create the pool. With ``min_size=0`` this succeeds even while the database is down."""
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=min_size,
                max_size=max_size,
                reset=_noop_reset,
                timeout=timeout,
                command_timeout=timeout,
                server_settings={"timezone": "UTC", "application_name": "jwtkeymap"},
            )
        except Exception as exc:
            if isinstance(exc, (ValueError, asyncpg.InvalidAuthorizationSpecificationError)):
                raise StoreError(f"cannot connect to the database: {exc}") from exc
            if _is_outage(exc):
                raise DatabaseUnavailable(
                    f"database unreachable ({type(exc).__name__}: {exc})"
                ) from exc
            raise StoreError(f"cannot connect to the database: {exc}") from exc
        return cls(pool, timeout=timeout)

    async def close(self) -> None:
        """Close the pool; waits for checked-out connections up to the timeout."""
        self._lane_enabled = False
        await self._drop_lane()
        with contextlib.suppress(Exception):
            await self._pool.close()

    async def _drop_lane(self) -> None:
        """Hand the lane's connection back to the pool (which discards it if broken)."""
        lane, self._lane = self._lane, None
        if lane is not None:
            try:
                async with asyncio.timeout(self._timeout):
                    await self._pool.release(lane)
            except Exception:
                lane.terminate()

    @contextlib.asynccontextmanager
    async def connection(self, what: str) -> AsyncIterator[asyncpg.Connection]:
        """Check a connection out of the pool, translating errors for ``what``."""
        with translate_errors(what):
            async with self._pool.acquire(timeout=self._timeout) as conn:
                if self._schema is None:
                    self._schema = await schema.inspect(conn)
                yield conn

    async def schema_info(self) -> schema.SchemaInfo:
        """Describe the database (issuer column present, LiteLLM-owned)."""
        async with self.connection("inspect schema"):
            assert self._schema is not None
            return self._schema

    async def ping(self) -> None:
        """Raise DatabaseUnavailable unless a trivial query succeeds."""
        async with self.connection("ping") as conn:
            await conn.fetchval("SELECT 1", timeout=self._timeout)

    def _issuer_clause(self, identity: MappingIdentity) -> None:
        assert self._schema is not None
        if identity.issuer and not self._schema.issuer_scoped:
            raise SchemaError(
                "this database has no jwt_issuer column: only global mappings (issuer '') "
                "are possible until LiteLLM's schema is upgraded"
            )

    # -- the hot path ------------------------------------------------------------------

    async def lookup(self, identity: MappingIdentity) -> Entry:
        """Find the mapping that answers a token's identity; issuer-scoped beats global.

        The hot path of a cache miss: it runs on the lookup lane (a connection kept
        out of the pool) unless another lookup is using it, and then on the pool, with
        one deadline (``asyncio.timeout``, no extra task) over the wait and the query.
        """
        info = self._schema
        if info is None:
            async with self.connection("mapping lookup"):
                info = self._schema
            assert info is not None
        args: tuple[str, ...] = (identity.claim_name, identity.claim_value)
        query = _LOOKUP_GLOBAL
        if info.issuer_scoped:
            query, args = _LOOKUP_SCOPED, (*args, identity.issuer)
        with translate_errors("mapping lookup"):
            if self._lane_enabled and not self._lane_busy:
                self._lane_busy = True
                try:
                    return _entry(await self._lane_fetchrow(query, args))
                finally:
                    self._lane_busy = False
            # Concurrent misses: the pool.
            async with asyncio.timeout(self._timeout), self._pool.acquire() as conn:
                return _entry(await conn.fetchrow(query, *args))

    async def _lane_fetchrow(self, query: str, args: tuple[str, ...]) -> asyncpg.Record | None:
        try:
            if self._lane is not None and not _usable(self._lane):
                # Its server went away while it was idle (a restart, a terminated backend).
                await self._drop_lane()
            if self._lane is None:
                async with asyncio.timeout(self._timeout):
                    self._lane = await self._pool.acquire()
            # Bounded by the pool's command_timeout.
            return await self._lane.fetchrow(query, *args)
        except BaseException:
            # A failed or cancelled query leaves the connection in doubt: the pool
            # resets or replaces it, and the next lookup checks out a fresh one.
            await self._drop_lane()
            raise

    # -- keys --------------------------------------------------------------------------

    async def get_key(self, token_hash: str) -> KeyIdentity | None:
        """Read a key's identity by its hash."""
        async with self.connection("key lookup") as conn:
            row = await conn.fetchrow(
                "SELECT token, team_id, user_id, organization_id, blocked, expires "
                'FROM "LiteLLM_VerificationToken" WHERE token = $1',
                token_hash,
                timeout=self._timeout,
            )
        return None if row is None else _key(row)

    async def create_key(self, spec: NewKey, *, actor: str) -> tuple[str, KeyIdentity]:
        """Create a key row; return the plaintext (shown once, never stored) and its identity."""
        plaintext = generate_key()
        async with self.connection("create key") as conn:
            key = await _insert_key(conn, plaintext, spec, actor=actor, timeout=self._timeout)
        return plaintext, key

    # -- auto-registration -------------------------------------------------------------

    async def register(
        self, identity: MappingIdentity, spec: NewKey, *, description: str | None = None
    ) -> tuple[Entry, bool]:
        """Create a key and its mapping in one transaction, or return the winner's.

        Returns ``(entry, created)``. When another writer won the race, our
        transaction is rolled back (so no orphan key can exist) and the winner's
        mapping is returned; if it vanished in between, RegistrationVanished.
        """
        async with self.connection("auto-register") as conn:
            self._issuer_clause(identity)
            try:
                async with conn.transaction():
                    key = await _insert_key(
                        conn, generate_key(), spec, actor=AUTO_REGISTER_ACTOR, timeout=self._timeout
                    )
                    mapping_id = await self.insert_mapping(
                        conn,
                        identity,
                        key.token_hash,
                        description=description,
                        active=True,
                        actor=AUTO_REGISTER_ACTOR,
                        on_conflict_nothing=True,
                    )
                    if mapping_id is None:
                        raise _LostRace
                    return Mapped(mapping_id=mapping_id, scope=identity.issuer, key=key), True
            except _LostRace:
                pass
            row = await conn.fetchrow(
                "SELECT m.id, m.is_active, k.token, k.team_id, k.user_id, k.organization_id, "
                'k.blocked, k.expires FROM "LiteLLM_JWTKeyMapping" m '
                'JOIN "LiteLLM_VerificationToken" k ON k.token = m.token '
                "WHERE m.jwt_claim_name = $1 AND m.jwt_claim_value = $2"
                + (" AND m.jwt_issuer = $3" if self._scoped() else ""),
                *self._identity_args(identity),
                timeout=self._timeout,
            )
        if row is None:
            raise RegistrationVanished(
                "auto-registration lost a race and the winning mapping was removed; retry"
            )
        if not row["is_active"]:
            return Inactive(mapping_id=row["id"], scope=identity.issuer), False
        return Mapped(mapping_id=row["id"], scope=identity.issuer, key=_key(row)), False

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
            self._issuer_clause(identity)
            mapping_id = await self.insert_mapping(
                conn, identity, token_hash, description=description, active=active, actor=actor
            )
        assert mapping_id is not None
        row = await self.get_mapping(mapping_id)
        assert row is not None
        return row

    async def insert_mapping(
        self,
        conn: asyncpg.Connection,
        identity: MappingIdentity,
        token_hash: str,
        *,
        description: str | None,
        active: bool,
        actor: str,
        on_conflict_nothing: bool = False,
    ) -> str | None:
        """INSERT one mapping row on ``conn`` (the caller's transaction); return its id."""
        columns = "id, jwt_claim_name, jwt_claim_value, token, description, is_active, "
        columns += "created_by, updated_by, created_at, updated_at"
        values = "$1, $2, $3, $4, $5, $6, $7, $7, now(), now()"
        args: list[Any] = [
            str(uuid.uuid4()),
            identity.claim_name,
            identity.claim_value,
            token_hash,
            description,
            active,
            actor,
        ]
        if self._scoped():
            columns += ", jwt_issuer"
            values += ", $8"
            args.append(identity.issuer)
        sql = f'INSERT INTO "LiteLLM_JWTKeyMapping" ({columns}) VALUES ({values})'
        if on_conflict_nothing:
            sql += " ON CONFLICT DO NOTHING"
        sql += " RETURNING id"
        value = await conn.fetchval(sql, *args, timeout=self._timeout)
        return None if value is None else str(value)

    async def get_mapping(self, mapping_id: str) -> MappingRow | None:
        """Read one mapping by id."""
        async with self.connection("read mapping") as conn:
            row = await conn.fetchrow(
                f"SELECT {MAPPING_COLUMNS}{self._issuer_column()} "
                'FROM "LiteLLM_JWTKeyMapping" m '
                "LEFT JOIN jwtkeymap_mapping_owner o ON o.mapping_id = m.id WHERE m.id = $1",
                mapping_id,
                timeout=self._timeout,
            )
        return None if row is None else mapping_row(row)

    async def find_mapping(self, identity: MappingIdentity) -> MappingRow | None:
        """Read the mapping stored under exactly this identity (no global fallback)."""
        async with self.connection("find mapping") as conn:
            self._issuer_clause(identity)
            row = await conn.fetchrow(
                f"SELECT {MAPPING_COLUMNS}{self._issuer_column()} "
                'FROM "LiteLLM_JWTKeyMapping" m '
                "LEFT JOIN jwtkeymap_mapping_owner o ON o.mapping_id = m.id "
                "WHERE m.jwt_claim_name = $1 AND m.jwt_claim_value = $2"
                + (" AND m.jwt_issuer = $3" if self._scoped() else ""),
                *self._identity_args(identity),
                timeout=self._timeout,
            )
        return None if row is None else mapping_row(row)

    async def list_mappings(
        self, *, claim_name: str | None = None, limit: int = 1000, offset: int = 0
    ) -> list[MappingRow]:
        """List mappings, newest first, optionally for one claim name."""
        async with self.connection("list mappings") as conn:
            rows = await conn.fetch(
                f"SELECT {MAPPING_COLUMNS}{self._issuer_column()} "
                'FROM "LiteLLM_JWTKeyMapping" m '
                "LEFT JOIN jwtkeymap_mapping_owner o ON o.mapping_id = m.id "
                "WHERE ($1::text IS NULL OR m.jwt_claim_name = $1) "
                "ORDER BY m.created_at DESC, m.id LIMIT $2 OFFSET $3",
                claim_name,
                limit,
                offset,
                timeout=self._timeout,
            )
        return [mapping_row(r) for r in rows]

    async def set_active(self, mapping_id: str, active: bool, *, actor: str) -> MappingRow:
        """Enable or disable a mapping; MappingNotFound if there is no such row."""
        async with self.connection("update mapping") as conn:
            updated = await conn.fetchval(
                'UPDATE "LiteLLM_JWTKeyMapping" SET is_active = $2, updated_by = $3, '
                "updated_at = now() WHERE id = $1 RETURNING id",
                mapping_id,
                active,
                actor,
                timeout=self._timeout,
            )
        if updated is None:
            raise MappingNotFound(f"mapping {mapping_id} not found")
        row = await self.get_mapping(mapping_id)
        assert row is not None
        return row

    async def remove_mapping(self, mapping_id: str) -> bool:
        """Delete a mapping; return False if it was already gone."""
        async with self.connection("remove mapping") as conn:
            deleted = await conn.fetchval(
                'DELETE FROM "LiteLLM_JWTKeyMapping" WHERE id = $1 RETURNING id',
                mapping_id,
                timeout=self._timeout,
            )
        return deleted is not None

    # -- helpers -----------------------------------------------------------------------

    def _scoped(self) -> bool:
        assert self._schema is not None
        return self._schema.issuer_scoped

    def _issuer_column(self) -> str:
        return ", m.jwt_issuer" if self._scoped() else ", '' AS jwt_issuer"

    def _identity_args(self, identity: MappingIdentity) -> list[str]:
        args = [identity.claim_name, identity.claim_value]
        if self._scoped():
            args.append(identity.issuer)
        return args


class _LostRace(Exception):
    """Raised inside the registration transaction to roll it back."""


async def _insert_key(
    conn: asyncpg.Connection, plaintext: str, spec: NewKey, *, actor: str, timeout: float
) -> KeyIdentity:
    token_hash = hash_key(plaintext)
    d = spec.defaults
    period = budget_period(d.budget_duration)
    metadata = {**d.metadata, **spec.metadata}
    await conn.execute(
        'INSERT INTO "LiteLLM_VerificationToken" (token, key_name, key_alias, user_id, team_id, '
        "organization_id, models, max_budget, budget_duration, budget_reset_at, tpm_limit, "
        "rpm_limit, metadata, created_by, updated_by, created_at, updated_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, "
        "CASE WHEN $10::interval IS NULL THEN NULL ELSE now() + $10::interval END, "
        "$11, $12, $13::jsonb, $14, $14, now(), now())",
        token_hash,
        # LiteLLM's display name: the prefix and last four characters, as its UI shows them.
        f"sk-...{plaintext[-4:]}",
        spec.alias,
        spec.user_id,
        spec.team_id,
        spec.org_id,
        list(d.models),
        d.max_budget,
        d.budget_duration,
        period,
        d.tpm_limit,
        d.rpm_limit,
        json.dumps(metadata),
        actor,
        timeout=timeout,
    )
    return KeyIdentity(
        token_hash=token_hash, team_id=spec.team_id, user_id=spec.user_id, org_id=spec.org_id
    )


def _key(row: Mapping[str, Any]) -> KeyIdentity:
    return KeyIdentity(
        token_hash=row["token"],
        team_id=row["team_id"],
        user_id=row["user_id"],
        org_id=row["organization_id"],
        blocked=bool(row["blocked"]),
        expires=_utc(row["expires"]),
    )


def _entry(row: Mapping[str, Any] | None) -> Entry:
    if row is None:
        return UNMAPPED
    if not row["is_active"]:
        return Inactive(mapping_id=row["id"], scope=row["jwt_issuer"])
    return Mapped(mapping_id=row["id"], scope=row["jwt_issuer"], key=_key(row))


def mapping_row(row: Mapping[str, Any]) -> MappingRow:
    """Build a MappingRow from a record selected with MAPPING_COLUMNS and the issuer."""
    return MappingRow(
        id=row["id"],
        identity=MappingIdentity(row["jwt_issuer"], row["jwt_claim_name"], row["jwt_claim_value"]),
        token_hash=row["token"],
        is_active=row["is_active"],
        description=row["description"],
        created_by=row["created_by"],
        updated_by=row["updated_by"],
        created_at=_utc(row["created_at"]),
        updated_at=_utc(row["updated_at"]),
        owner=row["owner"],
        ref=row["ref"],
    )
