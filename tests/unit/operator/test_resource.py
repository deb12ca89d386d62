"""The JWTKeyMapping spec model: the CRD's rules, and the desired mapping it yields."""

from __future__ import annotations

from typing import Any

import pytest

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.owners import k8s_owner, offline_owner
from jwtkeymap.core.settings import load_settings
from jwtkeymap.operator.resource import (
    SpecError,
    adopt_requested,
    desired_mapping,
    identity_of,
    parse_spec,
)

HASH = "a" * 64


def spec(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "issuer": "*",
        "claim": {"name": "email", "value": "a@example.com"},
        "key": {"hash": HASH},
    }
    base.update(over)
    return base


def test_defaults() -> None:
    parsed = parse_spec(spec())
    assert (parsed.scope, parsed.active, parsed.retain, parsed.description) == (
        "",
        True,
        False,
        None,
    )
    assert parse_spec(spec(deletionPolicy="Retain")).retain


@pytest.mark.parametrize(
    ("bad", "field", "text"),
    [
        (spec(key={}), "spec.key", "exactly one of key.secretRef or key.hash"),
        (
            spec(key={"hash": HASH, "secretRef": {"name": "s", "key": "k"}}),
            "spec.key",
            "exactly one of",
        ),
        (spec(key={"hash": HASH.upper()}), "spec.key.hash", "64 lowercase hex"),
        (
            spec(key={"secretRef": {"name": "Bad_Name", "key": "k"}}),
            "spec.key.secretRef.name",
            "pattern",
        ),
        (spec(claim={"name": "email", "value": ""}), "spec.claim.value", "at least 1"),
        (spec(claim={"name": "a..b", "value": "x"}), "spec.claim.name", "empty segment"),
        (spec(deletionPolicy="Forget"), "spec.deletionPolicy", "'Delete' or 'Retain'"),
        (spec(extra=1), "spec.extra", "Extra inputs"),
        (spec(issuer="https://" + "x" * 505), "spec.issuer", "at most 512"),
        # The scope is explicit: no issuer is refused with both spellings of the fix.
        (spec(issuer=None), "spec.issuer", 'an issuer URL (e.g. https://idp.example.com), or "*"'),
        (spec(issuer=""), "spec.issuer", "at least 1"),
        (spec(issuer="idp.example.com"), "spec.issuer", "pattern"),
        # As the CRD: no coercion, and an escaped trailing dot is still a trailing dot.
        (spec(active="false"), "spec.active", "valid boolean"),
        (spec(claim={"name": "email\\.", "value": "x"}), "spec.claim.name", "escaped dots"),
    ],
)
def test_invalid_specs_name_the_field(bad: dict[str, Any], field: str, text: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(bad)
    assert caught.value.field == field
    assert text in str(caught.value)


def test_identity_is_canonical_and_casefolded_when_configured() -> None:
    parsed = parse_spec(
        spec(issuer="https://idp", claim={"name": "email", "value": "\uff21lice@X"})
    )
    plain = load_settings(None)
    folded = load_settings(None, casefold_claim=True)
    assert identity_of(parsed, plain) == MappingIdentity("https://idp", "email", "\uff21lice@X")
    assert identity_of(parsed, folded) == MappingIdentity("https://idp", "email", "alice@x")


def test_desired_mapping_and_allow_list() -> None:
    parsed = parse_spec(spec(description="d", active=False))
    want = desired_mapping(
        parsed,
        load_settings(None),
        token_hash=HASH,
        owner=k8s_owner("uid-1"),
        ref="ns/a",
        annotations={"jwtkeymap.io/adopt": "True"},
    )
    assert (want.owner, want.ref, want.description, want.active, want.adopt) == (
        "k8s:uid-1", "ns/a", "d", False, True
    )  # fmt: skip
    assert HASH not in repr(want)
    with pytest.raises(SpecError, match="claim 'email' is not allowed"):
        desired_mapping(
            parsed,
            load_settings(None, allowed_claim_names=["sub"]),
            token_hash=HASH,
            owner="o",
            ref="r",
        )


def test_owner_ids_and_adopt_annotation() -> None:
    assert offline_owner("team-a", "alice") == "offline:team-a/alice"
    assert adopt_requested({"jwtkeymap.io/adopt": "true"})
    assert not adopt_requested({"jwtkeymap.io/adopt": "yes"})
    assert not adopt_requested(None)
