"""Fixtures for the tests on a real node (see cluster.py): the README's install path, for real.

One cluster, one PostgreSQL and one Helm release for the whole session, in this order:
``node_cluster`` (kubelet, containerd, CoreDNS …), ``node_postgres`` (on the host, reachable from
pods at the node's address), ``release`` (the chart installed with the locally built image). The
tier fails, never skips silently, when its binaries or images are missing or the machine cannot
run a node; set JWTKEYMAP_SKIP_NODE=1 to skip it knowingly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import os
import secrets
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

# cluster.py sits next to this file; harness.py next to the control-plane tier's.
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "controlplane"))

from cluster import NODE_IP, POD_CIDR, NodeCluster, NodeError, find_images, find_node_binaries
from harness import REPO_ROOT, BinariesMissing, ControlPlane, poll

from jwtkeymap.core.db import schema
from jwtkeymap.demo.postgres import ThrowawayPostgres
from jwtkeymap.demo.signing import SigningKey

SKIP_ENV = "JWTKEYMAP_SKIP_NODE"
CHART = REPO_ROOT / "charts" / "jwtkeymap"
RELEASE = "jwtkeymap"
RELEASE_NAMESPACE = "jwtkeymap-system"
ISSUER = "https://idp.node.jwtkeymap.test"
AUDIENCE = "litellm"
CHANNEL = "jwtkeymap_invalidate"
DATABASE = "litellm"

_timings: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker that tags this tier."""
    config.addinivalue_line("markers", "node: runs pods on a real kubelet (tests/node)")


# Run after every other file of the tier, in this order: the RBAC file checks the operator's logs
# after the others' work, the last one upgrades and then uninstalls the session's release.
RUN_LAST = ("test_rbac.py", "test_upgrade_uninstall.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tag every test of this folder; move the files of RUN_LAST to the end."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.node)

    def rank(item: pytest.Item) -> int:
        path = Path(str(item.fspath))
        if path.parent != here or path.name not in RUN_LAST:
            return -1
        return RUN_LAST.index(path.name)

    items.sort(key=rank)  # stable: the order within each group is kept


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print how long the node took to start, and the first pod's start."""
    if _timings:
        terminalreporter.section("real node")
        for line in _timings.values():
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def node_cluster() -> Iterator[NodeCluster]:
    """The single-node cluster, started once for the session and removed after it."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"!!! {SKIP_ENV}=1: the real-node tests are SKIPPED on purpose !!!")
    try:
        cluster = NodeCluster(binaries=find_node_binaries(), images=find_images())
    except (NodeError, BinariesMissing) as err:
        problem = str(err)
    else:
        problem = ""
    if problem:
        pytest.fail(
            f"the real node cannot start (`make tools images` builds what it needs;"
            f" set {SKIP_ENV}=1 to skip this tier knowingly):\n{problem}",
            pytrace=False,
        )
    with cluster:
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in cluster.timings.items())
        _timings["node"] = f"node start-to-ready {cluster.startup_seconds:.1f} s ({phases})"
        yield cluster


@pytest.fixture(scope="session")
def kube(node_cluster: NodeCluster) -> ControlPlane:
    """kubectl and helm against the node's control plane."""
    assert node_cluster.plane is not None
    return node_cluster.plane


@dataclasses.dataclass(frozen=True)
class NodeDatabase:
    """The PostgreSQL the release uses: ``url`` from the host, ``pod_url`` from pods."""

    server: ThrowawayPostgres
    url: str
    pod_url: str


@pytest.fixture(scope="session")
def node_postgres(node_cluster: NodeCluster) -> Iterator[NodeDatabase]:
    """PostgreSQL on the host, listening on loopback and on the node's address (for pods).

    After the cluster: the node's address exists only once its bridge is up.
    """
    server = ThrowawayPostgres(listen=("127.0.0.1", NODE_IP))
    try:
        server.init()
        server.start()
        server.psql(f"CREATE DATABASE {DATABASE}")
        base = server.allow(POD_CIDR, "jwtkeymap", secrets.token_urlsafe(18))
        url = server.url_for(DATABASE)

        async def migrate() -> None:
            conn = await asyncpg.connect(url)
            try:
                await schema.migrate(conn, channel=CHANNEL)
            finally:
                await conn.close()

        asyncio.run(migrate())
        yield NodeDatabase(server=server, url=url, pod_url=f"{base}/{DATABASE}")
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def idp() -> SigningKey:
    """The identity provider whose tokens the injected resolvers accept."""
    return SigningKey(ISSUER)


@dataclasses.dataclass(frozen=True)
class Release:
    """The installed chart."""

    name: str
    namespace: str
    image: str
    values: dict[str, Any]


def resolver_settings(idp: SigningKey) -> dict[str, Any]:
    """What every injected resolver is configured with (the chart's injection.resolver.settings)."""
    return {
        "issuers": [{"issuer": ISSUER, "public_keys": [idp.public_pem], "audience": AUDIENCE}],
        "unregistered_client_behavior": "reject",
        "log_level": "info",
    }


def release_values(image: str, idp: SigningKey, **overrides: Any) -> dict[str, Any]:
    """The chart's values for this node: the local image, never pulled."""
    repository, tag = image.rsplit(":", 1)
    values: dict[str, Any] = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "operator": {"replicas": 2, "logLevel": "info"},
        "injection": {
            "resolver": {"imagePullPolicy": "Never", "settings": resolver_settings(idp)},
        },
    }
    for key, value in overrides.items():
        values[key] = {**values.get(key, {}), **value}
    return values


def ensure_database_secret(kube: ControlPlane, namespace: str, url: str) -> None:
    """The Secret holding the database URL, as the README has users create it."""
    kube.kubectl("create", "namespace", namespace)
    manifest = kube.kubectl(
        "create", "secret", "generic", "jwtkeymap-database", "-n", namespace,
        f"--from-literal=url={url}", "--dry-run=client", "-o", "json", check=True,
    )  # fmt: skip
    kube.kubectl("apply", "-f", "-", input=manifest.stdout, check=True)


@pytest.fixture(scope="session")
def release(
    node_cluster: NodeCluster, kube: ControlPlane, node_postgres: NodeDatabase, idp: SigningKey
) -> Release:
    """The chart installed as the README says: database Secret first, then `helm install`."""
    image = node_cluster.images.jwtkeymap.ref
    ensure_database_secret(kube, RELEASE_NAMESPACE, node_postgres.pod_url)
    values = release_values(image, idp)
    values_file = node_cluster.workdir / "values.json"
    values_file.write_text(json.dumps(values))
    began = time.monotonic()
    done = kube.helm(
        "install", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, "-f", str(values_file),
        "--wait", "--timeout", "5m", timeout=330,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + operator_logs(kube)
    # --wait returns once the operator Deployment is Ready.
    _timings["release"] = (
        f"helm install -> operator Ready {time.monotonic() - began:.1f} s;"
        f" operator pod created -> Ready {_pod_start_to_ready(kube)}"
    )
    return Release(name=RELEASE, namespace=RELEASE_NAMESPACE, image=image, values=values)


def _pod_start_to_ready(kube: ControlPlane) -> str:
    """Each operator pod's creation to its Ready condition (whole seconds: the API's resolution)."""
    pods = json.loads(
        kube.kubectl(
            "get", "pods", "-n", RELEASE_NAMESPACE, "-l", "app.kubernetes.io/name=jwtkeymap",
            "-o", "json", check=True,
        ).stdout
    )  # fmt: skip
    spans = []
    for pod in pods["items"]:
        created = datetime.datetime.fromisoformat(pod["metadata"]["creationTimestamp"])
        ready = [c for c in pod["status"].get("conditions", []) if c["type"] == "Ready"]
        if ready and ready[0]["status"] == "True":
            spans.append(datetime.datetime.fromisoformat(ready[0]["lastTransitionTime"]) - created)
    return ", ".join(f"{s.total_seconds():.0f} s" for s in spans) or "?"


def operator_logs(kube: ControlPlane) -> str:
    """Every operator pod's log (for failure messages)."""
    out = kube.kubectl(
        "logs", "-n", RELEASE_NAMESPACE, "-l", "app.kubernetes.io/name=jwtkeymap",
        "--all-containers", "--prefix", "--tail=200",
    )  # fmt: skip
    return out.stdout + out.stderr


@pytest.fixture(scope="session")
def timings() -> dict[str, str]:
    """Figures a test records for the run's summary (`real node` section)."""
    return _timings


def _workload_namespace(kube: ControlPlane, node_postgres: NodeDatabase) -> Iterator[str]:
    name = f"w-{uuid.uuid4().hex[:8]}"
    ensure_database_secret(kube, name, node_postgres.pod_url)
    poll(
        lambda: kube.kubectl("get", "serviceaccount", "default", "-n", name).returncode == 0,
        message=f"the default ServiceAccount of {name}",
    )
    yield name
    # Its pods stop in the background; the next test does not wait for them.
    kube.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture
def workload_namespace(kube: ControlPlane, node_postgres: NodeDatabase) -> Iterator[str]:
    """A fresh namespace with the database Secret the injected resolvers read (deleted after)."""
    yield from _workload_namespace(kube, node_postgres)


@pytest.fixture(scope="module")
def module_namespace(kube: ControlPlane, node_postgres: NodeDatabase) -> Iterator[str]:
    """Like ``workload_namespace``, shared by a module's tests."""
    yield from _workload_namespace(kube, node_postgres)
