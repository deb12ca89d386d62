"""Kubernetes names: one definition, anchored wherever it is used."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jwtkeymap.operator.names import DNS_SUBDOMAIN_RE
from jwtkeymap.operator.resource import SecretRef
from jwtkeymap.operator.sidecar.defaults import SecretKeyRef


@pytest.mark.parametrize("name", ["a", "db", "jwtkeymap-database", "a.b-c.d", "0x"])
def test_subdomains(name: str) -> None:
    assert DNS_SUBDOMAIN_RE.fullmatch(name)
    SecretRef(name=name, key="k")
    SecretKeyRef(secret_name=name, key="k")


@pytest.mark.parametrize("name", ["", "A", "-a", "a-", "a..b", "a_b", "Db_Creds", "x/y"])
def test_not_subdomains(name: str) -> None:
    assert not DNS_SUBDOMAIN_RE.fullmatch(name)
    with pytest.raises(ValidationError):
        SecretRef(name=name, key="k")
    # The chart's values.schema.json anchors this pattern too.
    with pytest.raises(ValidationError):
        SecretKeyRef(secret_name=name, key="k")
