"""JWTKeyMappingPolicy: which namespaces may map which identities, secure by default."""

from __future__ import annotations

from typing import Any

import pytest

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.reconcile.desired import Adoptable
from jwtkeymap.operator.tenancy import (
    NamespaceSelector,
    PolicyError,
    admit,
    parse_policy,
    selects,
    value_matches,
)

IDP = "https://idp.example.com"
ALICE = MappingIdentity("", "email", "alice@alpha.example.com")


def alpha(**over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "team-alpha"}},
        "issuers": ["*", IDP],
        "claims": [{"name": "email", "values": ["*@alpha.example.com"]}],
    }
    spec.update(over)
    return spec


def test_no_policy_allows_nothing_and_says_what_to_create() -> None:
    answer = admit([], "team-alpha", {}, ALICE)
    assert not answer.allowed and answer.may_adopt == frozenset()
    assert "no JWTKeyMappingPolicy exists" in answer.reason
    assert "namespaceSelector selects team-alpha" in answer.reason
    assert "issuer *, email=alice@alpha.example.com" in answer.reason


def test_a_policy_allows_its_namespaces_scopes_claims_and_patterns() -> None:
    policy = parse_policy("alpha", alpha())
    assert admit([policy], "team-alpha", {}, ALICE).allowed
    scoped = MappingIdentity(IDP, "email", "bob@alpha.example.com")
    assert admit([policy], "team-alpha", None, scoped).allowed

    elsewhere = admit([policy], "mallory-ns", {}, ALICE)
    assert not elsewhere.allowed
    assert elsewhere.reason.startswith("no JWTKeyMappingPolicy selects namespace mallory-ns")
    for identity in (
        MappingIdentity("", "email", "victim@beta.example.com"),  # another team's value
        MappingIdentity("", "sub", "alice@alpha.example.com"),  # a claim not listed
        MappingIdentity("https://other.example", "email", "alice@alpha.example.com"),
    ):
        refused = admit([policy], "team-alpha", {}, identity)
        assert not refused.allowed, identity
        assert "(policies selecting it: alpha)" in refused.reason


def test_policies_add_up_and_adoption_is_granted_per_kind() -> None:
    base = parse_policy("alpha", alpha())
    adopting = parse_policy("alpha-adopt", alpha(adopt={"autoRegistered": True}))
    answer = admit([base, adopting], "team-alpha", {}, ALICE)
    assert answer.allowed and answer.may_adopt == {Adoptable.AUTO_REGISTERED}
    assert admit([base], "team-alpha", {}, ALICE).may_adopt == frozenset()
    # Adoption rights come only from a policy that allows the mapping itself.
    other = parse_policy("beta", {**alpha(adopt={"unowned": True}), "issuers": [IDP]})
    assert admit([base, other], "team-alpha", {}, ALICE).may_adopt == frozenset()


@pytest.mark.parametrize(
    ("selector", "labels", "selected"),
    [
        ({}, {}, True),
        ({"matchLabels": {"tier": "gold"}}, {"tier": "gold"}, True),
        ({"matchLabels": {"tier": "gold"}}, {"tier": "silver"}, False),
        ({"matchExpressions": [{"key": "t", "operator": "In", "values": ["a"]}]}, {"t": "a"}, True),
        ({"matchExpressions": [{"key": "t", "operator": "NotIn", "values": ["a"]}]}, {}, True),
        ({"matchExpressions": [{"key": "t", "operator": "Exists"}]}, {}, False),
        ({"matchExpressions": [{"key": "t", "operator": "DoesNotExist"}]}, {}, True),
    ],
)
def test_namespace_selectors(
    selector: dict[str, Any], labels: dict[str, str], selected: bool
) -> None:
    assert selects(NamespaceSelector.model_validate(selector), labels) is selected


@pytest.mark.parametrize(
    ("pattern", "value", "matched"),
    [
        ("*@alpha.example.com", "alice@alpha.example.com", True),
        ("*@alpha.example.com", "alice@alpha.example.com.evil", False),
        ("*@alpha.example.com", "alice@alphaxexample.com", False),  # "." is no wildcard
        ("ci-*", "ci-", True),
        ("*", "anything\nat all", True),
        ("exact", "exact", True),
        ("exact", "Exact", False),
    ],
)
def test_value_patterns(pattern: str, value: str, matched: bool) -> None:
    assert value_matches(pattern, value) is matched


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (alpha(issuers=[]), "spec.issuers"),
        (alpha(issuers=["idp.example.com"]), "spec.issuers.0"),
        (alpha(claims=[{"name": "email", "values": []}]), "spec.claims.0.values"),
        (alpha(adopt={"unowned": "true"}), "spec.adopt.unowned"),
        ({k: v for k, v in alpha().items() if k != "namespaceSelector"}, "spec.namespaceSelector"),
    ],
)
def test_invalid_policies_name_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(PolicyError, match=rf"^{field.replace('.', '[.]')}: "):
        parse_policy("p", spec)
