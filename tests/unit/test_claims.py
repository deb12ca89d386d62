"""Claim extraction and canonicalisation (W4: no silent coercion)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jwtkeymap.core.claims import (
    MAX_CLAIM_VALUE_LENGTH,
    MappingIdentity,
    MatchRule,
    canonicalize,
    extract,
    identity_from_claims,
    matches,
    optional_string,
    sanitize_for_message,
    split_path,
)
from jwtkeymap.core.errors import ClaimInvalid, ClaimMissing


def test_identity_label_names_the_issuer_only_when_scoped() -> None:
    assert MappingIdentity("", "email", "a@x").label() == "email=a@x"
    assert MappingIdentity("https://idp", "email", "a@x").label() == "https://idp email=a@x"


def test_dot_path_reads_nested_claims() -> None:
    assert extract({"realm": {"email": "a@x"}}, "realm.email") == "a@x"


def test_escaped_dot_names_a_literal_key() -> None:
    assert extract({"a.b": "v", "a": {"b": "other"}}, "a\\.b") == "v"


def test_metadata_prefix_is_not_special() -> None:
    # LiteLLM stripped a leading "metadata." (W17); here it is an ordinary path.
    assert extract({"metadata": {"sub": "x"}}, "metadata.sub") == "x"
    with pytest.raises(ClaimMissing):
        extract({"sub": "x"}, "metadata.sub")


@pytest.mark.parametrize("claims", [{}, {"sub": None}, {"realm": "flat"}, {"realm": {}}])
def test_absent_or_null_claim_is_missing(claims: dict) -> None:
    with pytest.raises(ClaimMissing, match="missing from the JWT"):
        extract(claims, "realm.sub" if "realm" in claims else "sub")


@pytest.mark.parametrize("path", ["", ".", "a..b", "a."])
def test_malformed_path_is_refused(path: str) -> None:
    with pytest.raises(ValueError):
        split_path(path)


@pytest.mark.parametrize(
    ("value", "expected"), [("alice", "alice"), (42, "42"), (-7, "-7"), (10**20, str(10**20))]
)
def test_strings_and_integers_are_canonical(value: object, expected: str) -> None:
    assert canonicalize(value, field="sub") == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (True, "boolean"),
        (False, "boolean"),
        (1.5, "fraction"),
        (1.0, "fraction"),
        (["a"], "array"),
        ({"a": 1}, "object"),
        ("", "empty"),
        ("x" * (MAX_CLAIM_VALUE_LENGTH + 1), "longer"),
        ("a\x00b", "cannot be stored"),
        ("\ud800", "cannot be stored"),
    ],
)
def test_ambiguous_values_are_invalid(value: object, fragment: str) -> None:
    with pytest.raises(ClaimInvalid, match=fragment):
        canonicalize(value, field="sub")


def test_colons_are_ordinary_characters() -> None:
    assert canonicalize("a:b:c", field="sub") == "a:b:c"


def test_casefold_is_opt_in() -> None:
    assert canonicalize("Alice@Example.COM", field="email") == "Alice@Example.COM"
    assert canonicalize("Alice@Example.COM", field="email", casefold=True) == "alice@example.com"


def test_identity_carries_issuer() -> None:
    ident = identity_from_claims({"sub": "u"}, issuer="https://a", field="sub")
    assert ident == MappingIdentity("https://a", "sub", "u")
    assert ident.as_global() == MappingIdentity("", "sub", "u")


def test_admin_rule_matches_strings_lists_and_scope_strings() -> None:
    assert matches({"role": "admin"}, "role", "admin")
    assert matches({"scope": "read litellm_proxy_admin"}, "scope", "litellm_proxy_admin")
    assert matches({"groups": ["a", "litellm_proxy_admin"]}, "groups", "litellm_proxy_admin")
    assert not matches({"scope": "litellm_proxy_admin_x"}, "scope", "litellm_proxy_admin")
    assert not matches({"role": True}, "role", "True")
    assert not matches({}, "role", "admin")


def test_optional_identity_claims() -> None:
    assert optional_string({"team": "t1"}, "team") == "t1"
    assert optional_string({"team": ["t1"]}, "team") is None
    assert optional_string({}, "team") is None
    assert optional_string({"team": "t1"}, None) is None


def test_messages_never_echo_raw_values() -> None:
    out = sanitize_for_message("evil'\n\x1b[31m" + "x" * 500)
    assert "\n" not in out and "\x1b" not in out and "'" not in out
    assert len(out) <= 64


@given(st.text(min_size=1, max_size=100), st.text(min_size=1, max_size=100))
def test_canonical_values_round_trip_through_identity(a: str, b: str) -> None:
    try:
        va, vb = canonicalize(a, field="f"), canonicalize(b, field="f")
    except ClaimInvalid:
        return
    assert (va == vb) == (a == b)


def test_admin_match_is_exact_except_for_scope_claims() -> None:
    # A role of "guest admin" is not the role "admin": only scope strings are split into words.
    assert not matches({"role": "guest admin"}, "role", "admin")
    assert matches({"scp": "read admin"}, "scp", "admin")
    assert matches({"realm": {"scope": "a admin"}}, "realm.scope", "admin")
    assert matches({"roles": ["guest", "admin"]}, "roles", "admin")


def test_admin_match_rule_can_be_chosen() -> None:
    assert matches({"role": "guest admin"}, "role", "admin", MatchRule.WORD)
    assert not matches({"scope": "a admin"}, "scope", "admin", MatchRule.EXACT)
    assert not matches({"role": "admin"}, "role", "admin", MatchRule.ELEMENT)
    assert matches({"role": ["admin"]}, "role", "admin", MatchRule.ELEMENT)
