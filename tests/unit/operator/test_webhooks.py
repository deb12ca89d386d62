"""The validating webhook's rules, called directly (the apiserver path is a control-plane test)."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from jwtkeymap.core.settings import load_settings
from jwtkeymap.operator.webhooks import check

HASH = "b" * 64


def spec(value: str = "a@example.com", name: str = "email", issuer: str = "*") -> dict[str, Any]:
    return {"issuer": issuer, "claim": {"name": name, "value": value}, "key": {"hash": HASH}}


def run(spec_: dict[str, Any], taken: dict[Any, Any] | None = None, **settings: Any) -> None:
    check(
        spec_,
        namespace="ns",
        name="me",
        uid="uid-me",
        settings=load_settings(None, **settings),
        taken=taken or {},
    )


def test_accepts_a_free_identity() -> None:
    run(spec(), {("", "email", "other@example.com"): [("x/y", "uid-y")]})


def test_rejects_an_identity_held_by_another_resource() -> None:
    taken = {("", "email", "a@example.com"): [("team-b/alice", "uid-b")]}
    with pytest.raises(
        kopf.AdmissionError, match="already mapped by JWTKeyMapping team-b/alice"
    ) as e:
        run(spec(), taken)
    assert e.value.code == 409


def test_the_same_resource_may_update_itself() -> None:
    run(spec(), {("", "email", "a@example.com"): [("ns/me", "uid-me")]})


def test_issuer_scope_is_part_of_the_identity() -> None:
    run(spec(issuer="https://idp"), {("", "email", "a@example.com"): [("b/a", "uid-b")]})


def test_casefolded_identities_collide_when_configured() -> None:
    taken = {("", "email", "a@example.com"): [("b/a", "uid-b")]}
    run(spec(value="A@Example.com"), taken)
    with pytest.raises(kopf.AdmissionError):
        run(spec(value="A@Example.com"), taken, casefold_claim=True)


def test_claim_allow_list() -> None:
    with pytest.raises(
        kopf.AdmissionError, match=r"claim 'sub' is not allowed here \(allowed: email\)"
    ):
        run(spec(name="sub"), allowed_claim_names=["email"])
    run(spec(name="email"), allowed_claim_names=["email"])


def test_invalid_spec_is_refused_with_the_field() -> None:
    with pytest.raises(kopf.AdmissionError, match=r"spec\.key\.hash") as e:
        run({"issuer": "*", "claim": {"name": "email", "value": "x"}, "key": {"hash": "nope"}})
    assert e.value.code == 422
