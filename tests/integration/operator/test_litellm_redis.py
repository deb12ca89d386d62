"""LiteLLM cache eviction through a real Redis: DEL + PUBLISH after commit; Redis down is harmless."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.core.db.store import Store
from jwtkeymap.core.litellm import CHANNEL, LiteLLMCache
from jwtkeymap.core.reconcile.desired import DesiredMapping, ReconcileOutcome
from jwtkeymap.core.reconcile.writer import Reconciler
from support.servers import RedisServer

ALICE = MappingIdentity("", "email", "alice@example.com")
ALICE_NEW = MappingIdentity("", "email", "alice@new.example.com")


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    server = RedisServer()
    await server.start()
    yield server
    server.stop()


async def test_changes_evict_litellm_keys_and_broadcast(
    store: Store, redis_server: RedisServer
) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    pubsub = client.pubsub()
    await pubsub.subscribe(CHANNEL)
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    for identity in (ALICE, ALICE_NEW):
        await client.set(f"jwt_key_mapping:email:{identity.claim_value}", "stale-hash")
    cache = LiteLLMCache(redis_server.url)
    reconciler = Reconciler(store, evict=cache.evict)
    _, key = await store.create_key(NewKey(), actor="test")
    want = DesiredMapping(ALICE, key.token_hash, owner="k8s:u", ref="ns/alice")
    try:
        assert (await reconciler.apply(want)).outcome is ReconcileOutcome.CREATED
        assert await client.exists("jwt_key_mapping:email:alice@example.com") == 0
        assert await client.exists("jwt_key_mapping:email:alice@new.example.com") == 1

        moved = DesiredMapping(ALICE_NEW, key.token_hash, owner="k8s:u", ref="ns/alice")
        assert (await reconciler.apply(moved)).outcome is ReconcileOutcome.UPDATED
        assert await client.exists("jwt_key_mapping:email:alice@new.example.com") == 0
        assert (await reconciler.apply(moved)).outcome is ReconcileOutcome.UNCHANGED

        messages = []
        async with asyncio.timeout(5):
            while len(messages) < 3:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if msg is not None:
                    messages.append(json.loads(msg["data"]))
        assert messages == [
            {"cache_key": "jwt_key_mapping:email:alice@example.com"},
            {"cache_key": "jwt_key_mapping:email:alice@example.com"},
            {"cache_key": "jwt_key_mapping:email:alice@new.example.com"},
        ]
        # Nothing more: the unchanged reconcile published nothing.
        assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3) is None
    finally:
        await pubsub.aclose()
        await client.aclose()
        await cache.close()


async def test_redis_down_never_blocks_the_reconcile(
    store: Store, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    redis_server.kill()
    cache = LiteLLMCache(redis_server.url, timeout=1)
    reconciler = Reconciler(store, evict=cache.evict)
    _, key = await store.create_key(NewKey(), actor="test")
    try:
        async with asyncio.timeout(5):
            result = await reconciler.apply(
                DesiredMapping(ALICE, key.token_hash, owner="k8s:u", ref="ns/alice")
            )
    finally:
        await cache.close()
    assert result.outcome is ReconcileOutcome.CREATED
    assert await store.find_mapping(ALICE) is not None
    assert "could not evict 1 LiteLLM cache key(s) through Redis" in caplog.text
