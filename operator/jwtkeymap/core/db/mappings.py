"""Statements on ``LiteLLM_JWTKeyMapping`` rows and their owners, each on a caller's connection.

The caller holds the connection (and the transaction, where one is needed):
the reconcile writer, auto-registration and the store's single statements all
use these, so each statement exists once. The triggers installed by
``schema.migrate`` NOTIFY every change, inside the same transaction.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from typing import Any, Final

import asyncpg

from jwtkeymap.core.cache import Entry
from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db.rows import (
    KEY_COLUMNS,
    MAPPING_COLUMNS,
    MappingRow,
    entry,
    identity_where,
    issuer_column,
    mapping_row,
    select_mappings,
)
from jwtkeymap.core.db.schema import MAPPING_TABLE, OWNER_TABLE, TOKEN_TABLE

_ORDER: Final = " ORDER BY m.created_at, m.id"


@dataclasses.dataclass(frozen=True, slots=True)
class Content:
    """What a mapping row says: identity, key (by hash), description, on or off."""

    identity: MappingIdentity
    token_hash: str = dataclasses.field(repr=False)
    description: str | None = None
    active: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class Ownership:
    """Who manages a mapping row: the owner id, its human name, and the digest it declared."""

    owner: str
    ref: str
    digest: str


# The content columns: $2…$6, then the actor as $7, then the issuer as $8 when scoped.
_COLUMNS: Final = ("jwt_claim_name", "jwt_claim_value", "token", "description", "is_active")


def _columns(content: Content, actor: str, scoped: bool) -> tuple[dict[str, str], list[Any]]:
    """Each content column with its placeholder, and the values of ``$2`` onwards."""
    columns = {name: f"${n}" for n, name in enumerate(_COLUMNS, start=2)}
    ident = content.identity
    values: list[Any] = [
        ident.claim_name,
        ident.claim_value,
        content.token_hash,
        content.description,
        content.active,
        actor,
    ]
    if scoped:
        columns["jwt_issuer"] = "$8"
        values.append(ident.issuer)
    return columns, values


async def insert(
    conn: asyncpg.Connection,
    content: Content,
    *,
    scoped: bool,
    actor: str,
    if_absent: bool = False,
    owned: Ownership | None = None,
) -> str | None:
    """INSERT one mapping row, and its owner if ``owned``, in one statement; return its id.

    None when ``if_absent`` and the identity was taken (then no owner is recorded either).
    """
    columns, values = _columns(content, actor, scoped)
    sql = (
        f"INSERT INTO {MAPPING_TABLE} (id, {', '.join(columns)}, created_by, updated_by, "
        f"created_at, updated_at) VALUES ($1, {', '.join(columns.values())}, $7, $7, now(), now())"
    )
    if if_absent:
        sql += " ON CONFLICT DO NOTHING"
    sql, values = _with_owner(sql, values, owned)
    if owned is None:
        sql += " RETURNING id"
    value = await conn.fetchval(sql, str(uuid.uuid4()), *values)
    return None if value is None else str(value)


async def update(
    conn: asyncpg.Connection,
    mapping_id: str,
    content: Content,
    *,
    scoped: bool,
    actor: str,
    owned: Ownership | None = None,
) -> None:
    """Rewrite one mapping row in place (identity included: one statement, no gap).

    With ``owned``, the same statement records the row's owner.
    """
    columns, values = _columns(content, actor, scoped)
    sets = ", ".join(f"{name} = {param}" for name, param in columns.items())
    sql = f"UPDATE {MAPPING_TABLE} SET {sets}, updated_by = $7, updated_at = now() WHERE id = $1"
    sql, values = _with_owner(sql, values, owned)
    await conn.execute(sql, mapping_id, *values)


def _with_owner(writes: str, values: list[Any], owned: Ownership | None) -> tuple[str, list[Any]]:
    """Chain an owner upsert to a write of mapping rows: one round trip, not two."""
    if owned is None:
        return writes, values
    first = len(values) + 2  # $1 is the mapping id, the values follow
    upsert = _upsert_owner("SELECT id FROM written", first)
    sql = f"WITH written AS ({writes} RETURNING id) {upsert}"
    return sql, [*values, owned.owner, owned.ref, owned.digest]


def _upsert_owner(ids: str, first: int) -> str:
    """Record an owner (``$first`` onwards: owner, ref, digest) for each id ``ids`` selects."""
    return (
        f"INSERT INTO {OWNER_TABLE} (mapping_id, owner, ref, spec_digest, updated_at) "
        f"SELECT id, ${first}::text, ${first + 1}::text, ${first + 2}::text, now() FROM ({ids}) i "
        "ON CONFLICT (mapping_id) DO UPDATE SET owner = EXCLUDED.owner, ref = EXCLUDED.ref, "
        "spec_digest = EXCLUDED.spec_digest, updated_at = now() RETURNING mapping_id"
    )


async def set_active(conn: asyncpg.Connection, mapping_id: str, active: bool, actor: str) -> bool:
    """Switch a mapping on or off; return False when there is no such row."""
    updated = await conn.fetchval(
        f"UPDATE {MAPPING_TABLE} SET is_active = $2, updated_by = $3, updated_at = now() "
        "WHERE id = $1 RETURNING id",
        mapping_id,
        active,
        actor,
    )
    return updated is not None


async def delete(conn: asyncpg.Connection, mapping_id: str) -> bool:
    """Delete a mapping row (its owner row goes with it); False if it was already gone."""
    deleted = await conn.fetchval(
        f"DELETE FROM {MAPPING_TABLE} WHERE id = $1 RETURNING id", mapping_id
    )
    return deleted is not None


async def delete_owned(conn: asyncpg.Connection, owner: str, *, scoped: bool) -> list[MappingRow]:
    """Delete every row ``owner`` holds in one statement (their owner rows go with them).

    Return the rows deleted, oldest first: the statement locks each row as it deletes it,
    so a row a concurrent writer removed first is not reported.
    """
    rows = await conn.fetch(
        f"DELETE FROM {MAPPING_TABLE} m USING {OWNER_TABLE} o "
        f"WHERE o.mapping_id = m.id AND o.owner = $1 "
        f"RETURNING {MAPPING_COLUMNS}, {issuer_column(scoped)}",
        owner,
    )
    return sorted((mapping_row(r) for r in rows), key=lambda row: (row.created_at, row.id))


async def get(conn: asyncpg.Connection, mapping_id: str, *, scoped: bool) -> MappingRow | None:
    """Read one mapping by id."""
    row = await conn.fetchrow(select_mappings(scoped) + "WHERE m.id = $1", mapping_id)
    return None if row is None else mapping_row(row)


async def at_identity(
    conn: asyncpg.Connection, identity: MappingIdentity, *, scoped: bool, lock: bool = False
) -> list[MappingRow]:
    """The row stored under exactly this identity (no global fallback), as a list."""
    where, args = identity_where(identity, scoped)
    return await _fetch(conn, f"WHERE {where}", args, scoped=scoped, lock=lock)


async def owned_by(
    conn: asyncpg.Connection, owner: str, *, scoped: bool, lock: bool = False
) -> list[MappingRow]:
    """Every row recorded as ``owner``'s, oldest first."""
    return [mapping_row(r) for r in await conn.fetch(_owned(scoped, lock=lock), owner)]


def _owned(scoped: bool, *, lock: bool) -> str:
    """The rows of the owner ``$1``, oldest first, each fetched by its id from its owner row.

    A LATERAL with LIMIT is a lookup the planner cannot turn back into a join: as a join,
    the plan PostgreSQL caches while the tables are small scans the whole mapping table,
    and keeps scanning it for every reconcile until the next ANALYZE.
    """
    return (
        f"SELECT {MAPPING_COLUMNS}, {issuer_column(scoped)} FROM {OWNER_TABLE} o "
        f"CROSS JOIN LATERAL (SELECT * FROM {MAPPING_TABLE} x WHERE x.id = o.mapping_id "
        f"LIMIT 1{' FOR UPDATE' if lock else ''}) m WHERE o.owner = $1{_ORDER}"
    )


async def owned_under(conn: asyncpg.Connection, prefix: str, *, scoped: bool) -> list[MappingRow]:
    """Every row whose owner id starts with ``prefix``, oldest first."""
    return await _fetch(conn, "WHERE o.owner LIKE $1", [_like(prefix)], scoped=scoped, lock=False)


async def page(
    conn: asyncpg.Connection, *, scoped: bool, claim_name: str | None, limit: int, offset: int
) -> list[MappingRow]:
    """A page of mappings, newest first, optionally for one claim name."""
    rows = await conn.fetch(
        select_mappings(scoped) + "WHERE ($1::text IS NULL OR m.jwt_claim_name = $1) "
        "ORDER BY m.created_at DESC, m.id LIMIT $2 OFFSET $3",
        claim_name,
        limit,
        offset,
    )
    return [mapping_row(r) for r in rows]


async def _fetch(
    conn: asyncpg.Connection, where: str, args: Sequence[Any], *, scoped: bool, lock: bool
) -> list[MappingRow]:
    sql = _select(where, scoped=scoped, lock=lock)
    return [mapping_row(r) for r in await conn.fetch(sql, *args)]


def _select(where: str, *, scoped: bool, lock: bool) -> str:
    """Mapping rows with their owners, oldest first; locked ``FOR UPDATE`` with ``lock``."""
    return select_mappings(scoped) + where + _ORDER + (" FOR UPDATE OF m" if lock else "")


def _settled_select(scoped: bool, owner_match: str) -> str:
    """Owned rows with whether their key exists and how many rows their owner holds."""
    return (
        f"SELECT {MAPPING_COLUMNS}, {issuer_column(scoped)}, "
        f"EXISTS (SELECT 1 FROM {TOKEN_TABLE} k WHERE k.token = m.token) AS key_exists, "
        f"(SELECT count(*) FROM {OWNER_TABLE} x WHERE x.owner = o.owner) AS owned "
        f"FROM {MAPPING_TABLE} m "
        f"JOIN {OWNER_TABLE} o ON o.mapping_id = m.id AND o.owner {owner_match} "
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Found:
    """What one reconcile decides from: the owner's rows, the row at the identity, the key."""

    owned: list[MappingRow]
    at_identity: MappingRow | None
    key_exists: bool


async def find(
    conn: asyncpg.Connection,
    identity: MappingIdentity,
    owner: str,
    token_hash: str,
    *,
    scoped: bool,
    lock: bool,
) -> Found:
    """Read, in one statement, ``owner``'s rows, the row at ``identity`` and whether the key exists.

    With ``lock`` both sets of rows are locked ``FOR UPDATE`` as :func:`owned_by` and
    :func:`at_identity` lock them (one locking read each, so each rechecks its own
    condition against a row a concurrent writer changed); without it, one snapshot.
    """
    where, args = identity_where(identity, scoped, first=3)
    sql = (
        f"WITH owned AS ({_owned(scoped, lock=lock)}), "
        f"here AS ({_select(f'WHERE {where}', scoped=scoped, lock=lock)}) "
        f"SELECT k.key_exists, r.* FROM (SELECT EXISTS (SELECT 1 FROM {TOKEN_TABLE} "
        "WHERE token = $2) AS key_exists) k LEFT JOIN (SELECT true AS mine, * FROM owned "
        "UNION ALL SELECT false, * FROM here) r ON true "
        "ORDER BY r.mine DESC, r.created_at, r.id"
    )
    records = await conn.fetch(sql, owner, token_hash, *args)
    rows: dict[str, MappingRow] = {}  # our row at the identity comes twice: parsed once
    owned: list[MappingRow] = []
    here: list[MappingRow] = []
    for record in records:
        if record["mine"] is None:  # no row at all: the record says only whether the key exists
            continue
        row = rows.get(record["id"]) or rows.setdefault(record["id"], mapping_row(record))
        (owned if record["mine"] else here).append(row)
    return Found(owned, here[0] if here else None, bool(records[0]["key_exists"]))


async def settled_under(
    conn: asyncpg.Connection, prefix: str, *, scoped: bool
) -> list[tuple[MappingRow, bool, int]]:
    """Each row owned under ``prefix``, whether its key exists, how many rows its owner holds."""
    rows = await conn.fetch(_settled_select(scoped, "LIKE $1") + _ORDER, _like(prefix))
    return [(mapping_row(r), bool(r["key_exists"]), int(r["owned"])) for r in rows]


def _like(prefix: str) -> str:
    """A LIKE pattern matching text that starts with ``prefix``."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def set_owner(conn: asyncpg.Connection, mapping_id: str, owned: Ownership) -> None:
    """Record the manager of a row (replacing any previous owner)."""
    sql = _upsert_owner("SELECT $1::text AS id", 2)
    await conn.execute(sql, mapping_id, owned.owner, owned.ref, owned.digest)


async def release(conn: asyncpg.Connection, owner: str) -> None:
    """Forget that ``owner`` manages its rows; the rows stay."""
    await conn.execute(f"DELETE FROM {OWNER_TABLE} WHERE owner = $1", owner)


async def entry_at(conn: asyncpg.Connection, identity: MappingIdentity, *, scoped: bool) -> Entry:
    """The cache entry stored under exactly this identity, joined with its key."""
    where, args = identity_where(identity, scoped)
    row = await conn.fetchrow(
        f"SELECT m.id, m.is_active, {KEY_COLUMNS} FROM {MAPPING_TABLE} m "
        f"JOIN {TOKEN_TABLE} k ON k.token = m.token WHERE {where}",
        *args,
    )
    return entry(row, scope=identity.issuer)
