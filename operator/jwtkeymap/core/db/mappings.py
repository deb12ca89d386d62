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
) -> str | None:
    """INSERT one mapping row; return its id (None when ``if_absent`` and it was taken)."""
    columns, values = _columns(content, actor, scoped)
    sql = (
        f"INSERT INTO {MAPPING_TABLE} (id, {', '.join(columns)}, created_by, updated_by, "
        f"created_at, updated_at) VALUES ($1, {', '.join(columns.values())}, $7, $7, now(), now())"
    )
    if if_absent:
        sql += " ON CONFLICT DO NOTHING"
    value = await conn.fetchval(sql + " RETURNING id", str(uuid.uuid4()), *values)
    return None if value is None else str(value)


async def update(
    conn: asyncpg.Connection, mapping_id: str, content: Content, *, scoped: bool, actor: str
) -> None:
    """Rewrite one mapping row in place (identity included: one statement, no gap)."""
    columns, values = _columns(content, actor, scoped)
    sets = ", ".join(f"{name} = {param}" for name, param in columns.items())
    sql = f"UPDATE {MAPPING_TABLE} SET {sets}, updated_by = $7, updated_at = now() WHERE id = $1"
    await conn.execute(sql, mapping_id, *values)


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
    return await _fetch(conn, "WHERE o.owner = $1", [owner], scoped=scoped, lock=lock)


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
    sql = select_mappings(scoped) + where + _ORDER + (" FOR UPDATE OF m" if lock else "")
    return [mapping_row(r) for r in await conn.fetch(sql, *args)]


def _settled_select(scoped: bool, owner_match: str) -> str:
    """Owned rows with whether their key exists and how many rows their owner holds."""
    return (
        f"SELECT {MAPPING_COLUMNS}, {issuer_column(scoped)}, "
        f"EXISTS (SELECT 1 FROM {TOKEN_TABLE} k WHERE k.token = m.token) AS key_exists, "
        f"(SELECT count(*) FROM {OWNER_TABLE} x WHERE x.owner = o.owner) AS owned "
        f"FROM {MAPPING_TABLE} m "
        f"JOIN {OWNER_TABLE} o ON o.mapping_id = m.id AND o.owner {owner_match} "
    )


async def settled(
    conn: asyncpg.Connection, identity: MappingIdentity, owner: str, *, scoped: bool
) -> tuple[MappingRow, bool, int] | None:
    """``owner``'s row at this identity, whether its key exists, and how many rows it owns.

    One plain read (no transaction, no lock): the resync's "already as desired?" check.
    """
    where, args = identity_where(identity, scoped)
    sql = _settled_select(scoped, f"= ${len(args) + 1}") + f"WHERE {where}"
    row = await conn.fetchrow(sql, *args, owner)
    if row is None:
        return None
    return mapping_row(row), bool(row["key_exists"]), int(row["owned"])


async def settled_under(
    conn: asyncpg.Connection, prefix: str, *, scoped: bool
) -> list[tuple[MappingRow, bool, int]]:
    """:func:`settled` for every row owned under ``prefix``, in one read (a resync's)."""
    rows = await conn.fetch(_settled_select(scoped, "LIKE $1") + _ORDER, _like(prefix))
    return [(mapping_row(r), bool(r["key_exists"]), int(r["owned"])) for r in rows]


def _like(prefix: str) -> str:
    """A LIKE pattern matching text that starts with ``prefix``."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def set_owner(
    conn: asyncpg.Connection, mapping_id: str, owner: str, ref: str, digest: str
) -> None:
    """Record ``owner`` as the manager of a row (replacing any previous owner)."""
    await conn.execute(
        f"INSERT INTO {OWNER_TABLE} (mapping_id, owner, ref, spec_digest, updated_at) "
        "VALUES ($1, $2, $3, $4, now()) ON CONFLICT (mapping_id) DO UPDATE SET "
        "owner = EXCLUDED.owner, ref = EXCLUDED.ref, spec_digest = EXCLUDED.spec_digest, "
        "updated_at = now()",
        mapping_id,
        owner,
        ref,
        digest,
    )


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
