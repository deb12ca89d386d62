"""The real API server and the spec model accept and refuse the same JWTKeyMapping specs.

tests/unit/operator/test_crd_schema.py compares the two schemas as data; this asks the
API server itself (a server-side dry run, nothing stored) about the specs where the two
could disagree: wrong types, CEL rules, escaped dots, nulls, unknown fields.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from harness import ControlPlane

from jwtkeymap.operator.resource import API_VERSION, KIND, SpecError, parse_spec

pytestmark = pytest.mark.controlplane

HASH = "a" * 64
BASE: dict[str, Any] = {
    "issuer": "*",
    "claim": {"name": "email", "value": "a@x"},
    "key": {"hash": HASH},
}
SECRET = {"secretRef": {"name": "s", "key": "k"}}


def spec(**over: Any) -> dict[str, Any]:
    out = copy.deepcopy(BASE)
    out.update(over)
    return out


def claim(name: str, value: str = "v") -> dict[str, Any]:
    return spec(claim={"name": name, "value": value})


SPECS: dict[str, dict[str, Any]] = {
    "by hash": spec(),
    "by secret": spec(key=SECRET),
    "every optional field": spec(
        issuer="https://idp", description="d", active=False, deletionPolicy="Retain"
    ),
    "active as text": spec(active="false"),
    "active as number": spec(active=1),
    "issuer as number": spec(issuer=5),
    "issuer too long": spec(issuer="https://" + "x" * 505),
    "no issuer": {k: v for k, v in BASE.items() if k != "issuer"},
    "empty issuer": spec(issuer=""),
    "issuer not a URL": spec(issuer="idp.example.com"),
    "issuer with a space": spec(issuer="https://idp example"),
    "issuer over plain http": spec(issuer="http://127.0.0.1:8080"),
    "unknown field": spec(extra=1),
    "unknown deletion policy": spec(deletionPolicy="Forget"),
    "no key source": spec(key={}),
    "two key sources": spec(key={**SECRET, "hash": HASH}),
    "upper-case hash": spec(key={"hash": HASH.upper()}),
    "hash with a newline": spec(key={"hash": HASH[:63] + "\n"}),
    "short hash": spec(key={"hash": HASH[:63]}),
    "bad Secret name": spec(key={"secretRef": {"name": "Bad_Name", "key": "k"}}),
    "empty claim value": claim("email", ""),
    "dot path": claim("ext.client_id"),
    "escaped dot inside": claim("a\\.b"),
    "escaped dot at the end": claim("a\\."),
    "escaped dot before a dot": claim("a\\..b"),
    "leading dot": claim(".a"),
    "empty segment": claim("a..b"),
    "null issuer": spec(issuer=None),
    "null active": spec(active=None),
    "null deletion policy": spec(deletionPolicy=None),
    "null description": spec(description=None),
    "null hash next to a Secret": spec(key={**SECRET, "hash": None}),
}


def api_accepts(controlplane: ControlPlane, namespace: str, name: str, body: Any) -> bool:
    manifest = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }
    done = controlplane.kubectl(
        "create", "--dry-run=server", "--validate=strict", "-f", "-", input=json.dumps(manifest)
    )
    if done.returncode not in (0, 1):
        raise AssertionError(done.stderr)
    return done.returncode == 0


def model_accepts(body: Any) -> bool:
    try:
        parse_spec(body)
    except SpecError:
        return False
    return True


def test_the_api_server_and_the_model_agree(
    controlplane: ControlPlane, jkm_crd: str, namespace: str
) -> None:
    verdicts = {
        label: (api_accepts(controlplane, namespace, f"m{n}", body), model_accepts(body))
        for n, (label, body) in enumerate(SPECS.items())
    }
    assert verdicts["by hash"] == (True, True)  # the probe itself works
    assert verdicts["active as text"][0] is False  # and can see a refusal
    disagree = {label: v for label, v in verdicts.items() if v[0] != v[1]}
    assert not disagree, f"(API server, model) disagree: {disagree}"
