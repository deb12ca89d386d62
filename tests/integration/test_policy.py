"""Every policy rule, over a real PostgreSQL (no mocked database).

The scenario names follow LiteLLM's seed test file where one exists.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import asyncpg
import pytest

from jwtkeymap.core.cache import Mapped
from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.clock import ManualClock
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.core.db.store import RegistrationVanished, Store
from jwtkeymap.core.policy import DenialReason, PolicyEngine, Verdict
from jwtkeymap.core.settings import Settings

ISS = "https://idp.test.example"
OTHER = "https://other-idp.test.example"
# Set a key's expiry relative to now ($2: a timedelta), in UTC as LiteLLM writes it.
EXPIRES_IN = (
    'UPDATE "LiteLLM_VerificationToken" '
    "SET expires = (now() AT TIME ZONE 'UTC') + $2::interval WHERE token = $1"
)


async def make_key(store: Store, **kw: Any) -> str:
    _, key = await store.create_key(NewKey(**kw), actor="test")
    return key.token_hash


async def add(
    store: Store,
    value: str,
    token: str,
    *,
    issuer: str = "",
    claim: str = "sub",
    active: bool = True,
) -> str:
    row = await store.add_mapping(
        MappingIdentity(issuer, claim, value), token, active=active, actor="test"
    )
    return row.id


def resolver(
    settings: Settings, store: Store | None, clock: ManualClock | None = None
) -> PolicyEngine:
    return PolicyEngine(settings, store=store, clock=clock or ManualClock(dt.datetime.now(dt.UTC)))


async def count(db: asyncpg.Connection, table: str) -> int:
    return int(await db.fetchval(f'SELECT count(*) FROM "{table}"'))


# -- mapped --------------------------------------------------------------------------------


async def test_mapping_resolution_uses_the_cache_on_the_second_call(
    make_settings: Any, store: Store
) -> None:
    token = await make_key(store, team_id="team-1", user_id="user-1", org_id="org-1")
    await add(store, "client-abc", token)
    r = resolver(make_settings(), store)
    first = await r.resolve({"sub": "client-abc"}, ISS)
    assert first.outcome is Verdict.MAPPED
    assert first.key is not None and first.key.token_hash == token
    assert (first.key.team_id, first.key.user_id, first.key.org_id) == ("team-1", "user-1", "org-1")
    second = await r.resolve({"sub": "client-abc"}, ISS)
    assert second == first
    assert r.cache.stats.loads == 1 and r.cache.stats.hits == 1


@pytest.mark.parametrize("behavior", ["reject", "auto_register", "fallback_team_mapping"])
async def test_blocked_key_is_denied(
    make_settings: Any, store: Store, db: asyncpg.Connection, behavior: str
) -> None:
    token = await make_key(store)
    await add(store, "u1", token)
    await db.execute(
        'UPDATE "LiteLLM_VerificationToken" SET blocked = true WHERE token = $1', token
    )
    d = await resolver(make_settings(unregistered_client_behavior=behavior), store).resolve(
        {"sub": "u1"}, ISS
    )
    assert (d.status, d.reason) == (403, DenialReason.KEY_BLOCKED)


async def test_expired_key_is_denied(
    make_settings: Any, store: Store, db: asyncpg.Connection
) -> None:
    token = await make_key(store)
    await add(store, "u1", token)
    await db.execute(EXPIRES_IN, token, dt.timedelta(minutes=-1))
    d = await resolver(make_settings(), store).resolve({"sub": "u1"}, ISS)
    assert (d.status, d.reason) == (403, DenialReason.KEY_EXPIRED)


async def test_key_expiring_later_expires_while_cached(
    make_settings: Any, store: Store, db: asyncpg.Connection
) -> None:
    token = await make_key(store)
    await add(store, "u1", token)
    await db.execute(EXPIRES_IN, token, dt.timedelta(seconds=60))
    clock = ManualClock(dt.datetime.now(dt.UTC))
    r = resolver(make_settings(), store, clock)
    assert (await r.resolve({"sub": "u1"}, ISS)).outcome is Verdict.MAPPED
    clock.advance(120)  # still within the 300 s positive TTL
    d = await r.resolve({"sub": "u1"}, ISS)
    assert d.reason is DenialReason.KEY_EXPIRED and r.cache.stats.loads == 1


# -- inactive ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behavior", "outcome", "status"),
    [
        ("reject", Verdict.DENIED, 403),
        ("auto_register", Verdict.DENIED, 403),
        ("fallback_team_mapping", Verdict.FALLBACK, 200),
    ],
)
async def test_inactive_mapping(
    make_settings: Any,
    store: Store,
    db: asyncpg.Connection,
    behavior: str,
    outcome: Verdict,
    status: int,
) -> None:
    token = await make_key(store)
    await add(store, "u1", token, active=False)
    keys_before = await count(db, "LiteLLM_VerificationToken")
    r = resolver(make_settings(unregistered_client_behavior=behavior), store)
    for _ in range(3):  # never the 503 loop of W6, never a new key
        d = await r.resolve({"sub": "u1"}, ISS)
        assert (d.outcome, d.status) == (outcome, status)
        if outcome is Verdict.DENIED:
            assert d.reason is DenialReason.MAPPING_INACTIVE
    assert await count(db, "LiteLLM_VerificationToken") == keys_before


# -- unmapped ------------------------------------------------------------------------------


async def test_reject_raises_403_on_no_mapping_and_caches_the_miss(
    make_settings: Any, store: Store
) -> None:
    r = resolver(make_settings(unregistered_client_behavior="reject"), store)
    d = await r.resolve({"sub": "unknown@example.com"}, ISS)
    assert (d.status, d.reason) == (403, DenialReason.UNREGISTERED_CLIENT)
    assert "unknown@example.com" in d.message
    again = await r.resolve({"sub": "unknown@example.com"}, ISS)
    assert again.reason is DenialReason.UNREGISTERED_CLIENT
    assert r.cache.stats.loads == 1  # the second answer came from the negative cache


async def test_reject_message_is_sanitised_and_bounded(make_settings: Any, store: Store) -> None:
    r = resolver(make_settings(unregistered_client_behavior="reject"), store)
    d = await r.resolve({"sub": "evil\n\x1b[2J" + "x" * 900}, ISS)
    assert d.status == 403 and "\n" not in d.message and "\x1b" not in d.message
    assert len(d.message) < 200


async def test_negative_entry_expires_after_the_negative_ttl(
    make_settings: Any, store: Store
) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    r = resolver(
        make_settings(unregistered_client_behavior="reject", negative_ttl_seconds=30), store, clock
    )
    assert (await r.resolve({"sub": "late"}, ISS)).status == 403
    await add(store, "late", await make_key(store))
    clock.advance(29)
    assert (await r.resolve({"sub": "late"}, ISS)).status == 403
    clock.advance(2)
    assert (await r.resolve({"sub": "late"}, ISS)).outcome is Verdict.MAPPED


async def test_fallback_returns_fallback_and_caches_the_miss(
    make_settings: Any, store: Store
) -> None:
    r = resolver(make_settings(), store)
    for _ in range(2):
        assert (await r.resolve({"sub": "nobody"}, ISS)).outcome is Verdict.FALLBACK
    assert r.cache.stats.loads == 1


# -- issuers -------------------------------------------------------------------------------


async def test_issuer_scoped_mapping_wins_over_global(make_settings: Any, store: Store) -> None:
    global_key = await make_key(store, team_id="global")
    scoped_key = await make_key(store, team_id="scoped")
    await add(store, "u1", global_key)
    await add(store, "u1", scoped_key, issuer=ISS)
    r = resolver(make_settings(unregistered_client_behavior="reject"), store)
    a = await r.resolve({"sub": "u1"}, ISS)
    b = await r.resolve({"sub": "u1"}, OTHER)
    assert a.key is not None and a.key.team_id == "scoped"
    assert b.key is not None and b.key.team_id == "global"


async def test_same_subject_from_another_issuer_does_not_inherit_a_scoped_key(
    make_settings: Any, store: Store
) -> None:
    await add(store, "u1", await make_key(store), issuer=ISS)
    r = resolver(make_settings(unregistered_client_behavior="reject"), store)
    assert (await r.resolve({"sub": "u1"}, ISS)).outcome is Verdict.MAPPED
    assert (await r.resolve({"sub": "u1"}, OTHER)).reason is DenialReason.UNREGISTERED_CLIENT


async def test_casefolding_matches_mixed_case_emails(make_settings: Any, store: Store) -> None:
    await add(store, "alice@example.com", await make_key(store), claim="email")
    r = resolver(
        make_settings(
            claim_field="email", casefold_claim=True, unregistered_client_behavior="reject"
        ),
        store,
    )
    assert (await r.resolve({"email": "Alice@Example.COM"}, ISS)).outcome is Verdict.MAPPED
    strict = resolver(
        make_settings(claim_field="email", unregistered_client_behavior="reject"), store
    )
    assert (await strict.resolve({"email": "Alice@Example.COM"}, ISS)).status == 403


async def test_nested_claim_field(make_settings: Any, store: Store) -> None:
    await add(store, "c-9", await make_key(store), claim="client.id")
    r = resolver(
        make_settings(claim_field="client.id", unregistered_client_behavior="reject"), store
    )
    assert (await r.resolve({"client": {"id": "c-9"}}, ISS)).outcome is Verdict.MAPPED


async def test_integer_claims_match_their_decimal_form(make_settings: Any, store: Store) -> None:
    await add(store, "12345", await make_key(store), claim="uid")
    r = resolver(make_settings(claim_field="uid", unregistered_client_behavior="reject"), store)
    assert (await r.resolve({"uid": 12345}, ISS)).outcome is Verdict.MAPPED


# -- auto-register -------------------------------------------------------------------------


def auto_settings(make_settings: Any, **ar: Any) -> Settings:
    return make_settings(unregistered_client_behavior="auto_register", auto_register=ar)


async def test_auto_register_creates_key_and_mapping(
    make_settings: Any, store: Store, db: asyncpg.Connection
) -> None:
    settings = auto_settings(
        make_settings,
        team_id_claim="team",
        user_id_claim="sub",
        org_id_claim="org",
        key_defaults={
            "models": ["gpt-4o-mini"],
            "max_budget": 5,
            "rpm_limit": 10,
            "key_alias": "jwt-{claim_name}-{claim_value}",
            "metadata": {"source": "sso"},
        },
    )
    r = resolver(settings, store)
    d = await r.resolve(
        {"sub": "new-user-42", "team": "validated-team", "org": "validated-org"}, ISS
    )
    assert d.outcome is Verdict.AUTO_REGISTERED
    assert d.key is not None
    assert (d.key.team_id, d.key.user_id, d.key.org_id) == (
        "validated-team",
        "new-user-42",
        "validated-org",
    )
    key = await db.fetchrow(
        "SELECT team_id, user_id, organization_id, models, max_budget, rpm_limit, key_alias, metadata, created_by "
        'FROM "LiteLLM_VerificationToken" WHERE token = $1',
        d.key.token_hash,
    )
    assert key["organization_id"] == "validated-org" and key["models"] == ["gpt-4o-mini"]
    assert key["max_budget"] == 5 and key["rpm_limit"] == 10
    assert key["key_alias"] == "jwt-sub-new-user-42"
    assert '"auto_registered": true' in key["metadata"] and '"source": "sso"' in key["metadata"]
    mapping = await db.fetchrow(
        'SELECT jwt_issuer, jwt_claim_name, jwt_claim_value, token, created_by FROM "LiteLLM_JWTKeyMapping"'
    )
    assert tuple(mapping.values()) == (
        ISS,
        "sub",
        "new-user-42",
        d.key.token_hash,
        "jwtkeymap:auto_register",
    )
    # Next request: mapped, from the cache.
    again = await r.resolve({"sub": "new-user-42", "team": "validated-team"}, ISS)
    assert again.outcome is Verdict.MAPPED and again.key == d.key


async def test_auto_register_requires_a_team_when_configured(
    make_settings: Any, store: Store, db: asyncpg.Connection
) -> None:
    r = resolver(auto_settings(make_settings, team_id_claim="team"), store)
    d = await r.resolve({"sub": "u1"}, ISS)
    assert (d.status, d.reason) == (403, DenialReason.TEAM_REQUIRED)
    assert await count(db, "LiteLLM_VerificationToken") == 0
    # Not cached: the same client with a team is registered at once.
    ok = await r.resolve({"sub": "u1", "team": "t1"}, ISS)
    assert ok.outcome is Verdict.AUTO_REGISTERED and ok.key is not None and ok.key.team_id == "t1"


async def test_auto_register_team_default(make_settings: Any, store: Store) -> None:
    r = resolver(
        auto_settings(make_settings, team_id_claim="team", team_id_default="default-team"), store
    )
    d = await r.resolve({"sub": "u1"}, ISS)
    assert d.key is not None and d.key.team_id == "default-team"


async def test_auto_register_existing_mapping_is_just_mapped(
    make_settings: Any, store: Store, db: asyncpg.Connection
) -> None:
    await add(store, "u1", await make_key(store, team_id="pre"))
    d = await resolver(auto_settings(make_settings), store).resolve({"sub": "u1"}, ISS)
    assert d.outcome is Verdict.MAPPED and d.key is not None and d.key.team_id == "pre"
    assert await count(db, "LiteLLM_VerificationToken") == 1


@pytest.mark.slow
async def test_fifty_concurrent_registrations_make_one_key(
    make_settings: Any, store: Store, db: asyncpg.Connection
) -> None:
    # Separate resolvers (separate caches, like separate pods) race in the database itself.
    settings = auto_settings(make_settings)
    resolvers = [resolver(settings, store) for _ in range(50)]
    decisions = await asyncio.gather(*(r.resolve({"sub": "racer"}, ISS) for r in resolvers))
    assert all(d.allowed for d in decisions)
    hashes = {d.key.token_hash for d in decisions if d.key}
    assert len(hashes) == 1
    assert sum(d.outcome is Verdict.AUTO_REGISTERED for d in decisions) == 1
    assert await count(db, "LiteLLM_VerificationToken") == 1  # no orphan keys
    assert await count(db, "LiteLLM_JWTKeyMapping") == 1


async def test_concurrent_misses_in_one_process_share_one_query(
    make_settings: Any, store: Store
) -> None:
    await add(store, "hot", await make_key(store))
    r = resolver(make_settings(), store)
    decisions = await asyncio.gather(*(r.resolve({"sub": "hot"}, ISS) for _ in range(100)))
    assert all(d.outcome is Verdict.MAPPED for d in decisions)
    assert r.cache.stats.loads == 1


async def test_losing_to_an_inactive_winner_is_denied(
    make_settings: Any, store: Store, db: asyncpg.Connection
) -> None:
    # The winner's row exists (inactive) but this resolver's lookup raced ahead of it.
    winner = await make_key(store)
    await add(store, "u1", winner, issuer=ISS, active=False)
    entry, created = await store.register(MappingIdentity(ISS, "sub", "u1"), NewKey())
    assert not created and type(entry).__name__ == "Inactive"
    assert await count(db, "LiteLLM_VerificationToken") == 1  # our key was rolled back


async def test_losing_to_an_active_winner_returns_the_winner(
    store: Store, db: asyncpg.Connection
) -> None:
    winner = await make_key(store, team_id="winner")
    await add(store, "u1", winner, issuer=ISS)
    entry, created = await store.register(
        MappingIdentity(ISS, "sub", "u1"), NewKey(team_id="loser")
    )
    assert not created and isinstance(entry, Mapped) and entry.key.token_hash == winner
    assert await count(db, "LiteLLM_VerificationToken") == 1


async def test_vanished_winner_is_a_retryable_503(make_settings: Any, store: Store) -> None:
    # The vanishing itself needs a precise interleaving; the policy's answer to it is what matters.
    class VanishingStore:
        async def lookup(self, identity: MappingIdentity) -> Any:
            return await store.lookup(identity)

        async def register(self, identity: MappingIdentity, spec: NewKey) -> Any:
            raise RegistrationVanished("winner gone")

    r = PolicyEngine(auto_settings(make_settings), store=VanishingStore())  # type: ignore[arg-type]
    d = await r.resolve({"sub": "u1"}, ISS)
    assert (d.status, d.reason) == (503, DenialReason.REGISTRATION_CONFLICT)
    assert "concurrently removed" in d.message and d.retryable


# -- coherence -----------------------------------------------------------------------------


async def test_suspended_cache_fails_closed(make_settings: Any, store: Store) -> None:
    await add(store, "u1", await make_key(store))
    r = resolver(make_settings(unregistered_client_behavior="reject"), store)
    assert (await r.resolve({"sub": "u1"}, ISS)).outcome is Verdict.MAPPED
    r.suspend()
    d = await r.resolve({"sub": "u1"}, ISS)
    assert (d.status, d.reason) == (503, DenialReason.DATABASE_UNAVAILABLE)
    assert len(r.cache) == 0
    r.resume()
    assert (await r.resolve({"sub": "u1"}, ISS)).outcome is Verdict.MAPPED


async def test_grace_period_serves_cached_entries_then_expires(
    make_settings: Any, store: Store
) -> None:
    await add(store, "u1", await make_key(store))
    clock = ManualClock(dt.datetime.now(dt.UTC))
    r = resolver(make_settings(stale_while_disconnected_seconds=10), store, clock)
    await r.resolve({"sub": "u1"}, ISS)
    r.suspend()
    assert (await r.resolve({"sub": "u1"}, ISS)).outcome is Verdict.MAPPED
    assert (await r.resolve({"sub": "u2"}, ISS)).status == 503  # not cached: needs the database
    clock.advance(11)
    assert (await r.resolve({"sub": "u1"}, ISS)).status == 503


async def test_admin_needs_no_database_even_when_suspended(
    make_settings: Any, store: Store
) -> None:
    r = resolver(make_settings(admin={"claim": "scope", "value": "litellm_proxy_admin"}), store)
    r.suspend()
    d = await r.resolve({"sub": "root", "scope": "litellm_proxy_admin"}, ISS)
    assert d.outcome is Verdict.ADMIN
