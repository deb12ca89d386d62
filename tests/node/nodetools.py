"""Helpers for the tests on the real node: workloads, HTTP through Services, pods, rows.

Everything here talks to the cluster with kubectl (as a user would), to pods and Services
over the node's network (the host reaches pod and ClusterIP addresses directly), and to
PostgreSQL with the package's own store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.client
import json
from collections.abc import Iterator
from typing import Any

import asyncpg
from harness import ControlPlane, poll

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.core.db.store import Store
from jwtkeymap.core.keys import hash_key

INJECT_LABEL = "jwtkeymap.io/inject"
RESOLVER = "jwtkeymap-resolver"
ECHO_PORT = 8080

# The echo upstream: every request's path and headers back as JSON (all header pairs, in
# order, so a duplicated header shows), and the paths it has seen at /__seen. It listens on
# loopback only in an injected pod: the resolver is the only way in.
ECHO_SERVER = """
import os
from aiohttp import web
seen = []
async def echo(request):
    if request.path == "/__seen":
        return web.json_response({"paths": seen})
    seen.append(request.path)
    return web.json_response(
        {"path": request.path, "headers": [[k, v] for k, v in request.headers.items()]}
    )
app = web.Application()
app.router.add_route("*", "/{tail:.*}", echo)
web.run_app(app, host=os.environ["ECHO_HOST"], port=int(os.environ["ECHO_PORT"]), print=None)
"""


# Connects to the echo's port from inside its container (loopback when behind the sidecar).
ECHO_PROBE = (
    "import os, socket; socket.create_connection("
    "(os.environ['ECHO_HOST'].replace('0.0.0.0', '127.0.0.1'), int(os.environ['ECHO_PORT'])), 1)"
)


def echo_workload(
    namespace: str,
    name: str,
    image: str,
    *,
    labelled: bool = True,
    annotations: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """A Deployment of the echo upstream (its pods annotated with ``annotations``) and its
    Service (to the resolver when labelled)."""
    labels = {"app": name}
    pod_labels = {**labels, INJECT_LABEL: "true"} if labelled else dict(labels)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": dict(annotations or {})},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [
                        {
                            "name": "echo",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "command": ["python", "-c", ECHO_SERVER],
                            "env": [
                                {
                                    "name": "ECHO_HOST",
                                    "value": "127.0.0.1" if labelled else "0.0.0.0",
                                },
                                {"name": "ECHO_PORT", "value": str(ECHO_PORT)},
                            ],
                            "ports": [{"containerPort": ECHO_PORT, "protocol": "TCP"}],
                            # Ready once it listens, as a real app declares: without it the
                            # pod is Ready (the resolver is) before the echo has bound its
                            # port, and the first request gets the resolver's 502. It listens
                            # on loopback behind the sidecar, so the probe runs inside.
                            "readinessProbe": {
                                "exec": {"command": ["python", "-c", ECHO_PROBE]},
                                "periodSeconds": 2,
                                "timeoutSeconds": 10,  # a python start on a busy machine
                            },
                        }
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": labels,
            "ports": [{"port": 80, "targetPort": "jwtkeymap" if labelled else ECHO_PORT}],
        },
    }
    return [deployment, service]


# --- kubectl -------------------------------------------------------------------------------


def apply(kube: ControlPlane, objects: list[dict[str, Any]]) -> None:
    """``kubectl apply`` a list of objects at once."""
    done = kube.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    )
    assert done.returncode == 0, done.stderr


def get(kube: ControlPlane, *args: str) -> Any:
    """``kubectl get ... -o json``, parsed."""
    done = kube.kubectl("get", *args, "-o", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def try_get(kube: ControlPlane, *args: str) -> Any:
    """Like :func:`get`, or None when it is not found."""
    done = kube.kubectl("get", *args, "-o", "json")
    if done.returncode != 0:
        assert "NotFound" in done.stderr, done.stderr
        return None
    return json.loads(done.stdout)


def rollout(kube: ControlPlane, namespace: str, name: str, timeout: int = 180) -> None:
    """Wait until a Deployment's rollout is complete (every replica Ready)."""
    done = kube.kubectl(
        "rollout", "status", f"deployment/{name}", "-n", namespace, f"--timeout={timeout}s",
        timeout=timeout + 15,
    )  # fmt: skip
    if done.returncode != 0:
        pods = kube.kubectl("describe", "pods", "-n", namespace, "-l", f"app={name}")
        raise AssertionError(f"{namespace}/{name} not rolled out: {done.stderr}\n{pods.stdout}")


def pods(kube: ControlPlane, namespace: str, selector: str) -> list[dict[str, Any]]:
    """The pods matching a label selector (terminating ones left out)."""
    items = get(kube, "pods", "-n", namespace, "-l", selector)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def only_pod(kube: ControlPlane, namespace: str, selector: str) -> dict[str, Any]:
    """The one live pod matching the selector (waits until there is exactly one)."""
    found = poll(
        lambda: (p := pods(kube, namespace, selector)) and len(p) == 1 and p,
        timeout=120,
        message=f"one pod {selector} in {namespace}",
    )
    return found[0]


def pod(kube: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    """One pod by name."""
    return dict(get(kube, "pod", name, "-n", namespace))


def condition(obj: dict[str, Any], kind: str) -> str | None:
    """The status of a condition (``Ready`` …) of a pod or a custom resource."""
    for found in (obj.get("status") or {}).get("conditions") or []:
        if found["type"] == kind:
            return str(found["status"])
    return None


def container_status(pod_obj: dict[str, Any], name: str) -> dict[str, Any]:
    """A container's status, init (sidecar) containers included."""
    status = pod_obj.get("status") or {}
    for entry in (status.get("initContainerStatuses") or []) + (
        status.get("containerStatuses") or []
    ):
        if entry["name"] == name:
            return dict(entry)
    raise AssertionError(f"no status for container {name} in {pod_obj['metadata']['name']}")


def endpoint_ready(kube: ControlPlane, namespace: str, service: str, ip: str) -> bool | None:
    """Whether ``ip`` is a ready endpoint of the Service (None: not listed at all)."""
    slices = get(
        kube, "endpointslices", "-n", namespace, "-l", f"kubernetes.io/service-name={service}"
    )
    for item in slices["items"]:
        for endpoint in item.get("endpoints") or []:
            if ip in endpoint.get("addresses", []):
                return bool((endpoint.get("conditions") or {}).get("ready"))
    return None


def cluster_ip(kube: ControlPlane, namespace: str, service: str) -> str:
    """The Service's ClusterIP."""
    return str(get(kube, "service", service, "-n", namespace)["spec"]["clusterIP"])


def events(kube: ControlPlane, namespace: str, name: str) -> list[dict[str, Any]]:
    """Events about an object by name."""
    found = get(kube, "events", "-n", namespace, f"--field-selector=involvedObject.name={name}")
    return list(found["items"])


def logs(kube: ControlPlane, namespace: str, pod_name: str, container: str) -> str:
    """A container's log (and the previous instance's, when it restarted)."""
    out = kube.kubectl("logs", pod_name, "-n", namespace, "-c", container, "--tail=80")
    old = kube.kubectl(
        "logs", pod_name, "-n", namespace, "-c", container, "--previous", "--tail=40"
    )
    return f"{old.stdout}\n--- current ---\n{out.stdout}{out.stderr}"


# --- HTTP ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Reply:
    """An HTTP answer."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)

    def echoed(self) -> list[tuple[str, str]]:
        """The request headers the echo upstream saw, lower-cased names."""
        return [(k.lower(), v) for k, v in self.json()["headers"]]


def request(
    url_host: str,
    port: int,
    path: str = "/",
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5,
) -> Reply:
    """One request on a fresh connection (no proxy, no keep-alive); raises OSError if refused."""
    conn = http.client.HTTPConnection(url_host, port, timeout=timeout)
    try:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        sent["Connection"] = "close"
        conn.request("GET", path, headers=sent)
        answer = conn.getresponse()
        body = answer.read()
        return Reply(answer.status, {k.lower(): v for k, v in answer.getheaders()}, body)
    finally:
        conn.close()


def attempt(url_host: str, port: int, path: str = "/", **kwargs: Any) -> Reply | str:
    """Like :func:`request`, or the error's name when the connection fails."""
    try:
        return request(url_host, port, path, **kwargs)
    except (TimeoutError, OSError, http.client.HTTPException) as err:
        return type(err).__name__


# --- the database --------------------------------------------------------------------------


def run(coro: Any) -> Any:
    """Run a coroutine from a synchronous test."""
    return asyncio.run(coro)


async def _with_store(url: str, work: Any) -> Any:
    store = await Store.open(url)
    try:
        return await work(store)
    finally:
        await store.close()


@dataclasses.dataclass(frozen=True)
class Key:
    """A virtual key: the plaintext (for Secrets) and its hash (what the rows hold)."""

    plaintext: str
    token_hash: str
    team_id: str


def create_key(url: str, team_id: str) -> Key:
    """A new virtual key row, as ``jwtkeymap key create`` makes it."""

    async def work(store: Store) -> Key:
        plaintext, key = await store.create_key(NewKey(team_id=team_id), actor="node-tests")
        assert key.token_hash == hash_key(plaintext)
        return Key(plaintext, key.token_hash, team_id)

    return run(_with_store(url, work))  # type: ignore[no-any-return]


def add_mapping(url: str, issuer: str, sub: str, key: Key) -> str:
    """A mapping row ``sub`` -> key, as ``jwtkeymap map add`` makes it; its id."""

    async def work(store: Store) -> str:
        identity = MappingIdentity(issuer, "sub", sub)
        row = await store.add_mapping(identity, key.token_hash, actor="node-tests")
        return row.id

    return run(_with_store(url, work))  # type: ignore[no-any-return]


def remove_mapping(url: str, mapping_id: str) -> None:
    """Delete a mapping row made by :func:`add_mapping`."""
    run(_with_store(url, lambda store: store.remove_mapping(mapping_id)))


@contextlib.contextmanager
def mapped_client(url: str, issuer: str, sub: str, *, team_id: str) -> Iterator[Key]:
    """A new key of ``team_id`` and ``sub`` mapped to it, for the block."""
    key = create_key(url, team_id=team_id)
    mapping_id = add_mapping(url, issuer, sub, key)
    try:
        yield key
    finally:
        remove_mapping(url, mapping_id)


def owned_rows(url: str) -> dict[str, dict[str, Any]]:
    """Every mapping row with an owner, by owner (``k8s:<uid>`` …)."""

    async def fetch() -> dict[str, dict[str, Any]]:
        conn = await asyncpg.connect(url)
        try:
            found = await conn.fetch(
                "SELECT m.id, m.jwt_claim_value, m.token, o.owner FROM "
                '"LiteLLM_JWTKeyMapping" m JOIN jwtkeymap_mapping_owner o ON o.mapping_id = m.id'
            )
        finally:
            await conn.close()
        return {r["owner"]: dict(r) for r in found}

    return run(fetch())  # type: ignore[no-any-return]


def rows_by_value(url: str, values: set[str]) -> dict[str, dict[str, Any]]:
    """The mapping rows (with their owner, if any) for these claim values."""

    async def fetch() -> dict[str, dict[str, Any]]:
        conn = await asyncpg.connect(url)
        try:
            found = await conn.fetch(
                "SELECT m.id, m.jwt_claim_value, m.token, o.owner FROM "
                '"LiteLLM_JWTKeyMapping" m LEFT JOIN jwtkeymap_mapping_owner o '
                "ON o.mapping_id = m.id WHERE m.jwt_claim_value = ANY($1::text[])",
                list(values),
            )
        finally:
            await conn.close()
        return {r["jwt_claim_value"]: dict(r) for r in found}

    return run(fetch())  # type: ignore[no-any-return]


# --- tenancy -------------------------------------------------------------------------------


@contextlib.contextmanager
def policy_for(kube: ControlPlane, namespace: str, issuer: str) -> Iterator[str]:
    """A JWTKeyMappingPolicy letting ``namespace`` map any ``sub`` of ``issuer`` (removed after)."""
    name = f"node-{namespace}"
    apply(
        kube,
        [
            {
                "apiVersion": "jwtkeymap.io/v1alpha1",
                "kind": "JWTKeyMappingPolicy",
                "metadata": {"name": name},
                "spec": {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": namespace}
                    },
                    "issuers": [issuer, "*"],
                    "claims": [{"name": "sub", "values": ["*"]}],
                },
            }
        ],
    )
    try:
        yield name
    finally:
        kube.kubectl("delete", "jkmp", name, "--ignore-not-found")


def mapping(
    namespace: str, name: str, issuer: str, sub: str, key: dict[str, Any]
) -> dict[str, Any]:
    """A JWTKeyMapping for ``sub``."""
    return {
        "apiVersion": "jwtkeymap.io/v1alpha1",
        "kind": "JWTKeyMapping",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"issuer": issuer, "claim": {"name": "sub", "value": sub}, "key": key},
    }


def ready_reason(obj: dict[str, Any]) -> str | None:
    """The reason of a JWTKeyMapping's Ready condition."""
    for found in (obj.get("status") or {}).get("conditions") or []:
        if found["type"] == "Ready":
            return str(found.get("reason"))
    return None


def create_keys(url: str, team_id: str, count: int) -> list[Key]:
    """``count`` new virtual keys, through one pool."""

    async def work(store: Store) -> list[Key]:
        made = []
        for _ in range(count):
            plaintext, key = await store.create_key(NewKey(team_id=team_id), actor="node-tests")
            made.append(Key(plaintext, key.token_hash, team_id))
        return made

    return run(_with_store(url, work))  # type: ignore[no-any-return]


# --- the operator --------------------------------------------------------------------------

OPERATOR_SELECTOR = "app.kubernetes.io/name=jwtkeymap,app.kubernetes.io/component=operator"


def operator_pods(kube: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    """The operator's live pods."""
    return pods(kube, namespace, OPERATOR_SELECTOR)


def leader(kube: ControlPlane, namespace: str, peering: str) -> str | None:
    """The operator pod kopf's peering makes active (the highest priority), if it runs."""
    found = try_get(kube, "clusterkopfpeering", peering)
    peers = (found or {}).get("status") or {}
    running = {
        p["metadata"]["name"]
        for p in operator_pods(kube, namespace)
        if condition(p, "Ready") == "True"
    }
    ranked = sorted(peers.items(), key=lambda item: -int(item[1].get("priority", 0)))
    for peer_id, _ in ranked:
        for name in running:
            if name in peer_id:
                return name
        return None  # the highest is not a running pod (yet): no answer
    return None


def routed(kube: ControlPlane, namespace: str, service: str, path: str = "/healthz") -> str:
    """The Service's ClusterIP once kube-proxy routes it (it programs new endpoints shortly
    after the pods are Ready); any HTTP answer counts."""
    host = cluster_ip(kube, namespace, service)
    poll(
        lambda: isinstance(attempt(host, 80, path, timeout=2), Reply),
        timeout=60,
        message=f"{namespace}/{service} routed by kube-proxy",
    )
    return host


def apply_admitted(kube: ControlPlane, objects: list[dict[str, Any]]) -> None:
    """Apply JWTKeyMappings, retrying only what a user would retry: a webhook call that failed
    (a replica going away mid-review; with failurePolicy Fail nothing is admitted unchecked).
    Any other refusal fails the test at once."""
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    last = ""

    def admitted() -> bool:
        nonlocal last
        done = kube.kubectl("apply", "-f", "-", input=body)
        if done.returncode == 0:
            return True
        assert "failed calling webhook" in done.stderr, done.stderr
        last = done.stderr
        return False

    try:
        poll(admitted, timeout=60, message="the mappings admitted")
    except TimeoutError as err:
        raise AssertionError(last) from err
