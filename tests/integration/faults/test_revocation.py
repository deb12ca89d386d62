"""Fault 7: a revocation reaches every running resolver within the invalidation bound.

Three resolver processes cache a mapping for 300 s; it is then revoked three ways
(disabled with the CLI, removed with the CLI, its key blocked by plain SQL). Each
process must stop honouring it within BOUND seconds, far below the TTL.
(The same through a custom resource is in tests/controlplane/faults.)
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.demo.polling import wait_until
from jwtkeymap.demo.resolver import check_token
from support.integrity import integrity
from support.servers import wait_ready

pytestmark = pytest.mark.slow

BOUND = 5.0  # seconds; the TTL is 300


async def cli(database_url: str, *args: str) -> None:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "jwtkeymap", "--database-url", database_url, *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


async def test_revocations_reach_every_resolver_well_within_the_ttl(
    database_url, db, store, start_resolvers, http, signing_key
):
    ids = {}
    keys = {}
    for sub in ("disabled", "removed", "blocked"):
        _, keys[sub] = await store.create_key(NewKey(team_id="t"), actor="test")
        row = await store.add_mapping(
            MappingIdentity("", "sub", sub), keys[sub].token_hash, actor="t"
        )
        ids[sub] = row.id
    procs = await start_resolvers(database_url, count=3, unregistered_client_behavior="reject")
    await wait_ready(http, procs)
    tokens = {sub: signing_key.sign({"sub": sub}) for sub in ids}
    for proc in procs:
        for sub, token in tokens.items():
            assert (await check_token(http, proc.url, token)).key_hash == keys[sub].token_hash

    revoke = {
        "disabled": lambda: cli(database_url, "map", "disable", ids["disabled"]),
        "removed": lambda: cli(database_url, "map", "remove", ids["removed"]),
        "blocked": lambda: db.execute(
            'UPDATE "LiteLLM_VerificationToken" SET blocked = true WHERE token = $1',
            keys["blocked"].token_hash,
        ),
    }
    expected = {
        "disabled": "mapping_inactive",
        "removed": "unregistered_client",
        "blocked": "key_blocked",
    }
    for sub, action in revoke.items():
        await action()
        committed = time.monotonic()

        async def everywhere_denied(sub: str = sub) -> bool:
            answers = [await check_token(http, p.url, tokens[sub]) for p in procs]
            return all(a.reason == expected[sub] for a in answers)

        await wait_until(everywhere_denied, timeout=BOUND, what=f"{sub} denied everywhere")
        assert time.monotonic() - committed < BOUND
    # And it stays revoked: nothing re-caches the old answer.
    for proc in procs:
        for sub, token in tokens.items():
            assert (await check_token(http, proc.url, token)).reason == expected[sub]
    state = await integrity(db)
    assert (state.mappings, state.keys) == (2, 3) and state.sound
