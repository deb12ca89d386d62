"""The policy engine's decisions over an in-memory store: each branch with its status and
reason, the grace period at its edges, and what an auto-registered key is made of.

The real store is exercised in tests/integration/test_policy.py; here a stand-in lets
every mutant of policy.py meet a unit test first (issue 17).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from jwtkeymap.core.cache import UNMAPPED, Entry, Inactive, Mapped
from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.clock import ManualClock
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.core.db.store import RegistrationVanished
from jwtkeymap.core.errors import DatabaseUnavailable, InvalidKeyHash, SchemaError
from jwtkeymap.core.keys import KeyIdentity, hash_key
from jwtkeymap.core.policy import Decision, DenialReason, PolicyEngine, Verdict
from jwtkeymap.core.settings import load_settings

ISS = "https://idp.unit"
ALICE = MappingIdentity(ISS, "sub", "alice")
KEY = KeyIdentity(token_hash=hash_key("sk-alice"), team_id="t", user_id="u", org_id="o")


class MemoryStore:
    """Answers lookups from a dict; registers by remembering the spec it was given."""

    def __init__(self, entries: dict[MappingIdentity, Entry] | None = None) -> None:
        self.entries = dict(entries or {})
        self.lookups = 0
        self.specs: list[NewKey] = []
        self.fail: Exception | None = None

    async def lookup(self, identity: MappingIdentity) -> Entry:
        self.lookups += 1
        if self.fail is not None:
            raise self.fail
        return self.entries.get(identity, UNMAPPED)

    async def register(self, identity: MappingIdentity, spec: NewKey) -> tuple[Entry, bool]:
        self.specs.append(spec)
        entry = Mapped("new", identity.issuer, KeyIdentity(token_hash=hash_key("sk-new")))
        self.entries[identity] = entry
        return entry, True


def engine(store: MemoryStore, clock: ManualClock | None = None, **settings: Any) -> PolicyEngine:
    settings.setdefault("unregistered_client_behavior", "reject")
    return PolicyEngine(
        load_settings(None, **settings),
        store=store,  # type: ignore[arg-type]
        clock=clock or ManualClock(),
    )


def mapped(key: KeyIdentity = KEY) -> Mapped:
    return Mapped("m1", ISS, key)


async def test_a_mapped_identity_is_allowed_with_its_key() -> None:
    d = await engine(MemoryStore({ALICE: mapped()})).resolve({"sub": "alice"}, ISS)
    assert d == Decision(Verdict.MAPPED, key=KEY, identity=ALICE)
    assert d.allowed and not d.retryable and d.status == 200 and d.message == ""
    assert d.to_json() == {
        "decision": "mapped",
        "status": 200,
        "identity": ALICE.to_json(),
        "key": {"fingerprint": KEY.fingerprint, "team_id": "t", "user_id": "u", "org_id": "o"},
    }


async def test_a_blocked_key_is_denied() -> None:
    blocked = KeyIdentity(token_hash=KEY.token_hash, blocked=True)
    d = await engine(MemoryStore({ALICE: mapped(blocked)})).resolve({"sub": "alice"}, ISS)
    assert (d.status, d.reason, d.allowed) == (403, DenialReason.KEY_BLOCKED, False)
    assert d.message == "JWT Key Mapping: the mapped key is blocked."
    assert d.to_json()["reason"] == "key_blocked" and d.to_json()["identity"] == ALICE.to_json()


async def test_a_key_is_denied_from_its_expiry_instant_on() -> None:
    clock = ManualClock()
    expiring = KeyIdentity(token_hash=KEY.token_hash, expires=clock.now() + dt.timedelta(seconds=1))
    store = MemoryStore({ALICE: mapped(expiring)})
    policy = engine(store, clock)
    assert (await policy.resolve({"sub": "alice"}, ISS)).outcome is Verdict.MAPPED
    clock.advance(1)
    d = await policy.resolve({"sub": "alice"}, ISS)
    assert (d.status, d.reason) == (403, DenialReason.KEY_EXPIRED)


@pytest.mark.parametrize(
    ("behavior", "outcome", "reason"),
    [
        ("reject", Verdict.DENIED, DenialReason.MAPPING_INACTIVE),
        ("auto_register", Verdict.DENIED, DenialReason.MAPPING_INACTIVE),
        ("fallback_team_mapping", Verdict.FALLBACK, None),
    ],
)
async def test_an_inactive_mapping(behavior: str, outcome: Verdict, reason: Any) -> None:
    store = MemoryStore({ALICE: Inactive("m1", ISS)})
    d = await engine(store, unregistered_client_behavior=behavior).resolve({"sub": "alice"}, ISS)
    assert (d.outcome, d.reason) == (outcome, reason)
    assert store.specs == []  # never a reason to register again (W6)
    if reason is not None:
        assert d.status == 403 and "for sub='alice' is disabled" in d.message


@pytest.mark.parametrize(
    ("behavior", "outcome", "reason"),
    [
        ("reject", Verdict.DENIED, DenialReason.UNREGISTERED_CLIENT),
        ("fallback_team_mapping", Verdict.FALLBACK, None),
    ],
)
async def test_an_unmapped_identity(behavior: str, outcome: Verdict, reason: Any) -> None:
    d = await engine(MemoryStore(), unregistered_client_behavior=behavior).resolve(
        {"sub": "alice"}, ISS
    )
    assert (d.outcome, d.reason) == (outcome, reason)
    if reason is not None:
        assert d.status == 403 and "No registered mapping for sub='alice'" in d.message


async def test_auto_registration_builds_the_key_from_the_token() -> None:
    store = MemoryStore()
    policy = engine(
        store,
        unregistered_client_behavior="auto_register",
        auto_register={
            "team_id_claim": "team",
            "org_id_claim": "org",
            "key_defaults": {"key_alias": "jwt-{issuer}-{claim_name}-{claim_value}"},
        },
    )
    claims = {"sub": "alice", "team": "t1", "org": 7}
    d = await policy.resolve(claims, ISS)
    assert d.outcome is Verdict.AUTO_REGISTERED and d.allowed
    (spec,) = store.specs
    assert (spec.team_id, spec.user_id, spec.org_id) == ("t1", "alice", "7")
    assert spec.alias == f"jwt-{ISS}-sub-alice"
    assert spec.metadata == {
        "auto_registered": True,
        "jwt_issuer": ISS,
        "jwt_claim_field": "sub",
        "jwt_claim_value": "alice",
    }
    # The next request finds the mapping: mapped, not registered again.
    assert (await policy.resolve(claims, ISS)).outcome is Verdict.MAPPED
    assert len(store.specs) == 1


async def test_an_alias_is_cut_to_255_characters() -> None:
    store = MemoryStore()
    policy = engine(store, unregistered_client_behavior="auto_register")
    await policy.resolve({"sub": "x" * 1000}, ISS)
    assert store.specs[0].alias == ("jwt-" + "x" * 1000)[:255]


async def test_a_required_team_is_refused_without_caching_the_refusal() -> None:
    store = MemoryStore()
    policy = engine(
        store, unregistered_client_behavior="auto_register", auto_register={"team_id_claim": "team"}
    )
    d = await policy.resolve({"sub": "alice"}, ISS)
    assert (d.status, d.reason) == (403, DenialReason.TEAM_REQUIRED)
    assert "claim 'team' is required" in d.message and store.specs == []
    # A later token that carries the team registers: the refusal was not cached.
    assert (await policy.resolve({"sub": "alice", "team": "t"}, ISS)).outcome is (
        Verdict.AUTO_REGISTERED
    )


async def test_a_team_default_stands_in_for_a_missing_team_claim() -> None:
    store = MemoryStore()
    policy = engine(
        store,
        unregistered_client_behavior="auto_register",
        auto_register={"team_id_claim": "team", "team_id_default": "shared", "user_id_claim": None},
    )
    assert (await policy.resolve({"sub": "alice"}, ISS)).outcome is Verdict.AUTO_REGISTERED
    assert (store.specs[0].team_id, store.specs[0].user_id) == ("shared", None)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (DatabaseUnavailable("down"), DenialReason.DATABASE_UNAVAILABLE),
        (SchemaError("no table"), DenialReason.DATABASE_UNAVAILABLE),
        (RegistrationVanished("gone"), DenialReason.REGISTRATION_CONFLICT),
    ],
)
async def test_database_failures_are_retryable_503s(error: Exception, reason: Any) -> None:
    store = MemoryStore()
    store.fail = error
    d = await engine(store).resolve({"sub": "alice"}, ISS)
    assert (d.status, d.reason, d.retryable, d.allowed) == (503, reason, True, False)
    assert d.identity == ALICE and "Retry the request" in d.message


async def test_a_malformed_key_hash_is_a_500_never_an_allow_and_never_cached() -> None:
    store = MemoryStore({ALICE: mapped()})
    store.fail = InvalidKeyHash("stored hash is not 64 lowercase hex")
    policy = engine(store)
    d = await policy.resolve({"sub": "alice"}, ISS)
    assert (d.status, d.reason) == (500, DenialReason.KEY_HASH_INVALID)
    assert not d.allowed and not d.retryable  # a damaged row needs an operator, not a retry
    assert d.identity == ALICE and d.key is None
    assert d.message == "JWT Key Mapping: the mapped key's stored hash is malformed. Access denied."
    # Once an operator repairs the row, the next request sees it: the refusal was not cached.
    store.fail = None
    assert (await policy.resolve({"sub": "alice"}, ISS)).outcome is Verdict.MAPPED
    assert store.lookups == 2


async def test_suspended_without_grace_clears_and_fails_closed_until_resumed() -> None:
    store = MemoryStore({ALICE: mapped()})
    policy = engine(store)
    await policy.resolve({"sub": "alice"}, ISS)
    policy.suspend()
    assert policy.suspended and len(policy.cache) == 0
    d = await policy.resolve({"sub": "alice"}, ISS)
    assert (d.status, d.reason) == (503, DenialReason.DATABASE_UNAVAILABLE)
    policy.resume()
    assert not policy.suspended
    assert (await policy.resolve({"sub": "alice"}, ISS)).outcome is Verdict.MAPPED


async def test_grace_serves_cached_entries_until_exactly_its_end() -> None:
    clock = ManualClock()
    store = MemoryStore({ALICE: mapped()})
    policy = engine(store, clock, stale_while_disconnected_seconds=10)
    await policy.resolve({"sub": "alice"}, ISS)
    policy.suspend()
    clock.advance(5)
    policy.suspend()  # a second loss does not restart the grace period
    assert len(policy.cache) == 1
    clock.advance(4.5)
    assert (await policy.resolve({"sub": "alice"}, ISS)).outcome is Verdict.MAPPED
    bob = await policy.resolve({"sub": "bob"}, ISS)  # not cached: no database meanwhile
    assert (bob.status, bob.reason) == (503, DenialReason.DATABASE_UNAVAILABLE)
    assert store.lookups == 1
    clock.advance(0.5)
    d = await policy.resolve({"sub": "alice"}, ISS)
    assert (d.status, d.reason) == (503, DenialReason.DATABASE_UNAVAILABLE)
    assert len(policy.cache) == 0


async def test_a_cached_unmapped_entry_served_in_grace_is_denied() -> None:
    policy = engine(MemoryStore(), stale_while_disconnected_seconds=10)
    await policy.resolve({"sub": "alice"}, ISS)
    policy.suspend()
    d = await policy.resolve({"sub": "alice"}, ISS)
    assert (d.status, d.reason) == (403, DenialReason.UNREGISTERED_CLIENT)


async def test_resume_without_a_loss_keeps_the_cache() -> None:
    store = MemoryStore({ALICE: mapped()})
    policy = engine(store)
    await policy.resolve({"sub": "alice"}, ISS)
    policy.resume()
    await policy.resolve({"sub": "alice"}, ISS)
    assert store.lookups == 1


async def test_the_claim_is_casefolded_when_configured() -> None:
    folded = MappingIdentity(ISS, "email", "alice@x")
    store = MemoryStore({folded: mapped()})
    policy = engine(store, claim_field="email", casefold_claim=True)
    d = await policy.resolve({"email": "Alice@X"}, ISS)
    assert d.outcome is Verdict.MAPPED and d.identity == folded


async def test_without_an_admin_rule_nobody_is_admin() -> None:
    policy = engine(MemoryStore())
    assert not policy.is_admin({"role": "admin", "scope": "litellm_proxy_admin"})


async def test_a_grace_of_one_second_is_a_grace_period() -> None:
    clock = ManualClock()
    store = MemoryStore({ALICE: mapped()})
    policy = engine(store, clock, stale_while_disconnected_seconds=1)
    await policy.resolve({"sub": "alice"}, ISS)
    policy.suspend()
    assert len(policy.cache) == 1
    clock.advance(0.5)
    assert (await policy.resolve({"sub": "alice"}, ISS)).outcome is Verdict.MAPPED
