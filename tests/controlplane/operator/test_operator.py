"""The JWTKeyMapping operator against a real kube-apiserver + etcd and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import kopf
import pytest
from harness import REPO_ROOT, ControlPlane, apoll
from operator_kit import Cluster, RunningOperator, StartOperator, add_key, rows
from prometheus_client import REGISTRY

from jwtkeymap.core.db import schema
from jwtkeymap.core.keys import fingerprint, hash_key
from jwtkeymap.core.reconcile.writer import OPERATOR_ACTOR
from jwtkeymap.demo.postgres import ThrowawayPostgres
from jwtkeymap.operator.handlers.handled import LEGACY_ANNOTATION
from jwtkeymap.operator.resource import FINALIZER

pytestmark = pytest.mark.controlplane

CHANNEL = "jwtkeymap_invalidate"
ISSUER = "https://idp.example.com"


def spec(value: str, *, key: dict[str, Any], claim: str = "email", **extra: Any) -> dict[str, Any]:
    return {"issuer": "*", "claim": {"name": claim, "value": value}, "key": key, **extra}


def by_hash(token: str) -> dict[str, Any]:
    return {"hash": token}


async def test_cel_and_schema_reject_bad_specs(
    controlplane: ControlPlane, cluster: Cluster, namespace: str
) -> None:
    bad = {
        "apiVersion": "jwtkeymap.io/v1alpha1",
        "kind": "JWTKeyMapping",
        "metadata": {"name": "bad", "namespace": namespace},
        "spec": spec("a@b", key={"hash": "NOT-A-HASH", "secretRef": {"name": "s", "key": "k"}}),
    }
    done = await controlplane.akubectl("apply", "-f", "-", input=json.dumps(bad))
    assert done.returncode != 0
    assert "exactly one of key.secretRef or key.hash must be set" in done.stderr
    assert "key.hash must be the sha256 of a virtual key" in done.stderr

    bad["spec"] = spec("a@b", key={}, deletionPolicy="Forget")
    done = await controlplane.akubectl("apply", "-f", "-", input=json.dumps(bad))
    assert done.returncode != 0
    assert 'spec.deletionPolicy: Unsupported value: "Forget"' in done.stderr
    # CEL runs only on a schema-valid object.
    assert "some validation rules were not checked" in done.stderr
    assert await cluster.get(namespace, "bad") is None


async def test_create_becomes_ready_with_a_row(
    cluster: Cluster,
    namespace: str,
    start_operator: StartOperator,
    database_url: str,
    db: asyncpg.Connection,
) -> None:
    token = await add_key(db, "sk-alice")
    await start_operator([namespace], database_url)
    await cluster.apply_mapping(
        namespace, "alice", spec("alice@example.com", key=by_hash(token), issuer=ISSUER)
    )
    obj = await cluster.wait_reason(namespace, "alice", "Synced")
    [row] = await rows(db)
    assert row["jwt_issuer"] == ISSUER
    assert (row["jwt_claim_value"], row["token"]) == ("alice@example.com", token)
    assert (row["owner"], row["ref"]) == (f"k8s:{obj['metadata']['uid']}", f"{namespace}/alice")

    status = obj["status"]
    assert status["observedGeneration"] == 1
    assert status["mappingId"] == row["id"]
    assert status["keyFingerprint"] == fingerprint(token)
    assert "jwtkeymap.io/finalizer" in obj["metadata"]["finalizers"]
    [ready] = status["conditions"]
    assert (ready["status"], ready["observedGeneration"]) == ("True", 1)
    # The hash is a credential: the operator never repeats it (the spec holds it by choice).
    assert token not in json.dumps(obj["status"])

    table = await cluster.plane.akubectl("get", "jkm", "-n", namespace, "-o", "wide")
    assert table.stdout.split("\n")[0].split() == [
        "NAME", "READY", "REASON", "CLAIM", "VALUE", "ACTIVE", "ISSUER", "KEY", "AGE"
    ]  # fmt: skip
    assert table.stdout.split("\n")[1].split()[:8] == [
        "alice", "True", "Synced", "email", "alice@example.com", "true", ISSUER, fingerprint(token)
    ]  # fmt: skip

    events = await apoll(lambda: cluster.events(namespace, "alice"), message="an event for alice")
    assert [e["reason"] for e in events if e["reason"] == "Synced"] == ["Synced"], [
        (e["reason"], e["message"]) for e in events
    ]
    assert all(token not in e["message"] for e in events)


async def test_claim_update_moves_the_row_and_notifies_both_identities(
    cluster: Cluster,
    namespace: str,
    start_operator: StartOperator,
    database_url: str,
    db: asyncpg.Connection,
) -> None:
    token = await add_key(db, "sk-bob")
    await start_operator([namespace], database_url)
    await cluster.apply_mapping(namespace, "bob", spec("bob@old.example.com", key=by_hash(token)))
    first = await cluster.wait_reason(namespace, "bob", "Synced")
    [before] = await rows(db)

    heard: list[dict[str, str]] = []
    listener = await asyncpg.connect(database_url)
    await listener.add_listener(CHANNEL, lambda *args: heard.append(json.loads(args[3])))
    try:
        await cluster.apply_mapping(
            namespace, "bob", spec("bob@new.example.com", key=by_hash(token))
        )

        async def both_heard() -> bool:
            await listener.fetchval("SELECT 1")  # let queued notifications in
            return len(heard) >= 2

        await apoll(both_heard, message="NOTIFY for the old and the new identity")
    finally:
        await listener.close()
    assert heard == [
        {"issuer": "", "claim_name": "email", "claim_value": "bob@old.example.com"},
        {"issuer": "", "claim_name": "email", "claim_value": "bob@new.example.com"},
    ]
    [after] = await rows(db)
    assert after["id"] == before["id"]  # moved in place, never absent
    assert after["jwt_claim_value"] == "bob@new.example.com"

    async def generation_observed() -> dict[str, Any] | None:
        obj = await cluster.get(namespace, "bob")
        assert obj is not None
        return obj if obj["status"].get("observedGeneration") == 2 else None

    second = await apoll(generation_observed, message="generation 2 observed")
    # Still Ready: the transition time is kept.
    [c1] = first["status"]["conditions"]
    [c2] = second["status"]["conditions"]
    assert c2["lastTransitionTime"] == c1["lastTransitionTime"]
    assert c2["message"] == f"email=bob@new.example.com is mapped to key {fingerprint(token)}"


async def test_secret_rotation_is_followed(
    cluster: Cluster,
    namespace: str,
    start_operator: StartOperator,
    database_url: str,
    db: asyncpg.Connection,
) -> None:
    old, new = await add_key(db, "sk-carol-v1"), await add_key(db, "sk-carol-v2")
    await start_operator([namespace], database_url)
    await cluster.apply_secret(namespace, "carol-key", {"apiKey": "sk-carol-v1"})
    await cluster.apply_mapping(
        namespace,
        "carol",
        spec("carol@example.com", key={"secretRef": {"name": "carol-key", "key": "apiKey"}}),
    )
    await cluster.wait_reason(namespace, "carol", "Synced")
    assert [r["token"] for r in await rows(db)] == [old]

    await cluster.apply_secret(namespace, "carol-key", {"apiKey": "sk-carol-v2"})

    async def rotated() -> bool:
        return [r["token"] for r in await rows(db)] == [new]

    await apoll(rotated, timeout=15, message="the mapping to follow the rotated Secret")

    async def fingerprint_updated() -> bool:
        obj = await cluster.get(namespace, "carol")
        return obj is not None and obj["status"].get("keyFingerprint") == fingerprint(new)

    await apoll(fingerprint_updated, message="status.keyFingerprint to follow")

    # A Secret that loses the key: SecretKeyMissing, and the last good mapping stays.
    lost_key = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "carol-key", "namespace": namespace},
        "data": {"other": "eA=="},
    }
    # replace, not apply: apply would merge, keeping apiKey.
    replaced = await cluster.plane.akubectl("replace", "-f", "-", input=json.dumps(lost_key))
    assert replaced.returncode == 0, replaced.stderr
    await cluster.wait_reason(namespace, "carol", "SecretKeyMissing")
    assert [r["token"] for r in await rows(db)] == [new]


async def test_missing_secret_then_created(
    cluster: Cluster,
    namespace: str,
    start_operator: StartOperator,
    database_url: str,
    db: asyncpg.Connection,
) -> None:
    await add_key(db, "sk-dave")
    await start_operator([namespace], database_url)
    ref = {"secretRef": {"name": "dave-key", "key": "apiKey"}}
    await cluster.apply_mapping(namespace, "dave", spec("dave@example.com", key=ref))
    obj = await cluster.wait_reason(namespace, "dave", "SecretNotFound")
    assert obj["status"]["conditions"][0]["status"] == "False"
    assert await rows(db) == []
    await cluster.apply_secret(namespace, "dave-key", {"apiKey": "sk-dave"})
    await cluster.wait_reason(namespace, "dave", "Synced")
    assert [r["token"] for r in await rows(db)] == [hash_key("sk-dave")]


async def test_conflict_between_namespaces(
    controlplane: ControlPlane,
    cluster: Cluster,
    start_operator: StartOperator,
    database_url: str,
    db: asyncpg.Connection,
) -> None:
    first_ns, second_ns = (f"t-{uuid.uuid4().hex[:10]}" for _ in range(2))
    for ns in (first_ns, second_ns):
        await controlplane.akubectl("create", "namespace", ns, check=True)
    token, other = await add_key(db, "sk-erin"), await add_key(db, "sk-mallory")
    await start_operator([first_ns, second_ns], database_url)
    await cluster.apply_mapping(first_ns, "erin", spec("erin@example.com", key=by_hash(token)))
    await cluster.wait_reason(first_ns, "erin", "Synced")

    await cluster.apply_mapping(second_ns, "erin", spec("erin@example.com", key=by_hash(other)))
    obj = await cluster.wait_reason(second_ns, "erin", "Conflict")
    [ready] = obj["status"]["conditions"]
    assert ready["status"] == "False"
    # The holder is not named: it may be another tenant's resource.
    assert ready["message"] == "email=erin@example.com is already mapped by another JWTKeyMapping"
    [row] = await rows(db)
    assert (row["token"], row["ref"]) == (token, f"{first_ns}/erin")
    events = await apoll(lambda: cluster.events(second_ns, "erin"), message="a Conflict event")
    assert any(e["reason"] == "Conflict" and e["type"] == "Warning" for e in events)

    # Deleting the loser leaves the winner's row alone.
    third_ns = f"t-{uuid.uuid4().hex[:10]}"
    await controlplane.akubectl("create", "namespace", third_ns, check=True)
    await controlplane.akubectl("delete", "jkm", "erin", "-n", second_ns, check=True)
    assert [r["token"] for r in await rows(db)] == [token]

    # Deleting the winner lets a waiting loser take the identity at once (no drift timer:
    # it runs every 300 s here).
    await cluster.apply_mapping(first_ns, "erin-2", spec("erin@example.com", key=by_hash(other)))
    await cluster.wait_reason(first_ns, "erin-2", "Conflict")
    await controlplane.akubectl("delete", "jkm", "erin", "-n", first_ns, check=True)
    obj = await cluster.wait_reason(first_ns, "erin-2", "Synced", timeout=15)
    [row] = await rows(db)
    assert (row["token"], row["owner"]) == (other, f"k8s:{obj['metadata']['uid']}")


async def test_key_not_found_then_key_created(
    cluster: Cluster,
    namespace: str,
    start_operator: StartOperator,
    database_url: str,
    db: asyncpg.Connection,
) -> None:
    token = hash_key("sk-frank")
    await start_operator([namespace], database_url)
    await cluster.apply_mapping(namespace, "frank", spec("frank@example.com", key=by_hash(token)))
    obj = await cluster.wait_reason(namespace, "frank", "KeyNotFound")
    assert fingerprint(token) in obj["status"]["conditions"][0]["message"]
    assert await rows(db) == []
    await add_key(db, "sk-frank")
    await cluster.wait_reason(namespace, "frank", "Synced", timeout=20)
    assert [r["token"] for r in await rows(db)] == [token]


async def test_delete_with_database_down_holds_the_finalizer(
    controlplane: ControlPlane,
    cluster: Cluster,
    namespace: str,
    start_operator: StartOperator,
) -> None:
    pg = ThrowawayPostgres()
    try:
        pg.init()
        pg.start()
        conn = await asyncpg.connect(pg.url)
        await schema.migrate(conn, channel=CHANNEL)
        token = await add_key(conn, "sk-grace")
        await conn.close()
        await start_operator([namespace], pg.url, db_timeout_seconds=2)
        await cluster.apply_mapping(
            namespace, "grace", spec("grace@example.com", key=by_hash(token))
        )
        await cluster.wait_reason(namespace, "grace", "Synced")

        await asyncio.to_thread(pg.stop)
        deleted = await controlplane.akubectl(
            "delete", "jkm", "grace", "-n", namespace, "--wait=false"
        )
        assert deleted.returncode == 0, deleted.stderr
        obj = await cluster.wait_reason(namespace, "grace", "DatabaseUnavailable")
        assert obj["metadata"]["deletionTimestamp"]
        assert obj["metadata"]["finalizers"] == ["jwtkeymap.io/finalizer"]
        assert obj["status"]["conditions"][0]["status"] == "Unknown"

        await asyncio.to_thread(pg.start)

        async def gone() -> bool:
            return await cluster.get(namespace, "grace") is None

        await apoll(gone, timeout=30, message="the finalizer to be released")
        conn = await asyncpg.connect(pg.url)
        try:
            assert await rows(conn) == []
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(pg.destroy)


async def test_retain_keeps_the_row(
    controlplane: ControlPlane,
    cluster: Cluster,
    namespace: str,
    start_operator: StartOperator,
    database_url: str,
    db: asyncpg.Connection,
) -> None:
    token = await add_key(db, "sk-heidi")
    await start_operator([namespace], database_url)
    await cluster.apply_mapping(
        namespace, "heidi", spec("heidi@example.com", key=by_hash(token), deletionPolicy="Retain")
    )
    await cluster.wait_reason(namespace, "heidi", "Synced")
    await controlplane.akubectl("delete", "jkm", "heidi", "-n", namespace, check=True)
    [row] = await rows(db)
    assert (row["jwt_claim_value"], row["owner"]) == ("heidi@example.com", None)


async def test_adoption_needs_the_annotation(
    cluster: Cluster,
    namespace: str,
    start_operator: StartOperator,
    database_url: str,
    db: asyncpg.Connection,
) -> None:
    token = await add_key(db, "sk-ivan")
    await db.execute(
        'INSERT INTO "LiteLLM_JWTKeyMapping" (id, jwt_claim_name, jwt_claim_value, token, '
        "created_by) VALUES ('hand-made', 'email', 'ivan@example.com', $1, 'ui-admin')",
        token,
    )
    await start_operator([namespace], database_url)
    await cluster.apply_mapping(namespace, "ivan", spec("ivan@example.com", key=by_hash(token)))
    obj = await cluster.wait_reason(namespace, "ivan", "Conflict")
    assert "created by ui-admin" in obj["status"]["conditions"][0]["message"]
    await cluster.apply_mapping(
        namespace,
        "ivan",
        spec("ivan@example.com", key=by_hash(token)),
        annotations={"jwtkeymap.io/adopt": "true"},
    )
    obj = await cluster.wait_reason(namespace, "ivan", "Synced")
    [row] = await rows(db)
    assert (row["id"], row["owner"]) == ("hand-made", f"k8s:{obj['metadata']['uid']}")


async def test_drift_is_repaired_after_a_manual_delete(
    cluster: Cluster,
    namespace: str,
    start_operator: StartOperator,
    database_url: str,
    db: asyncpg.Connection,
) -> None:
    token = await add_key(db, "sk-judy")
    await start_operator([namespace], database_url, drift_interval_seconds=1)
    await cluster.apply_mapping(namespace, "judy", spec("judy@example.com", key=by_hash(token)))
    await cluster.wait_reason(namespace, "judy", "Synced")
    [before] = await rows(db)
    await db.execute('DELETE FROM "LiteLLM_JWTKeyMapping"')

    async def restored() -> list[dict[str, Any]]:
        return await rows(db)

    [after] = await apoll(restored, timeout=15, message="the row to be restored")
    assert (after["jwt_claim_value"], after["token"], after["owner"]) == (
        "judy@example.com", token, before["owner"]
    )  # fmt: skip

    async def drift_event() -> bool:
        return any(e["reason"] == "DriftRepaired" for e in await cluster.events(namespace, "judy"))

    await apoll(drift_event, message="a DriftRepaired event")
    obj = await cluster.get(namespace, "judy")
    assert obj is not None and obj["status"]["mappingId"] == after["id"]

    # A change behind the operator's back is reverted too.
    await db.execute('UPDATE "LiteLLM_JWTKeyMapping" SET is_active = false')

    async def reactivated() -> bool:
        return [r["is_active"] for r in await rows(db)] == [True]

    await apoll(reactivated, timeout=15, message="is_active to be restored")


async def resumed(operator: RunningOperator) -> None:
    """Wait until a freshly started operator's resume handler has reconciled."""

    async def reconciled() -> bool:
        reconciler = operator.runtime.reconciler
        return reconciler is not None and reconciler.reconciles > 0

    await apoll(reconciled, message="the resume handler to reconcile")


async def test_resume_writes_nothing(
    cluster: Cluster,
    namespace: str,
    start_operator: StartOperator,
    database_url: str,
    db: asyncpg.Connection,
) -> None:
    token = await add_key(db, "sk-kim")
    first = await start_operator([namespace], database_url)
    await cluster.apply_mapping(namespace, "kim", spec("kim@example.com", key=by_hash(token)))
    before = await cluster.wait_reason(namespace, "kim", "Synced")
    await first.stop()
    xmin = await db.fetchval('SELECT xmin::text FROM "LiteLLM_JWTKeyMapping"')

    writes = REGISTRY.get_sample_value("jwtkeymap_mapping_writes_total", {"actor": OPERATOR_ACTOR})
    second = await start_operator([namespace], database_url)

    await resumed(second)
    # The resume wrote no mapping row (the metric is process-wide: both operators count).
    assert (
        REGISTRY.get_sample_value("jwtkeymap_mapping_writes_total", {"actor": OPERATOR_ACTOR})
        == writes
    )
    assert await db.fetchval('SELECT xmin::text FROM "LiteLLM_JWTKeyMapping"') == xmin
    after = await cluster.get(namespace, "kim")
    assert after is not None
    assert after["status"] == before["status"]
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


async def test_changes_after_a_restart_are_handled(
    cluster: Cluster,
    namespace: str,
    start_operator: StartOperator,
    database_url: str,
    db: asyncpg.Connection,
) -> None:
    token = await add_key(db, "sk-leo")
    first = await start_operator([namespace], database_url)
    await cluster.apply_mapping(namespace, "leo", spec("leo@example.com", key=by_hash(token)))
    await cluster.wait_reason(namespace, "leo", "Synced")
    await first.stop()
    second = await start_operator([namespace], database_url)

    await resumed(second)
    await cluster.apply_mapping(namespace, "leo", spec("leo@new.example.com", key=by_hash(token)))

    async def moved() -> bool:
        return [r["jwt_claim_value"] for r in await rows(db)] == ["leo@new.example.com"]

    await apoll(moved, message="the change to be reconciled")


async def test_an_older_operators_record_is_taken_over_without_a_write(
    cluster: Cluster,
    namespace: str,
    start_operator: StartOperator,
    database_url: str,
    db: asyncpg.Connection,
) -> None:
    """Upgrade: kopf's old annotation record counts as handled, and goes at the next change."""
    token = await add_key(db, "sk-mo")
    first = await start_operator([namespace], database_url)
    await cluster.apply_mapping(namespace, "mo", spec("mo@example.com", key=by_hash(token)))
    synced = await cluster.wait_reason(namespace, "mo", "Synced")
    await first.stop()
    assert "lastHandled" in synced["status"]
    assert LEGACY_ANNOTATION not in (synced["metadata"].get("annotations") or {})
    # Make it what an older operator left: kopf's essence in an annotation, no status record.
    legacy = kopf.AnnotationsDiffBaseStorage().build(body=kopf.Body(synced))
    await cluster.patch(
        namespace, "mo",
        {"metadata": {"annotations": {LEGACY_ANNOTATION: json.dumps(legacy)}}},
    )  # fmt: skip
    await cluster.patch(namespace, "mo", {"status": {"lastHandled": None}}, subresource="status")
    before = await cluster.get(namespace, "mo")
    assert before is not None and "lastHandled" not in before["status"]
    xmin = await db.fetchval('SELECT xmin::text FROM "LiteLLM_JWTKeyMapping"')

    second = await start_operator([namespace], database_url)

    await resumed(second)
    after = await cluster.get(namespace, "mo")
    assert after is not None
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert await db.fetchval('SELECT xmin::text FROM "LiteLLM_JWTKeyMapping"') == xmin

    await cluster.apply_mapping(namespace, "mo", spec("mo@new.example.com", key=by_hash(token)))

    async def moved() -> dict[str, Any] | None:
        obj = await cluster.get(namespace, "mo")
        if [r["jwt_claim_value"] for r in await rows(db)] != ["mo@new.example.com"]:
            return None
        if obj is None or "lastHandled" not in obj["status"]:
            return None
        return obj

    moved_obj = await apoll(moved, message="the change handled and recorded in the status")
    assert LEGACY_ANNOTATION not in (moved_obj["metadata"].get("annotations") or {})
    assert token not in json.dumps(moved_obj["status"])


async def test_a_finalizer_put_on_by_the_api_server_is_not_patched_again(
    controlplane: ControlPlane,
    cluster: Cluster,
    namespace: str,
    start_operator: StartOperator,
    database_url: str,
    db: asyncpg.Connection,
) -> None:
    """The chart's MutatingAdmissionPolicy: the operator never writes the resource itself."""
    rendered = controlplane.helm(
        "template", "t", str(REPO_ROOT / "charts" / "jwtkeymap"),
        "--show-only", "templates/finalizerpolicy.yaml", check=True,
    )  # fmt: skip
    applied = await controlplane.akubectl("apply", "-f", "-", input=rendered.stdout)
    assert applied.returncode == 0, applied.stderr
    try:
        probe = json.dumps(
            {"apiVersion": "jwtkeymap.io/v1alpha1", "kind": "JWTKeyMapping",
             "metadata": {"name": "probe", "namespace": namespace},
             "spec": spec("probe@example.com", key=by_hash("0" * 64))}
        )  # fmt: skip

        async def policy_loaded() -> bool:  # the API server loads policies a moment later
            done = await controlplane.akubectl(
                "create", "--dry-run=server", "-o", "json", "-f", "-", input=probe
            )
            assert done.returncode == 0, done.stderr
            return FINALIZER in (json.loads(done.stdout)["metadata"].get("finalizers") or [])

        await apoll(policy_loaded, message="the finalizer policy to be loaded")
        token = await add_key(db, "sk-nia")
        # Created while no operator runs: the finalizer is there already.
        await cluster.apply_mapping(namespace, "nia", spec("nia@example.com", key=by_hash(token)))
        created = await cluster.get(namespace, "nia")
        assert created is not None and created["metadata"]["finalizers"] == [FINALIZER]

        await start_operator([namespace], database_url)
        await cluster.wait_reason(namespace, "nia", "Synced")
        done = await controlplane.akubectl(
            "get", "jkm", "nia", "-n", namespace, "-o", "json", "--show-managed-fields"
        )
        assert done.returncode == 0, done.stderr
        synced = json.loads(done.stdout)
        writers = {
            (m["manager"], m.get("subresource", "")) for m in synced["metadata"]["managedFields"]
        }
        # The operator wrote the status only; the resource itself is as kubectl created it.
        assert {manager for manager, sub in writers if not sub} == {"kubectl-client-side-apply"}
        assert synced["metadata"]["finalizers"] == [FINALIZER]
        assert [r["jwt_claim_value"] for r in await rows(db)] == ["nia@example.com"]

        # Deletion still goes through the finalizer: the row first, then the resource.
        deleted = await controlplane.akubectl("delete", "jkm", "nia", "-n", namespace)
        assert deleted.returncode == 0, deleted.stderr
        assert await cluster.get(namespace, "nia") is None
        assert await rows(db) == []
    finally:
        removed = await controlplane.akubectl("delete", "--ignore-not-found", "-f", "-",
                                              input=rendered.stdout)  # fmt: skip
        assert removed.returncode == 0, removed.stderr


async def test_examples_are_valid_for_the_crd(controlplane: ControlPlane, cluster: Cluster) -> None:
    examples = Path(__file__).resolve().parents[3] / "examples" / "mappings"
    for ns in ("team-alpha", "team-beta"):
        await cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    done = await controlplane.akubectl("apply", "--dry-run=server", "-f", str(examples))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("jwtkeymapping.jwtkeymap.io/") == 4
