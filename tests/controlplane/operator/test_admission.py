"""The validating webhook, served by the operator and called by the real apiserver over TLS."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from harness import ControlPlane, apoll
from operator_kit import Cluster, StartOperator, WebhookSetup, add_key

pytestmark = pytest.mark.controlplane


def mapping(namespace: str, name: str, claim: str, value: str, token: str) -> str:
    return json.dumps(
        {
            "apiVersion": "jwtkeymap.io/v1alpha1",
            "kind": "JWTKeyMapping",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "issuer": "*",
                "claim": {"name": claim, "value": value},
                "key": {"hash": token},
            },
        }
    )


async def test_webhook_rejects_taken_identities_and_forbidden_claims(
    controlplane: ControlPlane,
    cluster: Cluster,
    start_operator: StartOperator,
    webhook: WebhookSetup,
    database_url: str,
    db: Any,
) -> None:
    first_ns, second_ns = (f"t-{uuid.uuid4().hex[:10]}" for _ in range(2))
    for ns in (first_ns, second_ns):
        await controlplane.akubectl("create", "namespace", ns, check=True)
    token = await add_key(db, "sk-webhook")
    await start_operator(
        [first_ns, second_ns], database_url, webhook=webhook, allowed_claim_names=["email"]
    )

    async def forbidden_claim_refused() -> str | None:
        # Probe with server-side dry runs until the apiserver has loaded the configuration.
        done = await controlplane.akubectl(
            "create", "--dry-run=server", "-f", "-",
            input=mapping(first_ns, "probe", "sub", "42", token),
        )  # fmt: skip
        return done.stderr if done.returncode != 0 else None

    refused = await apoll(forbidden_claim_refused, message="the webhook to be called")
    assert "denied the request" in refused
    assert "spec.claim.name: claim 'sub' is not allowed here (allowed: email)" in refused

    created = await controlplane.akubectl(
        "create", "-f", "-", input=mapping(first_ns, "alice", "email", "alice@x.example", token)
    )
    assert created.returncode == 0, created.stderr
    await cluster.wait_reason(first_ns, "alice", "Synced")

    async def duplicate_refused() -> str | None:
        done = await controlplane.akubectl(
            "create", "-f", "-",
            input=mapping(second_ns, "alice", "email", "alice@x.example", token),
        )  # fmt: skip
        return done.stderr if done.returncode != 0 else None

    refused = await apoll(duplicate_refused, message="the duplicate to be refused")
    assert "email=alice@x.example is already mapped by another JWTKeyMapping" in refused
    assert first_ns not in refused  # another tenant's resource is never named
    assert await cluster.get(second_ns, "alice") is None

    # The owner itself may still be updated.
    updated = await controlplane.akubectl(
        "apply", "-f", "-", input=mapping(first_ns, "alice", "email", "alice@x.example", token)
    )
    assert updated.returncode == 0, updated.stderr

    # The webhook lists only the mappings of the claim value under review (a field
    # selector): a value holding the selector's syntax still finds its holder, and a
    # value that only starts the same way is another identity.
    dn = "cn=ci\\robot,o=acme"
    created = await controlplane.akubectl(
        "create", "-f", "-", input=mapping(first_ns, "robot", "email", dn, token)
    )
    assert created.returncode == 0, created.stderr
    again = await controlplane.akubectl(
        "create", "-f", "-", input=mapping(second_ns, "robot", "email", dn, token)
    )
    assert again.returncode != 0
    assert f"email={dn} is already mapped by another JWTKeyMapping" in again.stderr
    other = await controlplane.akubectl(
        "create", "-f", "-", input=mapping(second_ns, "robot", "email", "cn=ci\\robot", token)
    )
    assert other.returncode == 0, other.stderr
    # The CRD declares the field selectable, so the API server itself narrows the list.
    listed = await controlplane.akubectl(
        "get", "jkm", "-A", "-o", "name",
        "--field-selector", "spec.claim.value=cn\\=ci\\\\robot\\,o\\=acme",
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["jwtkeymapping.jwtkeymap.io/robot"]
