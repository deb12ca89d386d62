"""Owner ids: built and parsed in one place, so a prune by prefix reaches one kind only."""

from __future__ import annotations

import pytest

from jwtkeymap.core.owners import (
    AUTO_REGISTERED,
    Owner,
    OwnerKind,
    k8s_owner,
    offline_owner,
    owner_prefix,
    parse_owner,
)


def test_owner_ids() -> None:
    assert k8s_owner("0f1e-uid") == "k8s:0f1e-uid"
    assert offline_owner("team-a", "alice") == "offline:team-a/alice"
    assert offline_owner("team-a", "alice").startswith(owner_prefix(OwnerKind.OFFLINE))
    assert not k8s_owner("u").startswith(owner_prefix(OwnerKind.OFFLINE))


def test_parse_round_trips() -> None:
    assert parse_owner(k8s_owner("u-1")) == Owner(OwnerKind.K8S, "u-1")
    assert parse_owner(offline_owner("ns", "a")) == Owner(OwnerKind.OFFLINE, "ns/a")
    assert str(Owner(OwnerKind.OFFLINE, "ns/a")) == "offline:ns/a"


@pytest.mark.parametrize("text", ["", "k8s", "helm:release", "K8S:u", "psql"])
def test_foreign_owner_text_is_not_parsed(text: str) -> None:
    assert parse_owner(text) is None


def test_auto_registered_rows_have_an_owner_of_their_own_kind() -> None:
    assert parse_owner(AUTO_REGISTERED) == Owner(OwnerKind.AUTO_REGISTER, "resolver")
    assert not AUTO_REGISTERED.startswith(owner_prefix(OwnerKind.OFFLINE))
