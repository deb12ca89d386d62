"""Resolvers behind a real PgBouncer in transaction mode: lookups, the Redis relay, its death.

Transaction pooling gives each transaction whichever server connection is free, so
neither LISTEN nor asyncpg's named prepared statements survive it: these resolvers run
with ``db_statement_cache_size: 0`` and ``invalidation_listen: false``, and learn of
changes from a relay process (connected to PostgreSQL directly) through Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from jwtkeymap.demo.polling import wait_until
from jwtkeymap.demo.resolver import ResolverProcess, check_token
from jwtkeymap.demo.signing import SigningKey
from support.servers import PgBouncer, RedisServer, trusting_resolver

# The relay beats this often; a Redis-only resolver gives up on it after this long.
BEAT_SECONDS = 0.3
RELAY_TIMEOUT = 2.0


@pytest.fixture
async def pgbouncer(pg_server: Any) -> AsyncIterator[PgBouncer]:
    """A PgBouncer with two server connections per database, in front of the session's server."""
    port = urlsplit(pg_server.admin_url).port
    assert port is not None
    async with PgBouncer(port, pool_size=2) as bouncer:
        yield bouncer


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    async with RedisServer() as server:
        yield server


def pooled_url(bouncer: PgBouncer, database_url: str) -> str:
    """The same database, through the pooler."""
    return bouncer.url_for(urlsplit(database_url).path.lstrip("/"))


def behind_bouncer(make_settings: Any, url: str, **extra: Any) -> Any:
    """Settings of a resolver that reaches PostgreSQL only through PgBouncer."""
    settings: dict[str, Any] = {
        "database_url": url,
        "db_statement_cache_size": 0,
        "invalidation_listen": False,
        "positive_ttl_seconds": 3600,
        "negative_ttl_seconds": 3600,
        "unregistered_client_behavior": "reject",
    }
    return make_settings(**{**settings, **extra})


def relay_process(key: SigningKey, database_url: str, redis_url: str) -> ResolverProcess:
    """A resolver process that relays: LISTEN on PostgreSQL directly, publish to Redis."""
    return trusting_resolver(
        key,
        database_url,
        redis_url=redis_url,
        invalidation_relay=True,
        invalidation_liveness_seconds=BEAT_SECONDS,
        log_level="warning",
    )


async def test_lookups_and_registrations_work_through_pgbouncer_in_transaction_mode(
    make_settings, database_url, pgbouncer, start_resolver, http, map_claim, signing_key
):
    keys = {f"client-{i}": (await map_claim(f"client-{i}", team_id=f"t{i}")) for i in range(60)}
    r = await start_resolver(
        behind_bouncer(make_settings, pooled_url(pgbouncer, database_url), db_pool_max_size=4)
    )
    await r.wait_ready(http)

    # Concurrent misses on 4 client connections over 2 server connections: transactions
    # keep landing on another server connection than the one before.
    answers = await asyncio.gather(
        *(check_token(http, r.url, signing_key.sign(sub=v)) for v in keys),
        *(check_token(http, r.url, signing_key.sign(sub=f"nobody-{i}")) for i in range(20)),
    )
    mapped, unmapped = answers[: len(keys)], answers[len(keys) :]
    assert [a.key_hash for a in mapped] == [f.key.token_hash for f in keys.values()]
    assert {a.reason for a in unmapped} == {"unregistered_client"}
    assert all(a.status == 200 for a in mapped)
    pools = [p for p in pgbouncer.show("POOLS") if p["database"] != "pgbouncer"]
    assert [p["pool_mode"] for p in pools] == ["transaction"]


async def test_auto_registration_transactions_work_through_pgbouncer(
    make_settings, database_url, pgbouncer, start_resolver, http, signing_key, db
):
    settings = behind_bouncer(
        make_settings,
        pooled_url(pgbouncer, database_url),
        unregistered_client_behavior="auto_register",
        auto_register={"team_id_default": "team-auto"},
    )
    r = await start_resolver(settings)
    await r.wait_ready(http)
    answers = await asyncio.gather(
        *(check_token(http, r.url, signing_key.sign(sub=f"new-{i}")) for i in range(20))
    )
    assert {a.status for a in answers} == {200}
    count = await db.fetchval(
        """SELECT count(*) FROM "LiteLLM_JWTKeyMapping" WHERE jwt_claim_value LIKE 'new-%'"""
    )
    assert count == 20


async def test_relay_invalidates_resolvers_behind_pgbouncer(
    make_settings, database_url, pgbouncer, redis_server, start_resolver, http, map_claim,
    signing_key, db,
):  # fmt: skip
    rows = await map_claim("alice")
    relay = relay_process(signing_key, database_url, redis_server.url)
    await relay.start()
    try:
        pods = [
            await start_resolver(
                behind_bouncer(
                    make_settings,
                    pooled_url(pgbouncer, database_url),
                    redis_url=redis_server.url,
                    invalidation_relay_timeout_seconds=RELAY_TIMEOUT,
                )
            )
            for _ in range(2)
        ]
        for pod in pods:
            await pod.wait_ready(http)
            assert [s.name for s in pod.service.bus.sources] == ["redis"]
        token = signing_key.sign(sub="alice")
        for pod in pods:
            assert (await check_token(http, pod.url, token)).status == 200

        await db.execute(
            'UPDATE "LiteLLM_JWTKeyMapping" SET is_active = false WHERE id = $1', rows.mapping_id
        )

        async def all_inactive() -> bool:
            reasons = [(await check_token(http, p.url, token)).reason for p in pods]
            return reasons == ["mapping_inactive"] * len(pods)

        await wait_until(all_inactive, timeout=10, what="the relayed invalidation")
        for pod in pods:
            assert pod.service.bus.stats.received[("redis", "identity")] >= 1
    finally:
        relay.stop()


async def test_a_dead_relay_suspends_resolvers_within_the_relay_timeout(
    make_settings, database_url, pgbouncer, redis_server, start_resolver, http, map_claim,
    signing_key, db,
):  # fmt: skip
    rows = await map_claim("carol")
    relay = relay_process(signing_key, database_url, redis_server.url)
    await relay.start()
    try:
        pod = await start_resolver(
            behind_bouncer(
                make_settings,
                pooled_url(pgbouncer, database_url),
                redis_url=redis_server.url,
                invalidation_relay_timeout_seconds=RELAY_TIMEOUT,
                invalidation_liveness_seconds=0.5,
                invalidation_reconnect_max_seconds=0.3,
            )
        )
        await pod.wait_ready(http)
        token = signing_key.sign(sub="carol")
        assert (await check_token(http, pod.url, token)).status == 200  # now cached

        # The relay dies (Redis stays up), then the mapping is revoked: no message
        # can reach the pod, which must stop serving its cached allow within the bound.
        relay.kill()
        killed = time.monotonic()
        await db.execute(
            'UPDATE "LiteLLM_JWTKeyMapping" SET is_active = false WHERE id = $1', rows.mapping_id
        )

        async def refused() -> bool:
            return (await check_token(http, pod.url, token)).status != 200

        await wait_until(refused, timeout=10, what="the pod refusing after the relay died")
        stale_for = time.monotonic() - killed
        # The bound: the relay timeout after the last beat, plus one poll of the channel
        # (0.5 s), plus slack for a loaded machine.
        assert stale_for <= RELAY_TIMEOUT + 0.5 + 1.0, stale_for
        assert (await check_token(http, pod.url, token)).reason == "database_unavailable"
        assert not await pod.ready(http)
        assert pod.service.bus.stats.disconnects["redis"] >= 1

        # The relay comes back: the pod resumes from an empty cache and sees the revocation.
        await relay.start()
        await pod.wait_ready(http)
        assert (await check_token(http, pod.url, token)).reason == "mapping_inactive"
    finally:
        relay.stop()
