"""The validating webhook's rules, called directly (the apiserver path is a control-plane test)."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from jwtkeymap.core.settings import load_settings
from jwtkeymap.operator.handlers.indexes import Tenancy
from jwtkeymap.operator.tenancy import parse_policy
from jwtkeymap.operator.webhooks import check, claim_value_of, escape_field, spec_unchanged

HASH = "b" * 64


def spec(value: str = "a@example.com", name: str = "email", issuer: str = "*") -> dict[str, Any]:
    return {"issuer": issuer, "claim": {"name": name, "value": value}, "key": {"hash": HASH}}


# Lets namespace "ns" map anything, so that the other rules can be seen alone.
OPEN = parse_policy(
    "open",
    {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ns"}},
        "issuers": ["*", "https://idp"],
        "claims": [{"name": n, "values": ["*"]} for n in ("email", "sub")],
    },
)


def run(
    spec_: dict[str, Any],
    taken: dict[Any, Any] | None = None,
    *,
    policies: list[Any] | None = None,
    namespace: str = "ns",
    **settings: Any,
) -> None:
    check(
        spec_,
        namespace=namespace,
        name="me",
        uid="uid-me",
        settings=load_settings(None, **settings),
        taken=taken or {},
        tenancy=Tenancy({"all": [OPEN] if policies is None else policies}, {}),
    )


def test_accepts_a_free_identity() -> None:
    run(spec(), {("", "email", "other@example.com"): [("x/y", "uid-y")]})


def test_rejects_an_identity_held_by_another_resource() -> None:
    taken = {("", "email", "a@example.com"): [("team-b/alice", "uid-b")]}
    with pytest.raises(kopf.AdmissionError, match="already mapped by another JWTKeyMapping") as e:
        run(spec(), taken)
    assert e.value.code == 409
    assert "team-b" not in str(e.value)  # another tenant's resource is never named


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


def test_no_policy_refuses_with_what_to_create() -> None:
    with pytest.raises(kopf.AdmissionError, match="no JWTKeyMappingPolicy exists") as e:
        run(spec(), policies=[])
    assert e.value.code == 403


def test_the_policy_is_checked_before_the_identity_is_looked_up() -> None:
    # Another namespace learns nothing about who maps what outside its policy.
    taken = {("", "email", "a@example.com"): [("ns/victim", "uid-v")]}
    with pytest.raises(kopf.AdmissionError, match="selects namespace mallory-ns") as e:
        run(spec(), taken, namespace="mallory-ns")
    assert e.value.code == 403 and "already mapped" not in str(e.value)


def test_an_update_that_keeps_the_spec_is_never_judged_again() -> None:
    # A finalizer removed from a resource no policy allows any more must still go through.
    assert spec_unchanged({"spec": spec()}, spec())
    assert not spec_unchanged({"spec": spec()}, spec(value="b@example.com"))
    assert not spec_unchanged(None, spec())


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("alice@example.com", "alice@example.com"),
        ("cn=ci,o=acme", "cn\\=ci\\,o\\=acme"),
        ("a\\b", "a\\\\b"),
        ("\\,", "\\\\\\,"),
    ],
)
def test_field_selector_values_are_escaped(value: str, escaped: str) -> None:
    assert escape_field(value) == escaped


@pytest.mark.parametrize(
    ("spec", "value"),
    [
        ({"claim": {"name": "email", "value": "a@example.com"}}, "a@example.com"),
        ({"claim": "email"}, None),
        ({"claim": {"value": 42}}, None),
        ({"claim": None}, None),
        ({}, None),
    ],
)
def test_claim_value_of_any_spec_shape(spec: dict[str, Any], value: str | None) -> None:
    assert claim_value_of(spec) == value


def test_claim_value_of_a_kopf_view_of_a_list_spec() -> None:
    view = kopf.Spec({"spec": []})  # what kopf hands over for a spec that is a list
    assert claim_value_of(view) is None
