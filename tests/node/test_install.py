"""The README's install path on a real node: `helm install`, two operator replicas with peering,
a JWTKeyMapping reconciled into PostgreSQL and removed again through its finalizer."""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

from harness import ControlPlane, poll
from installtools import (
    declare_mapping,
    fullname,
    get,
    is_ready,
    mapping_rows,
    operator_pods,
    pod_logs,
    wait_synced,
)

from jwtkeymap.core.keys import hash_key

PAUSING = "Pausing operations in favour of"
RESUMING = "Resuming operations after the pause"


def test_operator_runs_two_ready_replicas(kube: ControlPlane, release: Any) -> None:
    deployment = get(kube, "deployment", fullname(release.name), "-n", release.namespace)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["status"].get("readyReplicas") == 2, deployment["status"]
    pods = operator_pods(kube, release.name, release.namespace)
    assert len(pods) == 2
    assert all(is_ready(p) for p in pods)
    for pod in pods:
        [container] = pod["spec"]["containers"]
        assert container["image"] == release.image
        assert container["imagePullPolicy"] == "Never"


def _live_peers(kube: ControlPlane, peering: str) -> dict[str, dict[str, Any]]:
    status = get(kube, "clusterkopfpeering", peering).get("status") or {}
    now = datetime.datetime.now(datetime.UTC)
    live = {}
    for identity, peer in status.items():
        seen = datetime.datetime.fromisoformat(peer["lastseen"])
        if seen + datetime.timedelta(seconds=peer["lifetime"]) > now:
            live[identity] = peer
    return live


def _paused(log: str) -> bool:
    """Whether kopf's last peering decision in this log was to pause."""
    decisions = re.findall(f"{PAUSING}|{RESUMING}", log)
    return bool(decisions) and decisions[-1] == PAUSING


def test_peering_keeps_exactly_one_replica_active(kube: ControlPlane, release: Any) -> None:
    pods = [p["metadata"]["name"] for p in operator_pods(kube, release.name, release.namespace)]
    peering = fullname(release.name)
    # Both replicas keep their record alive in the chart's ClusterKopfPeering.
    live = poll(
        lambda: (found := _live_peers(kube, peering)) and len(found) == 2 and found,
        timeout=60,
        message=f"two live peers in ClusterKopfPeering {peering}",
    )
    for pod in pods:
        assert any(pod in identity for identity in live), (pod, list(live))
    priorities = {identity: peer["priority"] for identity, peer in live.items()}
    assert len(set(priorities.values())) == 2, priorities
    leader_identity = max(priorities, key=lambda i: priorities[i])
    [leader] = [pod for pod in pods if pod in leader_identity]

    # The lower priority pauses in favour of the higher one; the higher one never does for good.
    def standby() -> list[str]:
        return [pod for pod in pods if _paused(pod_logs(kube, release.namespace, pod))]

    paused = poll(lambda: standby() or None, timeout=60, message="one replica to pause")
    assert paused == [pod for pod in pods if pod != leader], (paused, leader, priorities)


def test_mapping_is_ready_and_its_row_is_in_postgresql(
    kube: ControlPlane, release: Any, node_postgres: Any, workload_namespace: str
) -> None:
    ns = workload_namespace
    value, plaintext = declare_mapping(kube, ns, "alice", node_postgres.url)
    wait_synced(kube, ns, "alice")

    listed = kube.kubectl("get", "jkm", "-n", ns, "--no-headers", check=True).stdout.split()
    assert listed[:6] == ["alice", "True", "Synced", "email", value, "true"], listed
    [row] = mapping_rows(node_postgres.url, value)
    assert row["jwt_claim_name"] == "email"
    assert row["jwt_issuer"] == ""  # "*": global, stored as LiteLLM's ''
    assert row["token"] == hash_key(plaintext)
    assert row["is_active"] is True
    stored = get(kube, "jwtkeymapping", "alice", "-n", ns)
    assert "jwtkeymap.io/finalizer" in stored["metadata"]["finalizers"]

    # The finalizer removes the row before it lets the resource go.
    deleted = kube.kubectl(
        "delete", "jwtkeymapping", "alice", "-n", ns, "--wait", "--timeout=90s", timeout=100
    )
    assert deleted.returncode == 0, deleted.stderr
    assert mapping_rows(node_postgres.url, value) == []
    gone = kube.kubectl("get", "jwtkeymapping", "alice", "-n", ns)
    assert "NotFound" in gone.stderr, json.dumps(gone.stdout)
