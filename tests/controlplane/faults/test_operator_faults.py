"""Operator faults against the real apiserver: a crash mid-batch, deletions while the
database is down (with a crash on top), revocation through a CR seen by every resolver,
and nothing secret in what the operator leaves behind (logs, status, Events, metrics).

The operator runs as a real ``jwtkeymap operator`` process, killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import asyncpg
import pytest
from harness import ControlPlane, apoll
from operator_kit import Cluster, add_key, rows

from jwtkeymap.core.keys import hash_key
from jwtkeymap.demo.polling import wait_until
from jwtkeymap.demo.ports import free_port
from jwtkeymap.demo.postgres import ThrowawayPostgres
from jwtkeymap.demo.resolver import check_token
from jwtkeymap.demo.signing import SigningKey
from support.integrity import integrity
from support.servers import OperatorProcess, trusting_resolver, wait_ready

pytestmark = [pytest.mark.controlplane, pytest.mark.slow]

BATCH = 40
BOUND = 5.0  # seconds for a revocation to reach every resolver (TTL 300)


def operator_for(
    plane: ControlPlane, namespace: str, database_url: str, **extra: Any
) -> OperatorProcess:
    return OperatorProcess(
        [namespace],
        {
            "database_url": database_url,
            "db_timeout_seconds": 2,
            "reconcile_backoff_seconds": 0.25,
            "reconcile_backoff_max_seconds": 1,
            "drift_interval_seconds": 300,
            **extra,
        },
        env=plane.client_env(),
    )


def mapping(namespace: str, name: str, value: str, key: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "jwtkeymap.io/v1alpha1", "kind": "JWTKeyMapping",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"issuer": "*", "claim": {"name": "sub", "value": value}, "key": key},
    }  # fmt: skip


async def apply_all(plane: ControlPlane, objects: list[dict[str, Any]]) -> None:
    """One kubectl apply for the whole batch, as a GitOps sync would do it."""
    done = await plane.akubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    )
    assert done.returncode == 0, done.stderr


async def mappings(plane: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    done = await plane.akubectl("get", "jkm", "-n", namespace, "-o", "json")
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout)["items"])


def reason(obj: dict[str, Any]) -> str | None:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c["reason"] for c in conditions if c["type"] == "Ready"), None)


async def wait_all_synced(plane: ControlPlane, namespace: str, count: int) -> list[dict[str, Any]]:
    async def synced() -> list[dict[str, Any]] | None:
        items = await mappings(plane, namespace)
        ok = len(items) == count and all(reason(o) == "Synced" for o in items)
        return items if ok else None

    return await apoll(synced, timeout=90, message=f"{count} mappings Synced")


async def count_rows(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval('SELECT count(*) FROM "LiteLLM_JWTKeyMapping"'))
    finally:
        await conn.close()


async def test_operator_killed_mid_batch_ends_with_every_row_once(
    controlplane: ControlPlane,
    cluster: Cluster,
    namespace: str,
    private_pg: ThrowawayPostgres,
    signing_key: SigningKey,
) -> None:
    plane = controlplane
    conn = await asyncpg.connect(private_pg.url)
    plaintexts = {f"user-{i}": f"sk-batch-{i}-{time.time_ns()}" for i in range(BATCH)}
    hashes = {sub: await add_key(conn, key) for sub, key in plaintexts.items()}
    await conn.close()
    objects: list[dict[str, Any]] = []
    for i, sub in enumerate(plaintexts):
        if i % 2:  # half by Secret (a plaintext key), half by hash
            objects.append(
                {"apiVersion": "v1", "kind": "Secret",
                 "metadata": {"name": f"key-{i}", "namespace": namespace},
                 "stringData": {"apiKey": plaintexts[sub]}}
            )  # fmt: skip
            key = {"secretRef": {"name": f"key-{i}", "key": "apiKey"}}
        else:
            key = {"hash": hashes[sub]}
        objects.append(mapping(namespace, f"m-{i}", sub, key))

    op = operator_for(plane, namespace, private_pg.url)
    resolver = trusting_resolver(signing_key, private_pg.url, unregistered_client_behavior="reject")
    try:
        op.start()
        await apply_all(plane, objects)

        async def some_rows() -> bool:
            return await count_rows(private_pg.url) > 0

        await wait_until(some_rows, timeout=60, what="the first rows")
        op.kill()
        at_kill = await count_rows(private_pg.url)
        assert at_kill < BATCH, "the kill came after the whole batch: not mid-batch"

        op.start()
        items = await wait_all_synced(plane, namespace, BATCH)
        conn = await asyncpg.connect(private_pg.url)
        try:
            found = await rows(conn)
            state = await integrity(conn)
        finally:
            await conn.close()
        assert state.sound and state.mappings == BATCH and state.owned == BATCH, state
        by_value = {r["jwt_claim_value"]: r for r in found}
        assert {v: r["token"] for v, r in by_value.items()} == hashes
        for obj in items:
            row = by_value[obj["spec"]["claim"]["value"]]
            assert row["owner"] == f"k8s:{obj['metadata']['uid']}"
            assert obj["status"]["mappingId"] == row["id"]

        # Revocation through the control plane reaches a running resolver within BOUND.
        await resolver.start()
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, [resolver])
            token = signing_key.sign({"sub": "user-0"})
            assert (await check_token(http, resolver.url, token)).key_hash == hashes["user-0"]
            patch = await plane.akubectl(
                "patch", "jkm", "m-0", "-n", namespace, "--type=merge",
                "-p", json.dumps({"spec": {"active": False}}),
            )  # fmt: skip
            assert patch.returncode == 0, patch.stderr
            started = time.monotonic()

            async def inactive() -> bool:
                got = await check_token(http, resolver.url, token)
                return got.reason == "mapping_inactive"

            await wait_until(inactive, timeout=BOUND, what="the inactive CR honoured")
            assert time.monotonic() - started < BOUND
            metrics = await (await http.get(f"{resolver.url}/metrics")).text()

        # Nothing secret in what the operator and the resolver left behind.
        events = await plane.akubectl("get", "events", "-n", namespace, "-o", "json")
        statuses = json.dumps([o.get("status") for o in await mappings(plane, namespace)])
        assert "Logging error" not in op.full_output()
        exposed = "\n".join(
            [op.full_output(), op.metrics(), statuses, events.stdout, metrics, resolver.output()]
        )
        for sub, plaintext in plaintexts.items():
            assert plaintext not in exposed, sub
            assert hashes[sub] not in exposed, sub
            assert hash_key(plaintext) == hashes[sub]
        assert "keyFingerprint" in statuses  # the fingerprint is what may be shown
    finally:
        await asyncio.to_thread(resolver.stop)
        await asyncio.to_thread(op.stop)


async def test_deleted_while_database_down_and_operator_crashed(
    controlplane: ControlPlane,
    cluster: Cluster,
    namespace: str,
    private_pg: ThrowawayPostgres,
) -> None:
    plane = controlplane
    conn = await asyncpg.connect(private_pg.url)
    hashes = {f"d-{i}": await add_key(conn, f"sk-down-{i}-{time.time_ns()}") for i in range(8)}
    await conn.close()
    # Redis configured (for LiteLLM's cache) but never there: fault 3 for the operator.
    redis_down = f"redis://127.0.0.1:{free_port()}/0"
    op = operator_for(plane, namespace, private_pg.url, redis_url=redis_down)
    try:
        op.start()
        await apply_all(
            plane, [mapping(namespace, sub, sub, {"hash": h}) for sub, h in hashes.items()]
        )
        await wait_all_synced(plane, namespace, len(hashes))
        doomed = ["d-0", "d-3", "d-5"]

        await asyncio.to_thread(private_pg.stop)
        done = await plane.akubectl("delete", "jkm", *doomed, "-n", namespace, "--wait=false")
        assert done.returncode == 0, done.stderr
        for name in doomed:
            obj = await cluster.wait_reason(namespace, name, "DatabaseUnavailable")
            assert obj["metadata"]["finalizers"] == ["jwtkeymap.io/finalizer"]
        # A crash while the database is still down: the finalizers must outlive it.
        op.kill()
        op.start()
        for name in doomed:
            obj = await cluster.get(namespace, name)
            assert obj is not None and obj["metadata"]["deletionTimestamp"]

        await asyncio.to_thread(private_pg.start)

        async def released() -> bool:
            names = {o["metadata"]["name"] for o in await mappings(plane, namespace)}
            return not names & set(doomed)

        await apoll(released, timeout=60, message="the finalizers to be released")
        conn = await asyncpg.connect(private_pg.url)
        try:
            left = {r["jwt_claim_value"]: r["token"] for r in await rows(conn)}
            state = await integrity(conn)
        finally:
            await conn.close()
        assert left == {s: h for s, h in hashes.items() if s not in doomed}
        assert state.sound and state.owned == len(left), state
        # It worked on PostgreSQL alone, and said so.
        failed = 'jwtkeymap_litellm_cache_evictions_total{result="error"}'
        assert any(
            line.startswith(failed) and float(line.split()[-1]) > 0
            for line in op.metrics().splitlines()
        ), op.metrics()
        assert "could not evict" in op.full_output()
    finally:
        await asyncio.to_thread(op.stop)
