"""The operator's Secret watch: only the Secrets mappings reference reach it, and they keep rotating.

The watch selects ``jwtkeymap.io/watched=true`` on the server; the operator labels each
Secret a mapping reads. Secrets are counted as they arrive
(``jwtkeymap_operator_secret_events_total``), so a Secret that was never sent shows as a
count that did not move while a later event on the same watch did arrive.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest
from harness import apoll
from operator_kit import Cluster, StartOperator, add_key, rows
from prometheus_client import REGISTRY

pytestmark = pytest.mark.controlplane

LABEL = "jwtkeymap.io/watched"
TYPES = ("listed", "ADDED", "MODIFIED", "DELETED")


def spec(value: str, secret: str) -> dict[str, Any]:
    ref = {"secretRef": {"name": secret, "key": "apiKey"}}
    return {"issuer": "*", "claim": {"name": "email", "value": value}, "key": ref}


def received() -> dict[str, float]:
    """Secret events received so far, by type (process-wide: one operator runs per test)."""
    name = "jwtkeymap_operator_secret_events_total"
    return {t: REGISTRY.get_sample_value(name, {"type": t}) or 0.0 for t in TYPES}


def since(before: dict[str, float]) -> dict[str, float]:
    now = received()
    return {t: now[t] - before[t] for t in TYPES if now[t] != before[t]}


async def secret_labels(cluster: Cluster, namespace: str, name: str) -> dict[str, str]:
    done = await cluster.plane.akubectl("get", "secret", name, "-n", namespace, "-o", "json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout)["metadata"].get("labels") or {})


async def wait_token(db: asyncpg.Connection, token: str) -> None:
    async def mapped() -> bool:
        return [r["token"] for r in await rows(db)] == [token]

    await apoll(mapped, timeout=15, message="the mapping row to hold the Secret's key")


async def test_existing_unlabelled_secret_is_labelled_and_keeps_rotating(
    cluster: Cluster,
    namespace: str,
    start_operator: StartOperator,
    database_url: str,
    db: asyncpg.Connection,
) -> None:
    # Both exist before the operator starts, as after an upgrade from a version that
    # watched every Secret: nobody labelled the Secret.
    old, new = await add_key(db, "sk-uma-v1"), await add_key(db, "sk-uma-v2")
    await cluster.apply_secret(namespace, "uma-key", {"apiKey": "sk-uma-v1"})
    await cluster.apply_mapping(namespace, "uma", spec("uma@example.com", "uma-key"))
    assert LABEL not in await secret_labels(cluster, namespace, "uma-key")

    await start_operator([namespace], database_url)
    await cluster.wait_reason(namespace, "uma", "Synced")
    await wait_token(db, old)
    assert (await secret_labels(cluster, namespace, "uma-key"))[LABEL] == "true"

    await cluster.apply_secret(namespace, "uma-key", {"apiKey": "sk-uma-v2"})
    await wait_token(db, new)

    # A label removed (by hand, or by a tool that owns the Secret's labels) takes the
    # Secret out of the watch: that DELETED event makes the mapping read it again, which
    # puts the label back.
    await cluster.plane.akubectl("label", "secret", "uma-key", f"{LABEL}-", "-n", namespace)

    async def relabelled() -> bool:
        return (await secret_labels(cluster, namespace, "uma-key")).get(LABEL) == "true"

    await apoll(relabelled, timeout=15, message="the operator to label the Secret again")
    await cluster.apply_secret(namespace, "uma-key", {"apiKey": "sk-uma-v1"})
    await wait_token(db, old)


async def test_unreferenced_secrets_never_reach_the_operator(
    cluster: Cluster,
    namespace: str,
    start_operator: StartOperator,
    database_url: str,
    db: asyncpg.Connection,
) -> None:
    old, new = await add_key(db, "sk-vic-v1"), await add_key(db, "sk-vic-v2")
    unrelated = [f"other-{i}" for i in range(10)]
    for name in unrelated:
        await cluster.apply_secret(namespace, name, {"apiKey": f"sk-{name}"})
    await cluster.apply_secret(namespace, "vic-key", {"apiKey": "sk-vic-v1"})
    before = received()

    await start_operator([namespace], database_url)
    await cluster.apply_mapping(namespace, "vic", spec("vic@example.com", "vic-key"))
    await cluster.wait_reason(namespace, "vic", "Synced")
    await wait_token(db, old)
    for name in unrelated:  # changed before the referenced one, on the same watch
        await cluster.apply_secret(namespace, name, {"apiKey": f"sk-{name}-v2"})
    await cluster.apply_secret(namespace, "vic-key", {"apiKey": "sk-vic-v2"})
    await wait_token(db, new)

    # Nothing was listed (no Secret was labelled at the start), then the referenced Secret
    # entered the watch when the operator labelled it, then it rotated: the ten others,
    # created and changed, never arrived.
    assert since(before) == {"ADDED": 1, "MODIFIED": 1}


async def test_deleting_the_mapping_leaves_the_label(
    cluster: Cluster,
    namespace: str,
    start_operator: StartOperator,
    database_url: str,
    db: asyncpg.Connection,
) -> None:
    token = await add_key(db, "sk-wes")
    await cluster.apply_secret(namespace, "wes-key", {"apiKey": "sk-wes"})
    await start_operator([namespace], database_url)
    await cluster.apply_mapping(namespace, "wes", spec("wes@example.com", "wes-key"))
    await cluster.wait_reason(namespace, "wes", "Synced")
    await wait_token(db, token)

    await cluster.plane.akubectl("delete", "jkm", "wes", "-n", namespace, check=True)
    assert await rows(db) == []
    # Documented: the label stays (another mapping, or one created later, may read the
    # Secret; a labelled Secret nobody references costs one watch event per change).
    assert (await secret_labels(cluster, namespace, "wes-key"))[LABEL] == "true"


async def test_a_secret_created_after_its_mapping_is_labelled_when_it_appears(
    cluster: Cluster,
    namespace: str,
    start_operator: StartOperator,
    database_url: str,
    db: asyncpg.Connection,
) -> None:
    token, rotated = await add_key(db, "sk-xan"), await add_key(db, "sk-xan-v2")
    await start_operator([namespace], database_url)
    await cluster.apply_mapping(namespace, "xan", spec("xan@example.com", "xan-key"))
    await cluster.wait_reason(namespace, "xan", "SecretNotFound")
    # Created without the label, as a GitOps tool or an external-secrets controller would.
    await cluster.apply_secret(namespace, "xan-key", {"apiKey": "sk-xan"})
    await cluster.wait_reason(namespace, "xan", "Synced", timeout=15)
    await wait_token(db, token)
    assert (await secret_labels(cluster, namespace, "xan-key"))[LABEL] == "true"
    await cluster.apply_secret(namespace, "xan-key", {"apiKey": "sk-xan-v2"})
    await wait_token(db, rotated)
