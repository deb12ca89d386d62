"""The README's install path on a real node: `helm install`, two operator replicas with peering,
a JWTKeyMapping reconciled into PostgreSQL and removed again through its finalizer."""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import re
import ssl
import uuid
from typing import Any

from harness import ControlPlane, poll
from installtools import (
    allow_namespace,
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


def _active(log: str) -> bool:
    """Whether kopf's last peering decision in this log was to resume (replicas start paused)."""
    decisions = re.findall(f"{PAUSING}|{RESUMING}", log)
    return bool(decisions) and decisions[-1] == RESUMING


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

    # A replica starts paused and resumes when no live peer has a higher priority; the lower one
    # pauses again (or never resumes) while the higher one lives.
    def active() -> list[str]:
        return [pod for pod in pods if _active(pod_logs(kube, release.namespace, pod))]

    try:
        poll(lambda: active() == [leader], timeout=60, message=f"only {leader} to be active")
    except TimeoutError as err:
        raise AssertionError(f"{err}\n{_peering_story(kube, release, pods, peering)}") from err


def _peering_story(kube: ControlPlane, release: Any, pods: list[str], peering: str) -> str:
    """The peering object and what each replica logged about peering (for failure messages)."""
    lines = [json.dumps(get(kube, "clusterkopfpeering", peering).get("status"))]
    for pod in pods:
        log = pod_logs(kube, release.namespace, pod).splitlines()
        lines += [
            f"{pod}: {line}" for line in log if "peer" in line.lower() or "paus" in line.lower()
        ]
        lines += [f"{pod} (last): {line}" for line in log[-5:]]
    return "\n".join(lines)


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


def _admission(pod_ip: str, port: int, ca: bytes, namespace: str, value: str) -> dict[str, Any]:
    """What one replica's validating webhook answers, asked directly, for a new mapping."""
    mapping = {
        "apiVersion": "jwtkeymap.io/v1alpha1",
        "kind": "JWTKeyMapping",
        "metadata": {"name": "probe", "namespace": namespace, "uid": str(uuid.uuid4())},
        "spec": {
            "issuer": "*",
            "claim": {"name": "email", "value": value},
            "key": {"hash": "0" * 64},
        },
    }
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "jwtkeymap.io", "version": "v1alpha1", "kind": "JWTKeyMapping"},
            "resource": {
                "group": "jwtkeymap.io",
                "version": "v1alpha1",
                "resource": "jwtkeymappings",
            },
            "operation": "CREATE",
            "namespace": namespace,
            "name": "probe",
            "userInfo": {"username": "node-test"},
            "object": mapping,
            "oldObject": None,
            "dryRun": True,
        },
    }
    tls = ssl.create_default_context(cadata=ca.decode())
    tls.check_hostname = False  # the certificate names the Service; the CA is still checked
    conn = http.client.HTTPSConnection(pod_ip, port, context=tls, timeout=10)
    try:
        conn.request(
            "POST", "/validate-mapping", json.dumps(review), {"Content-Type": "application/json"}
        )
        return json.loads(conn.getresponse().read())["response"]
    finally:
        conn.close()


def test_every_replica_admits_what_a_policy_allows(
    kube: ControlPlane, release: Any, workload_namespace: str
) -> None:
    # Every replica serves the webhooks (the Service picks one per connection): each must know
    # the policies, the standby one included.
    ns = workload_namespace
    allow_namespace(kube, ns)
    name = fullname(release.name)
    secret = get(kube, "secret", f"{name}-webhook-tls", "-n", release.namespace)
    ca = base64.b64decode(secret["data"]["ca.crt"])
    port = release.values.get("webhook", {}).get("port", 9443)
    pods = {
        p["metadata"]["name"]: p["status"]["podIP"]
        for p in operator_pods(kube, release.name, release.namespace)
    }
    assert len(pods) == 2
    answers: dict[str, Any] = {}

    def all_admit() -> bool:
        for pod, ip in pods.items():
            answers[pod] = _admission(ip, port, ca, ns, f"probe@{ns}.example.com")
        return all(a["allowed"] for a in answers.values())

    try:
        poll(all_admit, timeout=30, message="every replica to admit the mapping")
    except TimeoutError as err:
        refused = {
            pod: a.get("status", {}).get("message")
            for pod, a in answers.items()
            if not a["allowed"]
        }
        raise AssertionError(f"{err}; refused by {refused}") from err
