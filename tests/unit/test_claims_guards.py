"""Each guard of claim canonicalisation pinned at its edge, with the reason it gives.

`make mutate` showed these could be weakened without a test noticing: the length limit
was only tried one past the maximum, the path parser and the helpers' defaults never.
(The admin match rule has tests of its own, in test_claims.py.)
"""

from __future__ import annotations

import pytest

from jwtkeymap.core.claims import (
    MAX_CLAIM_VALUE_LENGTH,
    MappingIdentity,
    canonicalize,
    extract,
    identity_from_claims,
    optional_string,
    sanitize_for_message,
    split_path,
)
from jwtkeymap.core.errors import ClaimInvalid, ClaimMissing


def test_the_length_limit_admits_exactly_the_maximum() -> None:
    assert MAX_CLAIM_VALUE_LENGTH == 1024
    longest = "x" * MAX_CLAIM_VALUE_LENGTH
    assert canonicalize(longest, field="sub") == longest
    with pytest.raises(ClaimInvalid, match="longer than 1024 characters"):
        canonicalize(longest + "x", field="sub")


def test_a_single_character_is_a_value() -> None:
    assert canonicalize("a", field="sub") == "a"


def test_non_ascii_text_is_kept_and_a_nul_is_refused_in_any_text() -> None:
    assert canonicalize("zoë", field="sub") == "zoë"
    with pytest.raises(ClaimInvalid, match="cannot be stored"):
        canonicalize("zoë\x00", field="sub")


@pytest.mark.parametrize(
    ("value", "kind"),
    [([], "an array"), ({}, "an object"), (2.5, "a number with a fraction"), (b"x", "a bytes")],
)
def test_each_refused_type_is_named(value: object, kind: str) -> None:
    with pytest.raises(ClaimInvalid, match=f"^Claim 'sub' is {kind}; expected"):
        canonicalize(value, field="sub")


def test_zero_is_an_integer_claim() -> None:
    assert canonicalize(0, field="sub") == "0"


def test_casefold_also_normalises_compatibility_characters() -> None:
    # NFKC first: the ligature and the full-width letter fold to what a user typed.
    assert canonicalize("ＡＢﬁ", field="email", casefold=True) == "abfi"
    assert canonicalize("ＡＢﬁ", field="email") == "ＡＢﬁ"


def test_identity_from_claims_casefolds_only_when_asked() -> None:
    claims = {"email": "Alice@X"}
    assert identity_from_claims(claims, issuer="i", field="email").claim_value == "Alice@X"
    folded = identity_from_claims(claims, issuer="i", field="email", casefold=True)
    assert folded == MappingIdentity("i", "email", "alice@x")


def test_a_path_of_one_segment_and_an_escaped_dot() -> None:
    assert split_path("sub") == ("sub",)
    assert split_path("realm.roles") == ("realm", "roles")
    assert split_path("a\\.b.c") == ("a.b", "c")
    with pytest.raises(ValueError, match="is empty"):
        split_path("")
    with pytest.raises(ValueError, match="empty segment"):
        split_path("a..b")


def test_a_claim_inside_a_list_or_a_string_is_missing_not_indexed() -> None:
    for claims in ({"realm": ["email"]}, {"realm": "email"}):
        with pytest.raises(ClaimMissing, match=r"'realm\.email' is missing"):
            extract(claims, "realm.email")


def test_falsy_claims_are_present() -> None:
    assert extract({"n": 0}, "n") == 0
    assert extract({"s": ""}, "s") == ""


def test_an_optional_claim_is_canonical_and_an_empty_path_reads_nothing() -> None:
    assert optional_string({"team": 7}, "team") == "7"
    assert optional_string({"team": "t"}, "") is None
    assert optional_string({"team": ""}, "team") is None


def test_identity_labels_and_json() -> None:
    ident = MappingIdentity("https://idp", "sub", "u")
    assert ident.to_json() == {"issuer": "https://idp", "claim_name": "sub", "claim_value": "u"}
    assert ident.as_global().label() == "sub=u"


def test_a_sanitized_message_keeps_short_values_and_cuts_long_ones_at_the_limit() -> None:
    assert sanitize_for_message("alice") == "alice"
    exact = "x" * 64
    assert sanitize_for_message(exact) == exact
    cut = sanitize_for_message("x" * 65)
    assert len(cut) == 64 and cut.endswith("…")
    assert sanitize_for_message("abcdef", limit=4) == "abc…"
    assert sanitize_for_message('a"b\\c') == "a?b?c"
