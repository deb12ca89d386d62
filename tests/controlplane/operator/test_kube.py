"""The operator's own API calls (``Kube``) against a real API server: what each answers
for a missing object, and how every failure reaches the handlers as ``KubeUnavailable``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from harness import ControlPlane

from jwtkeymap.demo.ports import free_port
from jwtkeymap.operator.kube import Connection, Kube, KubeUnavailable
from jwtkeymap.operator.resource import PLURAL, WATCHED_LABEL

pytestmark = pytest.mark.controlplane


def mapping(namespace: str, name: str, value: str) -> str:
    spec = {"issuer": "*", "claim": {"name": "email", "value": value}, "key": {"hash": "c" * 64}}
    return json.dumps(
        {
            "apiVersion": "jwtkeymap.io/v1alpha1",
            "kind": "JWTKeyMapping",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


@pytest.fixture
async def connect(controlplane: ControlPlane) -> AsyncIterator[Callable[..., Awaitable[Kube]]]:
    """Connect a Kube to ``server`` with ``token`` (the test API server and its admin token)."""
    opened: list[Kube] = []

    async def open_kube(server: str = controlplane.server, token: str = controlplane.token) -> Kube:
        kube = await Kube.connect(Connection(server, token, controlplane.ca_file))
        opened.append(kube)
        return kube

    yield open_kube
    for kube in opened:
        await kube.close()


async def test_missing_objects_answer_none_or_false(
    connect: Callable[..., Awaitable[Kube]], namespace: str, jkm_crd: str
) -> None:
    kube = await connect()
    assert await kube.secret_data(namespace, "absent") is None
    assert (namespace, "absent") in kube.awaited
    assert await kube.label_secret(namespace, "absent") is False
    assert await kube.namespace_labels(f"{namespace}-absent") is None
    assert await kube.annotate_mapping(namespace, "absent", {"a.example/x": "1"}) is False


async def test_present_objects_are_read_labelled_and_listed(
    connect: Callable[..., Awaitable[Kube]],
    controlplane: ControlPlane,
    namespace: str,
    jkm_crd: str,
) -> None:
    kube = await connect()
    kube.awaited.add(namespace, "key")
    controlplane.kubectl(
        "create", "secret", "generic", "key", "-n", namespace, "--from-literal=apiKey=sk-x",
        check=True,
    )  # fmt: skip
    assert await kube.secret_data(namespace, "key") == {"apiKey": "c2steA=="}
    assert (namespace, "key") not in kube.awaited
    done = controlplane.kubectl("get", "secret", "key", "-n", namespace, "-o", "json", check=True)
    assert json.loads(done.stdout)["metadata"]["labels"] == {WATCHED_LABEL: "true"}

    labels = await kube.namespace_labels(namespace)
    assert labels is not None and labels["kubernetes.io/metadata.name"] == namespace

    for name, value in (("one", f"one@{namespace}.example"), ("two", f"two@{namespace}.example")):
        controlplane.kubectl("apply", "-f", "-", input=mapping(namespace, name, value), check=True)
    assert await kube.annotate_mapping(namespace, "one", {"a.example/x": "1"}) is True
    done = controlplane.kubectl("get", PLURAL, "one", "-n", namespace, "-o", "json", check=True)
    assert json.loads(done.stdout)["metadata"]["annotations"]["a.example/x"] == "1"

    def ours(items: list[dict[str, Any]]) -> set[str]:
        return {i["metadata"]["name"] for i in items if i["metadata"]["namespace"] == namespace}

    assert ours(await kube.list_cluster_objects(PLURAL)) == {"one", "two"}
    selected = await kube.list_cluster_objects(
        PLURAL, field_selector=f"spec.claim.value=one@{namespace}.example"
    )
    assert ours(selected) == {"one"}
    # A field the CRD does not make selectable: the server answers 400, and every
    # object is listed instead (the caller filters).
    unselectable = await kube.list_cluster_objects(PLURAL, field_selector="spec.issuer=nobody")
    assert ours(unselectable) == {"one", "two"}


async def test_refusals_and_lost_connections_become_kube_unavailable(
    connect: Callable[..., Awaitable[Kube]], namespace: str, jkm_crd: str
) -> None:
    stranger = await connect(token="not-a-token")
    calls: list[tuple[Callable[[Kube], Awaitable[object]], str]] = [
        (lambda k: k.secret_data(namespace, "key"), f"reading Secret {namespace}/key"),
        (lambda k: k.label_secret(namespace, "key"), f"labelling Secret {namespace}/key"),
        (lambda k: k.namespace_labels(namespace), f"reading namespace {namespace}"),
        (
            lambda k: k.annotate_mapping(namespace, "one", {"a.example/x": "1"}),
            f"annotating {PLURAL}/{namespace}/one",
        ),
        (lambda k: k.list_cluster_objects(PLURAL), f"listing {PLURAL}"),
        (
            lambda k: k.list_cluster_objects(PLURAL, field_selector="spec.claim.value=x"),
            f"listing {PLURAL}",
        ),
    ]
    for call, what in calls:
        with pytest.raises(KubeUnavailable) as refused:
            await call(stranger)
        assert str(refused.value) == f"{what}: HTTP 401"
    assert (namespace, "key") not in stranger.awaited

    gone = await connect(server=f"https://127.0.0.1:{free_port()}")
    for call, what in calls:
        with pytest.raises(KubeUnavailable) as lost:
            await call(gone)
        message = str(lost.value)
        assert message.startswith(f"{what}: ") and "HTTP" not in message
