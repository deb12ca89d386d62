"""Fault 3: Redis goes down where it is configured next to PostgreSQL.

Redis is a second path for invalidations (and the LiteLLM eviction path of writers);
PostgreSQL is the source of truth. With Redis down, a resolver that LISTENs on
PostgreSQL itself stays coherent, ready and correct, and an offline apply (the
operator's reconcile) still writes its rows; both say in metrics and logs that
Redis is gone.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.demo.polling import wait_until
from jwtkeymap.demo.resolver import check_token
from support.integrity import integrity
from support.servers import RedisServer, resolver_metric, wait_ready

pytestmark = pytest.mark.slow


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    async with RedisServer() as server:
        yield server


async def test_resolver_keeps_working_on_postgres_alone(
    database_url, db, store, redis_server, start_resolvers, http, signing_key
):
    _, key = await store.create_key(NewKey(team_id="t"), actor="test")
    for sub in ("alice", "bob"):
        await store.add_mapping(MappingIdentity("", "sub", sub), key.token_hash, actor="t")
    [proc] = await start_resolvers(
        database_url, unregistered_client_behavior="reject", redis_url=redis_server.url
    )
    await wait_ready(http, [proc])
    alice, bob = signing_key.sign({"sub": "alice"}), signing_key.sign({"sub": "bob"})
    assert (await check_token(http, proc.url, alice)).status == 200

    redis_server.kill()
    disconnects = 'jwtkeymap_invalidation_disconnects_total{channel="redis"}'

    async def noticed() -> bool:
        return await resolver_metric(proc, http, disconnects) >= 1

    await wait_until(noticed, timeout=15, what="the Redis loss to be noticed")
    body = await proc.readiness(http)
    assert body["ready"] is True, body
    assert body["checks"]["invalidation"]["redis"]["connected"] is False
    assert body["checks"]["invalidation"]["postgres"]["connected"] is True
    assert (
        await resolver_metric(
            proc, http, 'jwtkeymap_invalidation_channel_connected{channel="redis"}'
        )
        == 0
    )
    assert await resolver_metric(proc, http, "jwtkeymap_invalidation_connected ") == 1
    # The cache still answers, the database still answers, and a revocation is still seen.
    assert (await check_token(http, proc.url, alice)).status == 200
    assert (await check_token(http, proc.url, bob)).status == 200
    await db.execute(
        "UPDATE \"LiteLLM_JWTKeyMapping\" SET is_active = false WHERE jwt_claim_value = 'alice'"
    )

    async def revoked() -> bool:
        return (await check_token(http, proc.url, alice)).reason == "mapping_inactive"

    await wait_until(revoked, timeout=5, what="revocation seen over PostgreSQL")
    logged = [json.loads(line) for line in proc.output().splitlines() if line.startswith("{")]
    assert any(
        e.get("channel") == "redis" and "PostgreSQL alone" in e["message"] for e in logged
    ), logged

    await redis_server.start()

    async def redis_back() -> bool:
        body = await proc.readiness(http)
        return bool(body["checks"]["invalidation"]["redis"]["connected"])

    await wait_until(redis_back, timeout=15, what="the Redis channel to reconnect")
    assert (await check_token(http, proc.url, bob)).status == 200
    assert proc.alive()


MANIFEST = """\
apiVersion: jwtkeymap.io/v1alpha1
kind: JWTKeyMapping
metadata: {{name: carol, namespace: team-a}}
spec:
  issuer: "*"
  claim: {{name: email, value: carol@example.com}}
  key: {{hash: "{token}"}}
"""


async def test_offline_apply_writes_its_rows_with_redis_down(
    database_url, db, store, redis_server, tmp_path
):
    _, key = await store.create_key(NewKey(team_id="t"), actor="test")
    manifest = tmp_path / "carol.yaml"
    manifest.write_text(MANIFEST.format(token=key.token_hash))
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"redis_url": redis_server.url}))
    redis_server.kill()
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "jwtkeymap", "--config", str(config), "apply", "-f",
         str(manifest), "--database-url", database_url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "could not evict 1 LiteLLM cache key(s) through Redis" in done.stderr
    rows = await db.fetch('SELECT jwt_claim_value, token FROM "LiteLLM_JWTKeyMapping"')
    assert [(r["jwt_claim_value"], r["token"]) for r in rows] == [
        ("carol@example.com", key.token_hash)
    ]
    assert (await integrity(db)).sound
