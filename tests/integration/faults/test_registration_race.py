"""Fault 6: 100 concurrent first requests for one new identity, over two resolver processes.

Each process has its own single flight, so the two really race in the database:
exactly one key and one mapping must come out, no orphan key, and every request
must be answered with the winner's key.
"""

from __future__ import annotations

import asyncio

import pytest

from jwtkeymap.demo.resolver import check_token
from support.integrity import integrity
from support.servers import resolver_metric, wait_ready

pytestmark = pytest.mark.slow

REQUESTS = 100
IDENTITIES = ("first-comer", "second-comer", "third-comer")


async def test_concurrent_first_requests_register_exactly_once(
    database_url, db, start_resolvers, http, signing_key
):
    procs = await start_resolvers(
        database_url,
        count=2,
        unregistered_client_behavior="auto_register",
        auto_register={"team_id_default": "sandbox"},
        db_pool_max_size=8,
    )
    await wait_ready(http, procs)
    for sub in IDENTITIES:
        # Distinct tokens (jti) so no answer is reused: every request goes through the policy.
        tokens = [signing_key.sign({"sub": sub, "jti": str(i)}) for i in range(REQUESTS)]
        answers = await asyncio.gather(
            *(check_token(http, procs[i % 2].url, t) for i, t in enumerate(tokens))
        )
        statuses = {a.status for a in answers}
        assert statuses == {200}, [(a.status, a.reason) for a in answers if a.status != 200]
        assert len({a.key_hash for a in answers}) == 1, "every request gets the same key"
        decisions = [a.headers["x-jwtkeymap-decision"] for a in answers]
        assert set(decisions) <= {"auto_registered", "mapped"}
        assert decisions.count("auto_registered") == 1  # the one request that created it
        [row] = await db.fetch(
            'SELECT token FROM "LiteLLM_JWTKeyMapping" WHERE jwt_claim_value = $1', sub
        )
        assert row["token"] == answers[0].key_hash
    # Both processes went into the registration transaction: the race happened in the database.
    registers = 'jwtkeymap_db_query_duration_seconds_count{operation="register"}'
    counts = [await resolver_metric(p, http, registers) for p in procs]
    assert all(c >= 1 for c in counts), counts
    state = await integrity(db)
    assert (state.mappings, state.keys) == (len(IDENTITIES), len(IDENTITIES))
    assert state.sound, state
