"""Fault 1: PostgreSQL stops under a running fleet of resolver processes, then comes back.

Every behaviour (and one resolver with a grace period) sees the same outage. While the
database is down nothing the policy denies is allowed, every request that needs the
database gets 503 + Retry-After, and readiness is false; once it is back every process
serves and is ready again without a restart, and no row was lost or half-written.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.core.db.store import Store
from jwtkeymap.demo.resolver import check_token
from support.integrity import integrity
from support.servers import wait_ready

pytestmark = pytest.mark.slow

BEHAVIORS = ("reject", "auto_register", "fallback_team_mapping")
GRACE = 3  # index of the resolver configured with a grace period


async def burst(http, proc, token: str, n: int = 5):
    return await asyncio.gather(*(check_token(http, proc.url, token) for _ in range(n)))


async def test_postgres_stopped_fails_closed_and_recovers_without_restart(
    private_pg, start_resolvers, http, signing_key
):
    store = await Store.open(private_pg.url, min_size=0, max_size=2, timeout=2)
    try:
        _, key = await store.create_key(NewKey(team_id="t"), actor="test")
        await store.add_mapping(MappingIdentity("", "sub", "known"), key.token_hash, actor="t")
        await store.add_mapping(
            MappingIdentity("", "sub", "off"), key.token_hash, active=False, actor="t"
        )
    finally:
        await store.close()
    variants = [{"unregistered_client_behavior": b} for b in BEHAVIORS]
    variants.append(
        {"unregistered_client_behavior": "reject", "stale_while_disconnected_seconds": 300}
    )
    procs = await start_resolvers(private_pg.url, *variants)
    pids = [p.proc.pid for p in procs]
    await wait_ready(http, procs)

    subs = ("known", "off", "stranger")
    before = {}
    for i, proc in enumerate(procs):
        for sub in subs:
            before[i, sub] = await check_token(http, proc.url, signing_key.sign({"sub": sub}))
    assert all(before[i, "known"].key_hash == key.token_hash for i in range(len(procs)))
    assert [before[i, "off"].status for i in range(len(procs))] == [403, 403, 200, 403]
    # The auto_register resolver (checked second) registers "stranger"; the last one then maps it.
    assert [before[i, "stranger"].status for i in range(len(procs))] == [403, 200, 200, 200]

    await asyncio.to_thread(private_pg.stop, "fast")
    await wait_ready(http, procs, ready=False)
    for proc in procs:
        body = await proc.readiness(http)
        assert body["status"] == 503 and body["checks"]["database"]["ok"] is False

    allowed_during_outage = 0
    for i, proc in enumerate(procs):
        for sub in (*subs, "newcomer"):
            # Fresh tokens: nothing may come from the verified-token or answer memo either.
            for got in await burst(http, proc, signing_key.sign({"sub": sub, "jti": sub})):
                if got.status == 200:
                    allowed_during_outage += 1
                    # Only the grace period may answer, and only what was allowed before.
                    assert i == GRACE and before[i, sub].status == 200, (i, sub, got)
                    assert got.key_hash == before[i, sub].key_hash
                elif i == GRACE and (i, sub) in before and before[i, sub].status == 403:
                    # A cached denial stands during the grace; uncached ones need the database.
                    assert got.status == 403 and got.reason == before[i, sub].reason
                else:
                    assert (got.status, got.reason) == (503, "database_unavailable"), (i, sub)
                    assert got.headers["retry-after"]
    # "known" and "stranger" from the grace resolver's cache (5 each), nothing else.
    assert allowed_during_outage == 10

    await asyncio.to_thread(private_pg.start)
    await wait_ready(http, procs, timeout=30)
    assert [p.proc.pid for p in procs] == pids and all(p.alive() for p in procs)
    after = {
        i: await check_token(http, proc.url, signing_key.sign({"sub": "newcomer"}))
        for i, proc in enumerate(procs)
    }
    assert [(after[i].status, after[i].headers.get("x-jwtkeymap-decision")) for i in after] == [
        (403, None),
        (200, "auto_registered"),
        (200, "mapped"),
        (200, "mapped"),
    ]  # fmt: skip (the second registers "newcomer", the later ones then find its row)
    for proc in procs:
        assert (await check_token(http, proc.url, signing_key.sign({"sub": "known"}))).key_hash == (
            key.token_hash
        )

    conn = await asyncpg.connect(private_pg.url)
    try:
        state = await integrity(conn)
    finally:
        await conn.close()
    # known, off, and one auto-registration each for stranger and newcomer.
    assert (state.mappings, state.keys) == (4, 3)
    assert state.sound, state
