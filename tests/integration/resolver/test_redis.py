"""The optional Redis channel: Redis-only subscribers (PgBouncer fleets) and the relay."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from jwtkeymap.demo.polling import wait_until
from support.servers import RedisServer


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    server = RedisServer()
    await server.start()
    yield server
    await asyncio.to_thread(server.stop)


async def check(http, url: str, token: str) -> tuple[int, dict]:
    async with http.get(f"{url}/check", headers={"Authorization": f"Bearer {token}"}) as resp:
        body = await resp.read()
        return resp.status, (dict(resp.headers) if resp.status == 200 else json.loads(body))


async def test_redis_only_channel_invalidates_and_fails_closed(
    make_settings, database_url, start_resolver, http, map_claim, signing_key, db, redis_server
):
    rows = await map_claim("alice")
    r = await start_resolver(
        make_settings(
            database_url=database_url,
            unregistered_client_behavior="reject",
            positive_ttl_seconds=3600,
            invalidation_listen=False,  # as behind PgBouncer in transaction mode
            invalidation_relay_timeout_seconds=0,  # this test publishes, no relay
            redis_url=redis_server.url,
            invalidation_liveness_seconds=0.5,
            invalidation_reconnect_max_seconds=0.2,
        )
    )
    await r.wait_ready(http)
    assert [s.name for s in r.service.bus.sources] == ["redis"]
    token = signing_key.sign(sub="alice")
    assert (await check(http, r.url, token))[0] == 200

    # Without a listener the SQL change alone is not seen (the entry is cached) ...
    await db.execute(
        'UPDATE "LiteLLM_JWTKeyMapping" SET is_active = false WHERE id = $1', rows.mapping_id
    )
    assert (await check(http, r.url, token))[0] == 200
    # ... until the invalidation is published on Redis.
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.publish(
            "jwtkeymap_invalidate",
            json.dumps({"issuer": "", "claim_name": "sub", "claim_value": "alice"}),
        )
    finally:
        await client.aclose()

    async def reason() -> str | None:
        status, body = await check(http, r.url, token)
        return body["error"]["reason"] if status != 200 else None

    await wait_until(lambda: _eq(reason(), "mapping_inactive"), what="redis invalidation")
    assert r.service.bus.stats.received[("redis", "identity")] == 1

    # Redis goes away: not ready, fail closed; back: ready again without a restart.
    redis_server.kill()
    await wait_until(lambda: not r.service.bus.connected, what="redis loss noticed")
    assert not await r.ready(http)
    assert await reason() == "database_unavailable"
    await redis_server.start()
    await r.wait_ready(http)
    assert await reason() == "mapping_inactive"


async def _eq(value, expected) -> bool:
    return (await value) == expected


async def test_relay_copies_postgres_notifications_to_redis_subscribers(
    make_settings, database_url, start_resolver, http, map_claim, signing_key, db, redis_server
):
    rows = await map_claim("bob")
    common = {
        "database_url": database_url,
        "positive_ttl_seconds": 3600,
        "redis_url": redis_server.url,
    }
    relay = await start_resolver(make_settings(invalidation_relay=True, **common))
    pod = await start_resolver(make_settings(invalidation_listen=False, **common))
    await relay.wait_ready(http)
    await pod.wait_ready(http)
    assert len(relay.service.bus.sources) == 2
    token = signing_key.sign(sub="bob")
    assert (await check(http, pod.url, token))[1]["x-jwtkeymap-team-id"] == "team-a"

    await db.execute(
        "UPDATE \"LiteLLM_VerificationToken\" SET team_id = 'team-b' WHERE token = $1",
        rows.key.token_hash,
    )

    async def team() -> str | None:
        return (await check(http, pod.url, token))[1].get("x-jwtkeymap-team-id")

    await wait_until(lambda: _eq(team(), "team-b"), what="relayed invalidation")
    assert pod.service.bus.stats.received[("redis", "key")] >= 1
    assert relay.service.bus.relayed >= 1
