"""A database that goes away at run time: 503s, never an allow by accident, then recovery."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db import schema
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.core.db.store import Store
from jwtkeymap.core.errors import DatabaseUnavailable
from jwtkeymap.core.policy import DenialReason, PolicyEngine, Verdict
from jwtkeymap.demo.postgres import ThrowawayPostgres

ISS = "https://idp.test.example"


@pytest.fixture
def private_pg() -> Iterator[ThrowawayPostgres]:
    """A server of this test's own, so it can be stopped."""
    pg = ThrowawayPostgres()
    pg.init()
    pg.start()
    yield pg
    pg.destroy()


@pytest.fixture
async def outage_store(private_pg: ThrowawayPostgres) -> AsyncIterator[Store]:
    conn = await asyncpg.connect(private_pg.url)
    await schema.migrate(conn, channel="jwtkeymap_invalidate")
    await conn.close()
    store = await Store.open(private_pg.url, min_size=0, max_size=2, timeout=2)
    yield store
    await store.close()


@pytest.mark.slow
@pytest.mark.parametrize("behavior", ["reject", "auto_register", "fallback_team_mapping"])
async def test_database_down_means_503_then_recovery(
    make_settings: Any, private_pg: ThrowawayPostgres, outage_store: Store, behavior: str
) -> None:
    _, key = await outage_store.create_key(NewKey(team_id="t"), actor="test")
    await outage_store.add_mapping(MappingIdentity("", "sub", "known"), key.token_hash, actor="t")
    r = PolicyEngine(make_settings(unregistered_client_behavior=behavior), store=outage_store)
    assert (await r.resolve({"sub": "known"}, ISS)).outcome is Verdict.MAPPED

    await asyncio.to_thread(private_pg.stop, "fast")
    for sub in ("unknown-1", "unknown-2"):
        d = await r.resolve({"sub": sub}, ISS)
        assert (d.status, d.reason) == (503, DenialReason.DATABASE_UNAVAILABLE), d
        assert not d.allowed and d.retryable
    with pytest.raises(DatabaseUnavailable):
        await outage_store.ping()

    await asyncio.to_thread(private_pg.start)
    await outage_store.ping()  # the same pool reconnects by itself
    d = await r.resolve({"sub": "unknown-3"}, ISS)
    assert d.status != 503


async def test_unreachable_database_at_open_is_unavailable() -> None:
    from jwtkeymap.demo.ports import free_port

    with pytest.raises(DatabaseUnavailable):
        await Store.open(f"postgresql://postgres@127.0.0.1:{free_port()}/x", timeout=1)
