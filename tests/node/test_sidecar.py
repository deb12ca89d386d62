"""The resolver sidecar in real pods: injected by the webhook (called through its Service),
started by the kubelet as a native sidecar, gating the pod's readiness, and the only way to
the upstream, which sees a request only when the policy allows it, and never a client's
identity headers.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from cluster import NODE_IP
from harness import ControlPlane, poll
from nodetools import (
    ECHO_PORT,
    INJECT_LABEL,
    RESOLVER,
    Reply,
    apply,
    attempt,
    cluster_ip,
    condition,
    container_status,
    echo_workload,
    endpoint_ready,
    events,
    get,
    logs,
    mapped_client,
    only_pod,
    request,
    rollout,
    routed,
)

from jwtkeymap.demo.signing import SigningKey

SPOOFED = {
    "x-jwtkeymap-key-hash": "f" * 64,
    "x-jwtkeymap-team-id": "spoofed-team",
    "x-jwtkeymap-user-id": "spoofed-user",
    "x-jwtkeymap-decision": "admin",
    # Many servers fold "_" into "-": the resolver drops this spelling too.
    "x_jwtkeymap_org_id": "spoofed-org",
}


def deploy_echo(
    kube: ControlPlane,
    namespace: str,
    image: str,
    *,
    labelled: bool = True,
    name: str | None = None,
    annotations: dict[str, str] | None = None,
) -> str:
    """Deploy the echo upstream and return its name."""
    name = name or ("echo" if labelled else "plain-echo")
    apply(kube, echo_workload(namespace, name, image, labelled=labelled, annotations=annotations))
    return name


def test_labelled_deployment_gets_the_resolver_and_only_allowed_requests_pass(
    kube: ControlPlane,
    release: Any,
    workload_namespace: str,
    node_postgres: Any,
    idp: SigningKey,
    timings: dict[str, str],
) -> None:
    ns = workload_namespace
    alice = f"alice-{ns}"
    with mapped_client(node_postgres.url, idp.issuer, alice, team_id="team-node") as key:
        started = time.monotonic()
        name = deploy_echo(kube, ns, release.image)
        rollout(kube, ns, name)
        start_to_ready = time.monotonic() - started
        pod = only_pod(kube, ns, f"app={name}")
        timings["sidecar"] = (
            f"pod start-to-ready with the sidecar {start_to_ready:.1f} s"
            " (Deployment applied -> rollout complete: webhook, sandbox, resolver ready, echo)"
        )

        # Injected by the webhook, which the apiserver called through its Service.
        hook = get(kube, "mutatingwebhookconfiguration", f"{release.name}-injector")
        client = hook["webhooks"][0]["clientConfig"]
        assert "url" not in client and client["service"]["namespace"] == release.namespace
        assert pod["metadata"]["annotations"].get("jwtkeymap.io/status") == "injected"
        init = pod["spec"].get("initContainers") or []
        assert [c["name"] for c in init] == [RESOLVER]
        sidecar = init[0]
        assert sidecar["restartPolicy"] == "Always"  # a native sidecar
        assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert sidecar["image"] == release.image
        assert [c["name"] for c in pod["spec"]["containers"]] == ["echo"]
        replicaset = pod["metadata"]["ownerReferences"][0]["name"]
        poll(
            lambda: any(e["reason"] == "Injected" for e in events(kube, ns, replicaset)),
            message="the Injected Event on the ReplicaSet",
        )

        # The kubelet ran it as a sidecar: started before the app, both ready, no restart.
        resolver = container_status(pod, RESOLVER)
        echo = container_status(pod, "echo")
        assert resolver["started"] and resolver["ready"], resolver
        assert resolver["restartCount"] == 0, logs(kube, ns, pod["metadata"]["name"], RESOLVER)
        assert echo["ready"], echo
        resolver_at = resolver["state"]["running"]["startedAt"]
        assert resolver_at <= echo["state"]["running"]["startedAt"]
        assert condition(pod, "Ready") == "True"

        service = routed(kube, ns, name)
        pod_ip = pod["status"]["podIP"]
        assert endpoint_ready(kube, ns, name, pod_ip) is True

        def through_service(path: str, **kwargs: Any) -> Reply:
            return request(service, 80, path, **kwargs)

        # A mapped JWT: 200, and the echo sees the identity the resolver resolved.
        token = idp.sign({"sub": alice})
        allowed = through_service("/v1/models", token=token)
        assert allowed.status == 200, allowed
        seen = dict(allowed.echoed())
        assert allowed.json()["path"] == "/v1/models"
        assert seen["x-jwtkeymap-decision"] == "mapped"
        assert seen["x-jwtkeymap-key-hash"] == key.token_hash
        assert seen["x-jwtkeymap-team-id"] == key.team_id

        # Spoofed identity headers never arrive: only the resolver's own, once each.
        spoofed = through_service("/spoof", token=token, headers=SPOOFED)
        assert spoofed.status == 200, spoofed
        echoed = spoofed.echoed()
        assert not [h for h in echoed if "spoofed" in h[1] or h[1] == "f" * 64], echoed
        names = [h[0] for h in echoed]
        for header in ("x-jwtkeymap-decision", "x-jwtkeymap-key-hash", "x-jwtkeymap-team-id"):
            assert names.count(header) == 1, echoed
        assert dict(echoed)["x-jwtkeymap-decision"] == "mapped"
        assert dict(echoed)["x-jwtkeymap-key-hash"] == key.token_hash
        assert not [n for n in names if n.replace("_", "-").endswith(("user-id", "org-id"))]

        # Refused requests never reach the echo.
        marker = uuid.uuid4().hex
        unmapped = through_service(f"/unmapped-{marker}", token=idp.sign({"sub": f"mallory-{ns}"}))
        assert unmapped.status == 403, unmapped
        assert unmapped.json()["error"]["reason"] == "unregistered_client"
        anonymous = through_service(f"/anonymous-{marker}")
        assert anonymous.status == 401, anonymous
        assert anonymous.json()["error"]["reason"] == "invalid_token"
        forged = through_service(
            f"/forged-{marker}", token=SigningKey(idp.issuer).sign({"sub": alice})
        )
        assert forged.status == 401, forged
        spoof_only = through_service(f"/spoof-only-{marker}", headers=SPOOFED)
        assert spoof_only.status == 401, spoof_only
        paths = through_service("/__seen", token=token).json()["paths"]
        assert "/v1/models" in paths and "/spoof" in paths
        assert not [p for p in paths if marker in p], paths

        # The resolver is the only way in: the echo listens on the pod's loopback.
        bypass = attempt(pod_ip, ECHO_PORT, "/bypass", timeout=3)
        assert isinstance(bypass, str), f"the upstream answered from outside the pod: {bypass}"
        assert attempt(pod_ip, 8181, "/healthz", timeout=3) != "ConnectionRefusedError"
        # The resolver's figures are on its metrics port; on the way in, /metrics is a path
        # of the upstream's like any other: checked first.
        metrics = attempt(pod_ip, 8182, "/metrics", timeout=3)
        assert isinstance(metrics, Reply) and metrics.status == 200, metrics
        assert b'jwtkeymap_decisions_total{decision="mapped",reason=""}' in metrics.body
        public = attempt(pod_ip, 8181, "/metrics", timeout=3)
        assert isinstance(public, Reply) and public.status == 401, public


def test_a_resolver_that_is_not_ready_keeps_its_pod_out_of_the_service(
    kube: ControlPlane, release: Any, workload_namespace: str
) -> None:
    ns = workload_namespace
    # The sidecar's database (the workload namespace's Secret) refuses connections.
    broken = f"postgresql://jwtkeymap:nothing@{NODE_IP}:1/litellm"
    manifest = kube.kubectl(
        "create", "secret", "generic", "jwtkeymap-database", "-n", ns, f"--from-literal=url={broken}",
        "--dry-run=client", "-o", "json", check=True,
    )  # fmt: skip
    kube.kubectl("apply", "-f", "-", input=manifest.stdout, check=True)
    name = deploy_echo(kube, ns, release.image)

    def started() -> dict[str, Any] | None:
        pods = get(kube, "pods", "-n", ns, "-l", f"app={name}")["items"]
        if len(pods) != 1:
            return None
        statuses = (pods[0].get("status") or {}).get("containerStatuses") or []
        # The app container runs only once the sidecar has started (its /healthz answers).
        return pods[0] if statuses and statuses[0].get("started") else None

    pod = poll(started, timeout=120, message="the echo container to start")
    pod_ip = pod["status"]["podIP"]
    resolver = container_status(pod, RESOLVER)
    assert resolver["started"], resolver
    # The resolver itself says it is not ready (no database) …
    readyz = poll(
        lambda: isinstance(r := attempt(pod_ip, 8181, "/readyz"), Reply) and r,
        message="the resolver's /readyz to answer",
    )
    assert readyz.status == 503 and readyz.json() == {"ready": False}, readyz
    # … and the kubelet has probed it: the readiness probe's failures are recorded.
    poll(
        lambda: any(
            e["reason"] == "Unhealthy" and "Readiness probe failed" in e.get("message", "")
            for e in events(kube, ns, pod["metadata"]["name"])
        ),
        timeout=60,
        message="a failed readiness probe",
    )
    # The app is fine (its own probe passes once it listens); the gate is the sidecar.
    pod = poll(
        lambda: (
            (now := get(kube, "pod", pod["metadata"]["name"], "-n", ns))
            and container_status(now, "echo")["ready"]
            and now
        ),
        timeout=60,
        message="the echo container Ready",
    )
    assert not container_status(pod, RESOLVER)["ready"]
    assert condition(pod, "Ready") == "False"
    assert endpoint_ready(kube, ns, name, pod_ip) is False
    refused = attempt(cluster_ip(kube, ns, name), 80, "/", timeout=3)
    assert isinstance(refused, str), f"a not-ready pod was routed to: {refused}"


def test_an_unlabelled_deployment_is_untouched(
    kube: ControlPlane, release: Any, workload_namespace: str
) -> None:
    ns = workload_namespace
    name = deploy_echo(kube, ns, release.image, labelled=False)
    rollout(kube, ns, name)
    pod = only_pod(kube, ns, f"app={name}")
    assert INJECT_LABEL not in pod["metadata"]["labels"]
    assert "jwtkeymap.io/status" not in (pod["metadata"].get("annotations") or {})
    assert not pod["spec"].get("initContainers")
    assert [c["name"] for c in pod["spec"]["containers"]] == ["echo"]
    assert not [v for v in pod["spec"].get("volumes") or [] if v["name"].startswith("jwtkeymap")]
    # Served directly, without any check: the headers are the client's own.
    reply = request(routed(kube, ns, name), 80, "/plain", headers={"x-probe": "direct"})
    assert reply.status == 200
    assert ("x-probe", "direct") in reply.echoed()
    assert not [h for h in reply.echoed() if h[0].startswith("x-jwtkeymap-")]


def test_a_sidecar_with_nginx_as_its_engine_serves_the_same_contract(
    kube: ControlPlane, release: Any, workload_namespace: str, node_postgres: Any, idp: SigningKey
) -> None:
    # jwtkeymap.io/proxy-engine: nginx: the image's nginx, run by the resolver as uid 10001 on
    # a read-only root (its files in the sidecar's /tmp), carries the bytes.
    ns = workload_namespace
    alice = f"alice-nginx-{ns}"
    with mapped_client(node_postgres.url, idp.issuer, alice, team_id="team-nginx") as key:
        name = deploy_echo(
            kube, ns, release.image, name="echo-nginx",
            annotations={"jwtkeymap.io/proxy-engine": "nginx"},
        )  # fmt: skip
        rollout(kube, ns, name)
        pod = only_pod(kube, ns, f"app={name}")
        pod_name = pod["metadata"]["name"]
        resolver = container_status(pod, RESOLVER)
        assert resolver["ready"] and resolver["restartCount"] == 0, logs(
            kube, ns, pod_name, RESOLVER
        )
        assert "nginx relaying" in logs(kube, ns, pod_name, RESOLVER)
        service = routed(kube, ns, name)

        token = idp.sign({"sub": alice})
        allowed = request(service, 80, "/v1/models", token=token, headers=SPOOFED)
        assert allowed.status == 200, allowed
        seen = allowed.echoed()
        assert not [h for h in seen if "spoofed" in h[1] or h[1] == "f" * 64], seen
        assert dict(seen)["x-jwtkeymap-decision"] == "mapped"
        assert dict(seen)["x-jwtkeymap-key-hash"] == key.token_hash
        assert [h[0] for h in seen].count("x-jwtkeymap-key-hash") == 1

        marker = uuid.uuid4().hex
        anonymous = request(service, 80, f"/anonymous-{marker}")
        assert anonymous.status == 401, anonymous
        assert anonymous.json()["error"]["reason"] == "invalid_token"
        unmapped = request(service, 80, f"/unmapped-{marker}", token=idp.sign({"sub": "nobody"}))
        assert unmapped.status == 403, unmapped
        assert unmapped.json()["error"]["reason"] == "unregistered_client"
        check = request(service, 80, "/check", token=token)
        assert check.status == 404, check
        paths = request(service, 80, "/__seen", token=token).json()["paths"]
        assert "/v1/models" in paths and not [p for p in paths if marker in p or "check" in p]
