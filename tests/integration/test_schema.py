"""`migrate` on an empty database and on LiteLLM's real schema (litellm-proxy-extras)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import asyncpg
import pytest

import support.litellm as litellm
from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db import schema
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.core.db.store import Store
from jwtkeymap.core.errors import SchemaError
from jwtkeymap.core.settings import KeyDefaults

CHANNEL = "jwtkeymap_invalidate"

# Everything that defines a table's shape, for before/after comparisons.
SHAPE_SQL = """
SELECT 'column' AS kind, table_name || '.' || column_name || ' ' || data_type || ' '
       || is_nullable || ' ' || coalesce(column_default, '') AS what
FROM information_schema.columns WHERE table_schema = 'public' AND table_name LIKE 'LiteLLM_%'
UNION ALL
SELECT 'index', tablename || ' ' || indexname || ' ' || indexdef FROM pg_indexes
WHERE schemaname = 'public' AND tablename LIKE 'LiteLLM_%'
UNION ALL
SELECT 'constraint', conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
FROM pg_constraint WHERE conrelid::regclass::text LIKE '"LiteLLM_%'
ORDER BY 1, 2
"""


async def shape(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    return [(r["kind"], r["what"]) for r in await conn.fetch(SHAPE_SQL)]


@pytest.fixture
async def empty(empty_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(empty_database_url)
    yield conn
    await conn.close()


async def test_migrate_creates_litellm_shaped_tables(empty: asyncpg.Connection) -> None:
    report = await schema.migrate(empty, channel=CHANNEL)
    assert '"LiteLLM_JWTKeyMapping"' in report.created
    assert report.schema.issuer_scoped and not report.schema.litellm_owned
    names = {r["indexname"] for r in await empty.fetch("SELECT indexname FROM pg_indexes")}
    assert "LiteLLM_JWTKeyMapping_jwt_issuer_jwt_claim_name_jwt_claim_v_key" in names
    assert "LiteLLM_VerificationToken_team_id_idx" in names
    fk = await empty.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conname = 'LiteLLM_JWTKeyMapping_token_fkey'"
    )
    assert "ON UPDATE CASCADE ON DELETE CASCADE" in fk


async def test_migrate_is_idempotent(empty: asyncpg.Connection) -> None:
    await schema.migrate(empty, channel=CHANNEL)
    before = await shape(empty)
    report = await schema.migrate(empty, channel=CHANNEL)
    assert report.created == ()
    assert await shape(empty) == before


async def test_concurrent_migrations_serialise(empty_database_url: str) -> None:
    conns = [await asyncpg.connect(empty_database_url) for _ in range(4)]
    try:
        reports = await asyncio.gather(*(schema.migrate(c, channel=CHANNEL) for c in conns))
    finally:
        for c in conns:
            await c.close()
    # Exactly one of them created the tables; none failed.
    assert sum('"LiteLLM_JWTKeyMapping"' in r.created for r in reports) == 1


async def test_stores_refuse_an_unmigrated_database(empty_database_url: str) -> None:
    store = await Store.open(empty_database_url)
    try:
        with pytest.raises(SchemaError, match="jwtkeymap migrate"):
            await store.lookup(MappingIdentity("", "sub", "x"))
    finally:
        await store.close()


async def test_litellm_schema_is_left_untouched(empty: asyncpg.Connection) -> None:
    applied = await litellm.apply(empty)
    assert applied == len(litellm.migrations()) >= 200
    before = await shape(empty)
    report = await schema.migrate(empty, channel=CHANNEL)
    assert report.created == ("jwtkeymap_* objects",)
    assert report.schema.litellm_owned and report.schema.issuer_scoped
    assert await shape(empty) == before
    own = await empty.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
        "AND tablename NOT LIKE 'LiteLLM_%' AND tablename <> '_prisma_migrations'"
    )
    assert {r["tablename"] for r in own} == {"jwtkeymap_meta", "jwtkeymap_mapping_owner"}


async def test_rows_written_by_jwtkeymap_are_valid_litellm_rows(
    empty: asyncpg.Connection, empty_database_url: str
) -> None:
    await litellm.apply(empty)
    await schema.migrate(empty, channel=CHANNEL)
    store = await Store.open(empty_database_url)
    try:
        defaults = KeyDefaults(models=["gpt-4o"], max_budget=10, budget_duration="30d", rpm_limit=5)
        spec = NewKey(team_id="team-a", user_id="u1", alias="alice", defaults=defaults)
        _, key = await store.create_key(spec, actor="test")
        ident = MappingIdentity("https://idp", "email", "alice@example.com")
        await store.add_mapping(ident, key.token_hash, actor="test")
    finally:
        await store.close()
    # LiteLLM's own lookup finds it (auth_checks.get_jwt_key_mapping_object).
    token = await empty.fetchval(
        'SELECT token FROM "LiteLLM_JWTKeyMapping" WHERE jwt_claim_name = $1 '
        "AND jwt_claim_value = $2 AND jwt_issuer = $3 AND is_active LIMIT 1",
        "email",
        "alice@example.com",
        "https://idp",
    )
    assert token == key.token_hash
    row = await empty.fetchrow(
        "SELECT models, max_budget, budget_duration, budget_reset_at, rpm_limit, spend, "
        'metadata, key_alias, team_id, created_at FROM "LiteLLM_VerificationToken" WHERE token = $1',
        token,
    )
    assert row["models"] == ["gpt-4o"] and row["max_budget"] == 10 and row["rpm_limit"] == 5
    assert row["budget_reset_at"] is not None and row["spend"] == 0
    assert row["key_alias"] == "alice" and row["team_id"] == "team-a"
    now_utc = await empty.fetchval("SELECT (now() AT TIME ZONE 'UTC')::timestamp(3)")
    assert abs((now_utc - row["created_at"]).total_seconds()) < 60


async def test_issuer_less_litellm_schema_runs_global_only(
    empty: asyncpg.Connection, empty_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await litellm.apply(empty, before=litellm.ISSUER_MIGRATION)
    before = await shape(empty)
    with caplog.at_level(logging.WARNING):
        report = await schema.migrate(empty, channel=CHANNEL)
    assert not report.schema.issuer_scoped
    assert "issuer-less" in report.schema.describe()
    assert any("jwt_issuer" in r.getMessage() for r in caplog.records)
    assert await shape(empty) == before  # still no jwt_issuer column: we never add it

    store = await Store.open(empty_database_url)
    try:
        _, key = await store.create_key(NewKey(team_id="t"), actor="test")
        await store.add_mapping(MappingIdentity("", "sub", "u1"), key.token_hash, actor="test")
        from jwtkeymap.core.cache import Mapped

        entry = await store.lookup(MappingIdentity("https://any", "sub", "u1"))
        assert isinstance(entry, Mapped) and entry.key.team_id == "t"
        with pytest.raises(SchemaError, match="jwt_issuer"):
            await store.add_mapping(
                MappingIdentity("https://x", "sub", "u2"), key.token_hash, actor="t"
            )
    finally:
        await store.close()


async def test_litellm_without_mapping_table_is_refused(empty: asyncpg.Connection) -> None:
    await litellm.apply(empty, before=litellm.MAPPING_MIGRATION)
    with pytest.raises(SchemaError, match="upgrade LiteLLM"):
        await schema.migrate(empty, channel=CHANNEL)
    assert not await empty.fetchval("SELECT to_regclass('\"LiteLLM_JWTKeyMapping\"') IS NOT NULL")


async def test_triggers_notify_changes_made_by_anyone(db: asyncpg.Connection, store: Store) -> None:
    got: asyncio.Queue[str] = asyncio.Queue()
    await db.add_listener(CHANNEL, lambda *args: got.put_nowait(args[3]))
    _, key = await store.create_key(NewKey(), actor="t")
    # A plain SQL insert, as LiteLLM's API or psql would do it.
    await db.execute(
        'INSERT INTO "LiteLLM_JWTKeyMapping"(id, jwt_claim_name, jwt_claim_value, token, jwt_issuer) '
        "VALUES ('m1', 'sub', 'a:b', $1, 'https://i')",
        key.token_hash,
    )
    payload = json.loads(await asyncio.wait_for(got.get(), 5))
    assert payload == {"issuer": "https://i", "claim_name": "sub", "claim_value": "a:b"}
    await db.execute(
        'UPDATE "LiteLLM_VerificationToken" SET spend = 1 WHERE token = $1', key.token_hash
    )
    await db.execute(
        'UPDATE "LiteLLM_VerificationToken" SET blocked = true WHERE token = $1', key.token_hash
    )
    payload = json.loads(await asyncio.wait_for(got.get(), 5))
    # A spend update does not notify; blocking does, naming the key by fingerprint only.
    assert payload == {"key": key.fingerprint}
    assert key.token_hash not in str(payload)
