"""Helpers for the install, RBAC and upgrade tests on the real node (kubectl, PostgreSQL rows)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import asyncpg
from harness import ControlPlane, poll

from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.core.db.schema import MAPPING_TABLE
from jwtkeymap.core.db.store import Store

LABELLED = {"jwtkeymap.io/inject": "true"}


def get(kube: ControlPlane, *args: str) -> dict[str, Any]:
    """`kubectl get … -o json`."""
    return json.loads(kube.kubectl("get", *args, "-o", "json", check=True).stdout)


def apply(kube: ControlPlane, obj: dict[str, Any]) -> None:
    """`kubectl apply` of an object given as a dict; fails with kubectl's message."""
    done = kube.kubectl("apply", "-f", "-", input=json.dumps(obj))
    assert done.returncode == 0, done.stderr


def fullname(release_name: str) -> str:
    """The chart's object name prefix (jwtkeymap.fullname without overrides)."""
    return release_name if "jwtkeymap" in release_name else f"{release_name}-jwtkeymap"


def operator_pods(kube: ControlPlane, release_name: str, namespace: str) -> list[dict[str, Any]]:
    """The operator's pods, terminating ones left out."""
    pods = get(
        kube, "pods", "-n", namespace, "-l",
        f"app.kubernetes.io/instance={release_name},app.kubernetes.io/component=operator",
    )  # fmt: skip
    return [p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]


def is_ready(pod: dict[str, Any]) -> bool:
    """Whether the pod's Ready condition is True."""
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def pod_logs(kube: ControlPlane, namespace: str, pod: str) -> str:
    """A pod's log: every container, and the previous instance of any that restarted."""
    out = kube.kubectl("logs", "-n", namespace, pod, "--all-containers")
    previous = kube.kubectl("logs", "-n", namespace, pod, "--all-containers", "--previous")
    return (previous.stdout if previous.returncode == 0 else "") + out.stdout


# --- PostgreSQL ---------------------------------------------------------------------------


def create_key(database_url: str, team_id: str) -> str:
    """A virtual key in the database, as `jwtkeymap key create` makes one; its plaintext."""

    async def create() -> str:
        store = await Store.open(database_url)
        try:
            plaintext, _ = await store.create_key(NewKey(team_id=team_id), actor="node-test")
        finally:
            await store.close()
        return plaintext

    return asyncio.run(create())


def mapping_rows(database_url: str, claim_value: str) -> list[dict[str, Any]]:
    """The rows of ``LiteLLM_JWTKeyMapping`` for one claim value."""

    async def fetch() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                f"SELECT * FROM {MAPPING_TABLE} WHERE jwt_claim_value = $1", claim_value
            )
        finally:
            await conn.close()
        return [dict(r) for r in rows]

    return asyncio.run(fetch())


# --- mappings -----------------------------------------------------------------------------


def allow_namespace(kube: ControlPlane, namespace: str) -> None:
    """The platform team's policy letting ``namespace`` map e-mails of its own domain."""
    apply(
        kube,
        {
            "apiVersion": "jwtkeymap.io/v1alpha1",
            "kind": "JWTKeyMappingPolicy",
            "metadata": {"name": f"node-{namespace}"},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "issuers": ["*"],
                "claims": [{"name": "email", "values": [f"*@{namespace}.example.com"]}],
            },
        },
    )


def declare_mapping(
    kube: ControlPlane, namespace: str, name: str, database_url: str
) -> tuple[str, str]:
    """A key in PostgreSQL, a Secret holding it and a JWTKeyMapping of ``name@namespace``
    to it (with the policy allowing it); returns (claim value, plaintext key)."""
    allow_namespace(kube, namespace)
    plaintext = create_key(database_url, team_id=f"team-{namespace}")
    secret = kube.kubectl(
        "create", "secret", "generic", f"{name}-key", "-n", namespace,
        f"--from-literal=apiKey={plaintext}",
    )  # fmt: skip
    assert secret.returncode == 0, secret.stderr
    value = f"{name}@{namespace}.example.com"
    mapping = {
        "apiVersion": "jwtkeymap.io/v1alpha1",
        "kind": "JWTKeyMapping",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "issuer": "*",
            "claim": {"name": "email", "value": value},
            "key": {"secretRef": {"name": f"{name}-key", "key": "apiKey"}},
            "description": "node test",
        },
    }

    # The webhook reads policies from its watch cache: the new one reaches each replica soon
    # after it is created, not at once.
    def admitted() -> subprocess.CompletedProcess[str] | None:
        done = kube.kubectl("apply", "-f", "-", input=json.dumps(mapping))
        return None if "no JWTKeyMappingPolicy" in done.stderr else done

    done = poll(admitted, timeout=30, message="the webhook to know the new policy")
    assert done.returncode == 0, done.stderr
    return value, plaintext


def ready_condition(kube: ControlPlane, namespace: str, name: str) -> dict[str, Any] | None:
    """The mapping's Ready condition, if it has one."""
    status = get(kube, "jwtkeymapping", name, "-n", namespace).get("status", {})
    found = [c for c in status.get("conditions", []) if c["type"] == "Ready"]
    return found[0] if found else None


def wait_synced(kube: ControlPlane, namespace: str, name: str, timeout: float = 90) -> None:
    """Poll until the mapping is Ready with reason Synced (fails naming the last condition)."""

    def synced() -> bool:
        condition = ready_condition(kube, namespace, name)
        return bool(condition and condition["status"] == "True")

    try:
        poll(synced, timeout=timeout, message=f"JWTKeyMapping {namespace}/{name} to be Ready")
    except TimeoutError as err:
        raise AssertionError(
            f"{err}; its Ready condition: {ready_condition(kube, namespace, name)}"
        ) from err
    condition = ready_condition(kube, namespace, name)
    assert condition is not None
    assert condition["reason"] == "Synced", condition
