"""Fault 2: the LISTEN connection is killed while mappings change.

A revocation whose NOTIFY is lost with the connection must still never be honoured
after the reconnect (the cache restarts empty), and readiness must show the gap.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import pytest

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.demo.polling import wait_until
from jwtkeymap.demo.resolver import check_token
from support.integrity import integrity
from support.servers import wait_ready

pytestmark = pytest.mark.slow

ROUNDS = 8


async def kill_listen(db) -> int:
    return int(
        await db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'jwtkeymap-listen' AND datname = current_database()"
        )
    )


async def connects(http, proc) -> int:
    body = await proc.readiness(http)
    return int(body["checks"]["invalidation"]["postgres"]["connects"])


async def test_revocations_racing_a_killed_listen_are_never_honoured(
    database_url, db, store, pg_server, start_resolvers, http, signing_key
):
    _, key = await store.create_key(NewKey(team_id="t"), actor="test")
    subs = [f"user-{i}" for i in range(ROUNDS + 1)]
    for sub in subs:
        await store.add_mapping(MappingIdentity("", "sub", sub), key.token_hash, actor="t")
    [proc] = await start_resolvers(database_url, unregistered_client_behavior="reject")
    await wait_ready(http, [proc])
    tokens = {sub: signing_key.sign({"sub": sub}) for sub in subs}
    for sub in subs:  # every mapping cached for 300 s
        assert (await check_token(http, proc.url, tokens[sub])).status == 200

    revoked: list[str] = []  # revocations whose effect has been confirmed once
    stale_allows: list[str] = []
    stop = asyncio.Event()
    passes = [0]

    async def hammer() -> None:
        # Once a revocation has been seen, no later answer may allow it again.
        while not stop.is_set():
            for sub in list(revoked):
                got = await check_token(http, proc.url, tokens[sub])
                if got.status == 200:
                    stale_allows.append(sub)
            passes[0] += 1
            await asyncio.sleep(0.01)  # pacing, not waiting for anything

    hammering = asyncio.create_task(hammer())
    killer = await asyncpg.connect(database_url)
    try:
        for sub in subs[:ROUNDS]:
            before = await connects(http, proc)
            # The revocation and the kill race: its NOTIFY may or may not be delivered.
            killed, _ = await asyncio.gather(
                kill_listen(killer),
                db.execute(
                    'UPDATE "LiteLLM_JWTKeyMapping" SET is_active = false '
                    "WHERE jwt_claim_value = $1",
                    sub,
                ),
            )
            assert killed == 1

            async def reconnected(before: int = before) -> bool:
                return await connects(http, proc) > before

            await wait_until(reconnected, timeout=15, what="LISTEN reconnected")
            await wait_ready(http, [proc])
            got = await check_token(http, proc.url, tokens[sub])
            assert (got.status, got.reason) == (403, "mapping_inactive"), sub
            revoked.append(sub)

        # Hold the gap open: while no LISTEN can connect, readiness is false and the
        # cache answers nothing; a revocation made in the gap is lost as a NOTIFY.
        last = subs[ROUNDS]
        name = database_url.rsplit("/", 1)[1]
        await pg_server.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            assert await kill_listen(db) == 1
            await wait_ready(http, [proc], ready=False)
            body = await proc.readiness(http)
            assert body["checks"]["invalidation"]["ok"] is False
            got = await check_token(http, proc.url, tokens[last])
            assert (got.status, got.reason) == (503, "database_unavailable")
            await db.execute('DELETE FROM "LiteLLM_JWTKeyMapping" WHERE jwt_claim_value = $1', last)
        finally:
            await pg_server.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await wait_ready(http, [proc])
        got = await check_token(http, proc.url, tokens[last])
        assert (got.status, got.reason) == (403, "unregistered_client")
        revoked.append(last)
        seen = passes[0]
        await wait_until(lambda: passes[0] > seen + 1, what="a full pass over every revocation")
    finally:
        stop.set()
        await killer.close()
        with contextlib.suppress(asyncio.CancelledError):
            await hammering

    assert stale_allows == []
    assert proc.alive()
    state = await integrity(db)
    assert (state.mappings, state.keys) == (ROUNDS, 1) and state.sound
