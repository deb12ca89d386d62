"""The policy engine when no database is configured, and the rules that need none."""

from __future__ import annotations

from typing import Any

import pytest

from jwtkeymap.core.policy import DenialReason, PolicyEngine, Verdict
from jwtkeymap.core.settings import load_settings

ISS = "https://idp.unit"


def resolver(**settings: Any) -> PolicyEngine:
    return PolicyEngine(load_settings(None, **settings), store=None)


@pytest.mark.parametrize(
    ("behavior", "outcome", "status", "reason"),
    [
        ("reject", Verdict.DENIED, 403, DenialReason.UNREGISTERED_CLIENT),
        ("auto_register", Verdict.DENIED, 500, DenialReason.DATABASE_REQUIRED),
        ("fallback_team_mapping", Verdict.FALLBACK, 200, None),
    ],
)
async def test_no_database(behavior: str, outcome: Verdict, status: int, reason: Any) -> None:
    d = await resolver(unregistered_client_behavior=behavior).resolve({"sub": "u1"}, ISS)
    assert (d.outcome, d.status, d.reason) == (outcome, status, reason)


async def test_reject_without_database_names_the_claim_value() -> None:
    d = await resolver(unregistered_client_behavior="reject").resolve({"sub": "new-user-42"}, ISS)
    assert "new-user-42" in d.message and "sub" in d.message


async def test_auto_register_without_database_says_so() -> None:
    d = await resolver(unregistered_client_behavior="auto_register").resolve({"sub": "u"}, ISS)
    assert "auto_register requires a database" in d.message


@pytest.mark.parametrize(
    ("behavior", "outcome", "status"),
    [
        ("reject", Verdict.DENIED, 403),
        ("auto_register", Verdict.DENIED, 403),
        ("fallback_team_mapping", Verdict.FALLBACK, 200),
    ],
)
async def test_missing_claim(behavior: str, outcome: Verdict, status: int) -> None:
    d = await resolver(unregistered_client_behavior=behavior).resolve({"email": "x@y"}, ISS)
    assert (d.outcome, d.status) == (outcome, status)
    if d.outcome is Verdict.DENIED:
        assert d.reason is DenialReason.CLAIM_MISSING
        assert "'sub'" in d.message and "missing from the JWT" in d.message


@pytest.mark.parametrize("behavior", ["reject", "auto_register", "fallback_team_mapping"])
@pytest.mark.parametrize("value", [["a"], {"a": 1}, True, 1.5, ""])
async def test_invalid_claim_is_403_under_every_behaviour(behavior: str, value: Any) -> None:
    d = await resolver(unregistered_client_behavior=behavior).resolve({"sub": value}, ISS)
    assert (d.status, d.reason) == (403, DenialReason.CLAIM_INVALID)


async def test_admin_rule_is_evaluated_on_every_request() -> None:
    r = resolver(
        unregistered_client_behavior="reject", admin={"claim": "scope", "value": "proxy_admin"}
    )
    admin = await r.resolve({"sub": "boss", "scope": "read proxy_admin"}, ISS)
    assert admin.outcome is Verdict.ADMIN
    # The same subject without the scope is no longer an admin (no sticky sentinel: W7).
    demoted = await r.resolve({"sub": "boss", "scope": "read"}, ISS)
    assert demoted.outcome is Verdict.DENIED and demoted.reason is DenialReason.UNREGISTERED_CLIENT


async def test_admin_needs_no_identifying_claim() -> None:
    r = resolver(unregistered_client_behavior="reject", admin={"claim": "role", "value": "admin"})
    assert (await r.resolve({"role": "admin"}, ISS)).outcome is Verdict.ADMIN


async def test_decision_json_never_contains_the_key_hash() -> None:
    from jwtkeymap.core.keys import KeyIdentity, hash_key
    from jwtkeymap.core.policy import Decision

    h = hash_key("sk-secret")
    d = Decision(Verdict.MAPPED, key=KeyIdentity(token_hash=h, team_id="t"))
    assert h not in str(d.to_json()) and h not in repr(d)


async def test_a_role_containing_the_admin_word_is_not_admin() -> None:
    r = resolver(unregistered_client_behavior="reject", admin={"claim": "role", "value": "admin"})
    assert (await r.resolve({"role": "guest admin", "sub": "g"}, ISS)).outcome is Verdict.DENIED
