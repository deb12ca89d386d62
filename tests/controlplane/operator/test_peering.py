"""Several replicas with kopf peering: one active (highest priority), the other takes over."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import asyncpg
import pytest
from harness import ControlPlane, apoll
from operator_kit import Cluster, StartOperator, add_key, rows

from jwtkeymap.demo.ports import free_port

pytestmark = pytest.mark.controlplane

PEERING_CRDS = Path(__file__).resolve().parents[3] / "crds" / "kopf-peering.yaml"


@pytest.fixture(scope="module")
def peering_crds(controlplane: ControlPlane) -> None:
    controlplane.kubectl("apply", "-f", str(PEERING_CRDS), check=True)
    for crd in ("kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"):
        controlplane.kubectl("wait", "--for=condition=Established", f"crd/{crd}", check=True)


async def test_standby_replica_takes_over(
    controlplane: ControlPlane,
    cluster: Cluster,
    namespace: str,
    start_operator: StartOperator,
    database_url: str,
    db: asyncpg.Connection,
    peering_crds: None,
    tmp_path: Path,
) -> None:
    await cluster.apply(
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
         "metadata": {"name": "jwtkeymap", "namespace": namespace}}
    )  # fmt: skip
    token = await add_key(db, "sk-peer")
    active = await start_operator([namespace], database_url, peering=("jwtkeymap", 200))
    # The standby is a real `jwtkeymap operator` process, as a second replica would be.
    liveness_port = free_port()
    log = tmp_path / "standby.log"
    env = {**controlplane.client_env(), "JWTKEYMAP_DATABASE_URL": database_url}
    with log.open("wb") as out:
        standby = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jwtkeymap", "operator", "-n", namespace,
            "--peering", "jwtkeymap", "--priority", "100",
            "--liveness", f"http://127.0.0.1:{liveness_port}/healthz",
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:

        async def both_registered() -> bool:
            got = await controlplane.akubectl(
                "get", "kopfpeering", "jwtkeymap", "-n", namespace, "-o", "json"
            )
            return len(json.loads(got.stdout).get("status") or {}) == 2

        await apoll(both_registered, message="both replicas in the peering")
        health = await apoll(
            lambda: _get(f"http://127.0.0.1:{liveness_port}/healthz"), message="liveness"
        )
        assert json.loads(health)["database"] == "ok"

        spec = {
            "issuer": "*",
            "claim": {"name": "email", "value": "peer@example.com"},
            "key": {"hash": token},
        }
        await cluster.apply_mapping(namespace, "peer", spec)
        await cluster.wait_reason(namespace, "peer", "Synced")
        assert active.runtime.reconciler.reconciles >= 1
        assert b"Handler 'create'" not in log.read_bytes()  # the standby stayed paused

        await active.stop()  # a graceful exit withdraws it from the peering at once
        spec["claim"]["value"] = "peer@new.example.com"
        await cluster.apply_mapping(namespace, "peer", spec)

        async def moved() -> bool:
            return [r["jwt_claim_value"] for r in await rows(db)] == ["peer@new.example.com"]

        await apoll(moved, timeout=60, message="the standby to take over")
        await cluster.wait_reason(namespace, "peer", "Synced")
        obj = await cluster.get(namespace, "peer")
        assert obj is not None and obj["status"]["observedGeneration"] == 2
    finally:
        if standby.returncode is None:
            standby.terminate()
            try:
                await asyncio.wait_for(standby.wait(), timeout=30)
            except TimeoutError:
                standby.kill()
                await standby.wait()
    assert b"sk-peer" not in log.read_bytes() and token.encode() not in log.read_bytes()


async def _get(url: str) -> str | None:
    def fetch() -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            return None

    return await asyncio.to_thread(fetch)
