"""The lookup lane: one pooled connection kept out for mapping lookups.

It must give the same answers as the pool, fall back to the pool when busy,
never starve a pool of one, and recover on its own from a lost connection.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from jwtkeymap.core.cache import Mapped, Unmapped
from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.core.db.store import Store
from jwtkeymap.core.errors import DatabaseUnavailable

ISS = "https://idp.test.example"


async def _seed(store: Store, count: int) -> str:
    _, key = await store.create_key(NewKey(team_id="t"), actor="test")
    for i in range(count):
        await store.add_mapping(MappingIdentity(ISS, "sub", f"u{i}"), key.token_hash, actor="t")
    return key.token_hash


async def test_concurrent_lookups_share_lane_and_pool_with_the_same_answers(database_url):
    store = await Store.open(database_url, min_size=1, max_size=3)
    try:
        token_hash = await _seed(store, 20)
        identities = [MappingIdentity(ISS, "sub", f"u{i % 25}") for i in range(200)]
        entries = await asyncio.gather(*(store.lookup(i) for i in identities))
        for identity, entry in zip(identities, entries, strict=True):
            if int(identity.claim_value[1:]) < 20:
                assert isinstance(entry, Mapped) and entry.key.token_hash == token_hash
            else:
                assert isinstance(entry, Unmapped)
        # The lane is back and free, and the pool still serves other work.
        assert not store.lane.busy
        await store.ping()
    finally:
        await store.close()


async def test_a_pool_of_one_has_no_lane_and_never_starves(database_url):
    store = await Store.open(database_url, min_size=1, max_size=1, timeout=2)
    try:
        await _seed(store, 1)
        assert isinstance(await store.lookup(MappingIdentity(ISS, "sub", "u0")), Mapped)
        await store.ping()  # would time out if the lookup kept the only connection
        assert store.lane.connection is None
    finally:
        await store.close()


@pytest.mark.parametrize("busy", [False, True])
async def test_lane_connection_killed_is_replaced(database_url, db, busy):
    store = await Store.open(database_url, min_size=1, max_size=2, timeout=2)
    try:
        await _seed(store, 1)
        identity = MappingIdentity(ISS, "sub", "u0")
        assert isinstance(await store.lookup(identity), Mapped)
        pid = store.lane.connection.get_server_pid()
        if busy:
            # Killed in the middle of a query: that lookup fails closed.
            slow = asyncio.create_task(store.lane.connection.fetchval("SELECT pg_sleep(5)"))
            await asyncio.sleep(0.2)
        assert await db.fetchval("SELECT pg_terminate_backend($1)", pid)
        if busy:
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
                await slow
        failures = 0
        deadline = time.monotonic() + 10
        while True:
            try:
                entry = await store.lookup(identity)
                break
            except DatabaseUnavailable:
                failures += 1  # at most the one query that raced the termination
                assert time.monotonic() < deadline
        assert isinstance(entry, Mapped)
        assert failures <= 1
        assert store.lane.connection is not None and store.lane.connection.get_server_pid() != pid
    finally:
        await store.close()


async def test_close_returns_the_lane_so_the_pool_closes_promptly(database_url):
    store = await Store.open(database_url, min_size=1, max_size=2)
    await _seed(store, 1)
    await store.lookup(MappingIdentity(ISS, "sub", "u0"))
    assert store.lane.connection is not None
    async with asyncio.timeout(5):
        await store.close()
    assert store.lane.connection is None
