"""Helpers for the operator tests against the real apiserver (imported by conftest and tests)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import asyncpg
from harness import ControlPlane, apoll

from jwtkeymap.core.keys import hash_key
from jwtkeymap.core.settings import Settings
from support.pki import TLSFiles

# Namespaces with this label are left to the policies their test makes; every other test
# namespace may map what the tests use (tenancy is secure by default: no policy, no mapping).
TENANCY_LABEL = "jwtkeymap.io/tenancy-test"
OPEN_POLICY: dict[str, Any] = {
    "apiVersion": "jwtkeymap.io/v1alpha1",
    "kind": "JWTKeyMappingPolicy",
    "metadata": {"name": "tests-open"},
    "spec": {
        "namespaceSelector": {
            "matchExpressions": [{"key": TENANCY_LABEL, "operator": "DoesNotExist"}]
        },
        "issuers": ["*", "https://idp.example.com", "https://idp"],
        "claims": [{"name": n, "values": ["*"]} for n in ("email", "sub", "azp")],
        "adopt": {"unowned": True, "autoRegistered": True},
    },
}


class Cluster:
    """kubectl helpers for JWTKeyMappings and Secrets, without blocking the event loop."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    async def apply(self, obj: dict[str, Any]) -> None:
        done = await self.plane.akubectl("apply", "-f", "-", input=json.dumps(obj))
        assert done.returncode == 0, done.stderr

    async def apply_mapping(
        self,
        namespace: str,
        name: str,
        spec: dict[str, Any],
        annotations: dict[str, str] | None = None,
    ) -> None:
        meta: dict[str, Any] = {"name": name, "namespace": namespace}
        if annotations:
            meta["annotations"] = annotations
        await self.apply(
            {"apiVersion": "jwtkeymap.io/v1alpha1", "kind": "JWTKeyMapping", "metadata": meta,
             "spec": spec}
        )  # fmt: skip

    async def apply_secret(self, namespace: str, name: str, values: dict[str, str]) -> None:
        await self.apply(
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
             "stringData": values}
        )  # fmt: skip

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        done = await self.plane.akubectl("get", "jkm", name, "-n", namespace, "-o", "json")
        if done.returncode != 0:
            assert "NotFound" in done.stderr, done.stderr
            return None
        return dict(json.loads(done.stdout))

    async def patch(
        self, namespace: str, name: str, patch: dict[str, Any], *, subresource: str = ""
    ) -> None:
        """A merge patch of a JWTKeyMapping (or of its ``subresource``)."""
        extra = [f"--subresource={subresource}"] if subresource else []
        done = await self.plane.akubectl(
            "patch", "jkm", name, "-n", namespace, "--type=merge", "-p", json.dumps(patch), *extra
        )
        assert done.returncode == 0, done.stderr

    async def ready(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Ready condition, if any."""
        obj = await self.get(namespace, name)
        conditions = ((obj or {}).get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "Ready"), None)

    async def wait_reason(
        self, namespace: str, name: str, reason: str, *, timeout: float = 30
    ) -> dict[str, Any]:
        """Wait until the Ready condition has ``reason``; return the whole object."""

        async def check() -> dict[str, Any] | None:
            condition = await self.ready(namespace, name)
            if condition and condition["reason"] == reason:
                return await self.get(namespace, name)
            return None

        return await apoll(check, timeout=timeout, message=f"{namespace}/{name} to be {reason}")

    async def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        done = await self.plane.akubectl(
            "get", "events", "-n", namespace, "-o", "json",
            f"--field-selector=involvedObject.name={name}",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return list(json.loads(done.stdout)["items"])


class RunningOperator:
    """The operator's handlers in a kopf task on this event loop."""

    def __init__(self, task: asyncio.Task[None], stop: asyncio.Event, settings: Settings) -> None:
        self.task = task
        self._stop = stop
        self.settings = settings
        self.runtime: Any = None

    async def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, timeout=30)


StartOperator = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class WebhookSetup:
    """Serve the validating webhook on 127.0.0.1 and let kopf manage its configuration."""

    tls: TLSFiles
    port: int
    config_name: str


async def add_key(db: asyncpg.Connection, plaintext: str, team: str = "team-a") -> str:
    """Insert a virtual key row for ``plaintext``; return its hash."""
    token = hash_key(plaintext)
    await db.execute(
        'INSERT INTO "LiteLLM_VerificationToken" (token, team_id) VALUES ($1, $2)', token, team
    )
    return token


async def rows(db: asyncpg.Connection) -> list[dict[str, Any]]:
    """Every mapping row with its owner."""
    found = await db.fetch(
        "SELECT m.id, m.jwt_issuer, m.jwt_claim_name, m.jwt_claim_value, m.token, m.is_active, "
        'o.owner, o.ref FROM "LiteLLM_JWTKeyMapping" m '
        "LEFT JOIN jwtkeymap_mapping_owner o ON o.mapping_id = m.id ORDER BY m.jwt_claim_value"
    )
    return [dict(r) for r in found]
