"""The invalidation bus against a real PostgreSQL: changes by plain SQL, LISTEN killed."""

from __future__ import annotations

import datetime as dt
import json

import asyncpg

from jwtkeymap.core.clock import ManualClock
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.demo.polling import wait_until


async def check(http, url: str, token: str) -> tuple[int, dict[str, str]]:
    async with http.get(f"{url}/check", headers={"Authorization": f"Bearer {token}"}) as resp:
        body = await resp.read()
        headers = {k.lower(): v for k, v in resp.headers.items()}
        if resp.status != 200:
            headers["reason"] = json.loads(body)["error"]["reason"]
        return resp.status, headers


async def test_mapping_changed_by_sql_is_seen_without_waiting_for_ttl(
    make_settings, database_url, start_resolver, http, map_claim, signing_key, db, store
):
    first = await map_claim("alice")
    _, other = await store.create_key(NewKey(), actor="t")
    r = await start_resolver(
        make_settings(
            database_url=database_url,
            unregistered_client_behavior="reject",
            positive_ttl_seconds=3600,
            negative_ttl_seconds=3600,
        )
    )
    await r.wait_ready(http)
    alice, bob = signing_key.sign(sub="alice"), signing_key.sign(sub="bob")
    assert (await check(http, r.url, alice))[1]["x-jwtkeymap-key-hash"] == first.key.token_hash
    assert (await check(http, r.url, bob))[1]["reason"] == "unregistered_client"
    cache = r.service.engine.cache
    assert len(cache) == 2  # both answers are cached for an hour

    async def reason(token: str) -> str | None:
        _, headers = await check(http, r.url, token)
        return headers.get("reason") or headers["x-jwtkeymap-key-hash"]

    # Re-pointed, disabled, deleted, inserted: each by SQL, as LiteLLM's API or psql would.
    await db.execute(
        'UPDATE "LiteLLM_JWTKeyMapping" SET token = $1 WHERE jwt_claim_value = $2',
        other.token_hash,
        "alice",
    )
    await wait_until(lambda: _eq(reason(alice), other.token_hash), what="re-pointed mapping")
    await db.execute(
        "UPDATE \"LiteLLM_JWTKeyMapping\" SET is_active = false WHERE jwt_claim_value = 'alice'"
    )
    await wait_until(lambda: _eq(reason(alice), "mapping_inactive"), what="disabled mapping")
    await db.execute("DELETE FROM \"LiteLLM_JWTKeyMapping\" WHERE jwt_claim_value = 'alice'")
    await wait_until(lambda: _eq(reason(alice), "unregistered_client"), what="deleted mapping")
    await db.execute(
        'INSERT INTO "LiteLLM_JWTKeyMapping" (id, jwt_claim_name, jwt_claim_value, token) '
        "VALUES ('m-bob', 'sub', 'bob', $1)",
        first.key.token_hash,
    )
    await wait_until(lambda: _eq(reason(bob), first.key.token_hash), what="inserted mapping")
    received = r.service.bus.stats.received
    assert received[("postgres", "identity")] >= 4


async def _eq(value, expected) -> bool:
    return (await value) == expected


async def test_key_changed_by_sql_is_seen(
    make_settings, database_url, start_resolver, http, map_claim, signing_key, db
):
    rows = await map_claim("carol", team_id="red")
    r = await start_resolver(make_settings(database_url=database_url, positive_ttl_seconds=3600))
    await r.wait_ready(http)
    token = signing_key.sign(sub="carol")
    assert (await check(http, r.url, token))[1]["x-jwtkeymap-team-id"] == "red"

    await db.execute(
        "UPDATE \"LiteLLM_VerificationToken\" SET team_id = 'green' WHERE token = $1",
        rows.key.token_hash,
    )

    async def team() -> str | None:
        return (await check(http, r.url, token))[1].get("x-jwtkeymap-team-id")

    await wait_until(lambda: _eq(team(), "green"), what="team change")
    await db.execute(
        'UPDATE "LiteLLM_VerificationToken" SET blocked = true WHERE token = $1',
        rows.key.token_hash,
    )

    async def reason() -> str | None:
        return (await check(http, r.url, token))[1].get("reason")

    await wait_until(lambda: _eq(reason(), "key_blocked"), what="blocked key")
    assert r.service.bus.stats.received[("postgres", "key")] >= 2


async def test_listen_killed_clears_cache_fails_closed_and_recovers(
    make_settings, database_url, start_resolver, http, map_claim, signing_key, db, store,
    pg_server, kill_listen,
):  # fmt: skip
    first = await map_claim("dave")
    r = await start_resolver(
        make_settings(
            database_url=database_url,
            unregistered_client_behavior="reject",
            positive_ttl_seconds=3600,
            invalidation_reconnect_max_seconds=0.2,
        )
    )
    await r.wait_ready(http)
    token = signing_key.sign(sub="dave")
    assert (await check(http, r.url, token))[0] == 200
    assert len(r.service.engine.cache) == 1

    # Keep the channel down: no new connection to this database is allowed.
    name = database_url.rsplit("/", 1)[1]
    await pg_server.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    assert await kill_listen() == 1
    await wait_until(lambda: not r.service.bus.connected, what="disconnect noticed")
    assert len(r.service.engine.cache) == 0
    assert not await r.ready(http)
    status, headers = await check(http, r.url, token)
    assert (status, headers["reason"]) == (503, "database_unavailable")
    assert headers["retry-after"]

    # A change made while nobody listens: its NOTIFY is lost for good.
    _, second = await store.create_key(NewKey(), actor="t")
    await db.execute(
        'UPDATE "LiteLLM_JWTKeyMapping" SET token = $1 WHERE id = $2',
        second.token_hash,
        first.mapping_id,
    )

    await pg_server.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    await r.wait_ready(http)
    status, headers = await check(http, r.url, token)
    assert status == 200
    # Served from the database again, not from anything remembered before the loss.
    assert headers["x-jwtkeymap-key-hash"] == second.token_hash
    assert r.service.bus.stats.disconnects["postgres"] == 1
    assert r.service.bus.sources[0].connects == 2


async def test_reconnects_after_plain_kill(
    make_settings, database_url, start_resolver, http, map_claim, signing_key, kill_listen, db
):
    await map_claim("erin")
    r = await start_resolver(make_settings(database_url=database_url))
    await r.wait_ready(http)
    assert await kill_listen() == 1
    await wait_until(lambda: r.service.bus.sources[0].connects == 2, what="reconnect")
    await r.wait_ready(http)
    token = signing_key.sign(sub="erin")
    assert (await check(http, r.url, token))[0] == 200
    # The new connection really listens: a change is still seen.
    await db.execute(
        "UPDATE \"LiteLLM_JWTKeyMapping\" SET is_active = false WHERE jwt_claim_value = 'erin'"
    )

    async def decision() -> str | None:
        return (await check(http, r.url, token))[1].get("x-jwtkeymap-decision")

    # Under the default fallback policy a disabled mapping falls back.
    await wait_until(lambda: _eq(decision(), "fallback"), what="change seen after reconnect")
    assert r.service.bus.stats.received[("postgres", "identity")] >= 1


async def test_grace_period_serves_cached_entries_for_a_bounded_time(
    make_settings, database_url, start_resolver, http, map_claim, signing_key, pg_server,
    kill_listen,
):  # fmt: skip
    await map_claim("frank")
    clock = ManualClock(start=dt.datetime.now(dt.UTC))
    r = await start_resolver(
        make_settings(
            database_url=database_url,
            unregistered_client_behavior="reject",
            stale_while_disconnected_seconds=30,
            positive_ttl_seconds=3600,
        ),
        clock=clock,
    )
    await r.wait_ready(http)
    cached, uncached = signing_key.sign(sub="frank"), signing_key.sign(sub="gina")
    assert (await check(http, r.url, cached))[0] == 200
    name = database_url.rsplit("/", 1)[1]
    await pg_server.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        assert await kill_listen() == 1
        await wait_until(lambda: not r.service.bus.connected, what="disconnect noticed")
        assert not await r.ready(http)
        # Within the grace: the cached answer stands, anything else needs the database.
        assert (await check(http, r.url, cached))[0] == 200
        assert (await check(http, r.url, uncached))[1]["reason"] == "database_unavailable"
        clock.advance(31)
        assert (await check(http, r.url, cached))[1]["reason"] == "database_unavailable"
    finally:
        await pg_server.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    await r.wait_ready(http)
    assert (await check(http, r.url, cached))[0] == 200


async def test_malformed_notification_flushes_the_cache(
    make_settings, database_url, start_resolver, http, map_claim, signing_key, db
):
    await map_claim("hal")
    r = await start_resolver(make_settings(database_url=database_url))
    await r.wait_ready(http)
    assert (await check(http, r.url, signing_key.sign(sub="hal")))[0] == 200
    assert len(r.service.engine.cache) == 1
    await db.execute("SELECT pg_notify('jwtkeymap_invalidate', 'not json')")
    await wait_until(lambda: len(r.service.engine.cache) == 0, what="flush")
    assert r.service.bus.stats.received[("postgres", "malformed")] == 1
    await db.execute("""SELECT pg_notify('jwtkeymap_invalidate', '{"all": true}')""")
    await wait_until(
        lambda: r.service.bus.stats.received.get(("postgres", "all")) == 1, what="flush all"
    )


async def test_listen_connection_is_outside_the_pool(
    make_settings, database_url, start_resolver, http, db: asyncpg.Connection
):
    r = await start_resolver(make_settings(database_url=database_url))
    await r.wait_ready(http)
    rows = await db.fetch(
        "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid()"
    )
    names = sorted(row["application_name"] for row in rows)
    assert "jwtkeymap-listen" in names
    assert "jwtkeymap" in names  # the lookup pool, a separate connection


async def test_no_answer_outlives_a_received_invalidation(
    make_settings, database_url, start_resolver, http, map_claim, signing_key, db
):
    """Once the NOTIFY is in, the very next check answers from the new row (no memo lag)."""
    await map_claim("ivy")
    r = await start_resolver(
        make_settings(database_url=database_url, unregistered_client_behavior="reject")
    )
    await r.wait_ready(http)
    token = signing_key.sign(sub="ivy")
    for _ in range(3):  # warm every cache, including the per-token answer memo
        assert (await check(http, r.url, token))[0] == 200
    assert r.service.metrics is not None
    received = r.service.bus.stats.received
    before = received.get(("postgres", "identity"), 0)
    await db.execute(
        "UPDATE \"LiteLLM_JWTKeyMapping\" SET is_active = false WHERE jwt_claim_value = 'ivy'"
    )
    await wait_until(
        lambda: received.get(("postgres", "identity"), 0) > before, what="notification"
    )
    status, headers = await check(http, r.url, token)
    assert (status, headers["reason"]) == (403, "mapping_inactive")
