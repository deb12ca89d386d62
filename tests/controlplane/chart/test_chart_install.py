"""The chart installed into a real kube-apiserver, with the injector answering its webhook.

There is no kubelet here, so the operator Deployment never runs; the injector runs
in-process instead (kopf's webhook server on 127.0.0.1, with the certificate the
chart generated and the injection defaults from the chart's ConfigMap), and the
chart's MutatingWebhookConfiguration points the apiserver at it through
``webhook.url``. Everything else is what `helm install` created.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from charttools import CHART
from harness import ControlPlane, free_port, poll

from jwtkeymap.operator import injector
from jwtkeymap.operator.injection import CONTAINER_NAME, InjectionDefaults
from jwtkeymap.operator.kube import Connection

pytestmark = [pytest.mark.controlplane, pytest.mark.slow]

RELEASE = "jkm"
CRD = "jwtkeymappings.jwtkeymap.io"


class Installed:
    """The installed release and the in-process injector."""

    def __init__(self, plane: ControlPlane, namespace: str, defaults: InjectionDefaults) -> None:
        self.plane = plane
        self.namespace = namespace
        self.defaults = defaults

    def counted(self, result: str, reason: str) -> float:
        """How many admissions the injector counted with this result and reason."""
        value = injector.INJECTIONS.labels(result, reason)._value.get()
        return float(value)


def _crd_is_foreign(plane: ControlPlane) -> bool:
    # Another test may have applied the CRD with kubectl; Helm refuses to adopt it.
    got = plane.kubectl("get", "crd", CRD, "-o", "json")
    if got.returncode != 0:
        return False
    labels = json.loads(got.stdout)["metadata"].get("labels", {})
    return labels.get("app.kubernetes.io/managed-by") != "Helm"


def _run_injector(
    plane: ControlPlane,
    token: str,
    defaults: InjectionDefaults,
    port: int,
    tls_dir: Path,
    stop: threading.Event,
    ready: threading.Event,
) -> None:
    import asyncio

    registry = kopf.OperatorRegistry()

    # As the chart's service account: its RBAC is all the injector gets, as in a cluster.
    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=plane.server, ca_path=str(plane.ca_file), token=token)

    @kopf.on.startup(registry=registry)
    def webhook_server(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.admission.server = kopf.WebhookServer(
            addr="127.0.0.1",
            port=port,
            certfile=str(tls_dir / "tls.crt"),
            pkeyfile=str(tls_dir / "tls.key"),
        )

    connection = Connection(server=plane.server, token=token, ca_path=plane.ca_file)
    assert injector.register(registry, defaults, connection=connection)
    asyncio.run(
        kopf.operator(
            registry=registry,
            clusterwide=True,
            standalone=True,
            stop_flag=stop,
            ready_flag=ready,
        )
    )


def _pod(name: str, *, labels: dict[str, str] | None = None, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}, **meta},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "registry.k8s.io/pause:3.10",
                    "ports": [{"containerPort": 8080}],
                }
            ]
        },
    }


LABELLED = {"jwtkeymap.io/inject": "true"}


@pytest.fixture(scope="module")
def installed(
    controlplane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installed]:
    """`helm install` of the chart, and the injector serving the apiserver's calls."""
    plane = controlplane
    namespace = f"jkm-{uuid.uuid4().hex[:8]}"
    plane.kubectl("create", "namespace", namespace, check=True)
    port = free_port()
    crds = "false" if _crd_is_foreign(plane) else "true"
    done = plane.helm(
        "install", RELEASE, str(CHART), "-n", namespace,
        "--set", f"webhook.url=https://127.0.0.1:{port}",
        "--set", "webhook.tls.helm.extraSANs={127.0.0.1}",
        "--set", f"crds.enabled={crds}",
        "--set", "injection.resolver.settings.claim_field=email",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    stop, ready = threading.Event(), threading.Event()
    thread: threading.Thread | None = None
    try:
        secret = json.loads(
            plane.kubectl(
                "get",
                "secret",
                f"{RELEASE}-jwtkeymap-webhook-tls",
                "-n",
                namespace,
                "-o",
                "json",
                check=True,
            ).stdout
        )
        tls_dir = tmp_path_factory.mktemp("webhook-tls")
        for key in ("tls.crt", "tls.key"):
            (tls_dir / key).write_bytes(base64.b64decode(secret["data"][key]))
        config = json.loads(
            plane.kubectl(
                "get",
                "configmap",
                f"{RELEASE}-jwtkeymap",
                "-n",
                namespace,
                "-o",
                "json",
                check=True,
            ).stdout
        )
        defaults = InjectionDefaults.model_validate(
            yaml.safe_load(config["data"]["injection.yaml"])
        )

        token = plane.kubectl(
            "create", "token", f"{RELEASE}-jwtkeymap", "-n", namespace, check=True
        ).stdout.strip()
        thread = threading.Thread(
            target=_run_injector,
            args=(plane, token, defaults, port, tls_dir, stop, ready),
            daemon=True,
        )
        thread.start()
        assert ready.wait(60), "the injector did not start"
        probe_ns = f"probe-{uuid.uuid4().hex[:6]}"
        plane.kubectl("create", "namespace", probe_ns, check=True)

        # The apiserver learns about webhook configurations asynchronously: probe with dry runs.
        def injected_dry_run() -> bool:
            assert thread is not None and thread.is_alive(), "the injector stopped"
            got = plane.kubectl(
                "create", "--dry-run=server", "-n", probe_ns, "-o", "json", "-f", "-",
                input=json.dumps(_pod("probe", labels=LABELLED)),
            )  # fmt: skip
            return got.returncode == 0 and "initContainers" in json.loads(got.stdout)["spec"]

        poll(injected_dry_run, timeout=60, message="the apiserver to call the injector")
        yield Installed(plane, namespace, defaults)
    finally:
        stop.set()
        if thread is not None:
            thread.join(30)
        plane.helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "60s")


def get(plane: ControlPlane, *args: str) -> dict[str, Any]:
    return json.loads(plane.kubectl("get", *args, "-o", "json", check=True).stdout)


def create(plane: ControlPlane, namespace: str, obj: dict[str, Any]) -> Any:
    return plane.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(obj))


def test_release_objects_and_rbac(installed: Installed) -> None:
    plane, ns = installed.plane, installed.namespace
    status = json.loads(plane.helm("status", RELEASE, "-n", ns, "-o", "json", check=True).stdout)
    assert status["info"]["status"] == "deployed"
    deployment = get(plane, "deployment", f"{RELEASE}-jwtkeymap", "-n", ns)
    assert deployment["spec"]["replicas"] == 2
    assert get(plane, "pdb", f"{RELEASE}-jwtkeymap", "-n", ns)["spec"]["minAvailable"] == 1
    get(plane, "clusterkopfpeering", f"{RELEASE}-jwtkeymap")
    get(plane, "crd", CRD)

    account = f"--as=system:serviceaccount:{ns}:{RELEASE}-jwtkeymap"

    def can(*args: str) -> str:
        return plane.kubectl("auth", "can-i", *args, account).stdout.strip()

    assert can("watch", "secrets", "--all-namespaces") == "yes"
    assert (
        can("patch", "jwtkeymappings.jwtkeymap.io", "--subresource=status", "-n", "team-a") == "yes"
    )
    assert can("create", "events", "-n", "team-a") == "yes"
    assert can("patch", "clusterkopfpeerings.kopf.dev") == "yes"
    assert can("list", "pods", "--all-namespaces") == "no"
    assert can("delete", "secrets", "-n", ns) == "no"
    assert can("create", "mutatingwebhookconfigurations") == "no"


def test_labelled_pod_gets_the_sidecar(installed: Installed, namespace: str) -> None:
    plane = installed.plane
    created = create(plane, namespace, _pod("web", labels=LABELLED))
    assert created.returncode == 0, created.stderr
    pod = get(plane, "pod", "web", "-n", namespace)
    assert pod["metadata"]["annotations"]["jwtkeymap.io/status"] == "injected"
    [sidecar] = pod["spec"]["initContainers"]
    assert sidecar["name"] == CONTAINER_NAME
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == "ghcr.io/jwtkeymap/jwtkeymap:0.1.0"
    assert sidecar["args"] == [
        "resolver",
        "--listen",
        "0.0.0.0:8181",
        "--upstream",
        "http://127.0.0.1:8080",
    ]
    env = {e["name"]: e for e in sidecar["env"]}
    assert env["JWTKEYMAP_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "jwtkeymap-database",
        "key": "url",
    }
    assert env["JWTKEYMAP_CLAIM_FIELD"]["value"] == "email"
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    assert [c["name"] for c in pod["spec"]["containers"]] == ["app"]


def test_unlabelled_pod_is_untouched(installed: Installed, namespace: str) -> None:
    before = installed.counted("skipped", "not_labelled")
    created = create(installed.plane, namespace, _pod("plain", labels={"app": "plain"}))
    assert created.returncode == 0, created.stderr
    pod = get(installed.plane, "pod", "plain", "-n", namespace)
    assert "initContainers" not in pod["spec"]
    assert "jwtkeymap.io/status" not in pod["metadata"].get("annotations", {})
    # Filtered by the objectSelector: the apiserver did not even ask.
    assert installed.counted("skipped", "not_labelled") == before


def test_second_admission_of_an_injected_pod_does_not_inject_twice(
    installed: Installed, namespace: str
) -> None:
    plane = installed.plane
    assert create(plane, namespace, _pod("first", labels=LABELLED)).returncode == 0
    stored = get(plane, "pod", "first", "-n", namespace)
    # Re-submit the injected pod as a new one (what a controller copying a template would do).
    meta = stored["metadata"]
    again = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "again", "labels": meta["labels"], "annotations": meta["annotations"]},
        "spec": {k: v for k, v in stored["spec"].items() if k != "nodeName"},
    }
    before = installed.counted("skipped", "already_injected")
    created = create(plane, namespace, again)
    assert created.returncode == 0, created.stderr
    pod = get(plane, "pod", "again", "-n", namespace)
    names = [c["name"] for c in pod["spec"]["initContainers"] + pod["spec"]["containers"]]
    assert names.count(CONTAINER_NAME) == 1
    assert installed.counted("skipped", "already_injected") == before + 1


def test_invalid_annotation_is_denied_naming_it(installed: Installed, namespace: str) -> None:
    pod = _pod("bad", labels=LABELLED, annotations={"jwtkeymap.io/upstream-port": "http"})
    created = create(installed.plane, namespace, pod)
    assert created.returncode != 0
    assert "jwtkeymap.io/upstream-port: must be a port number" in created.stderr
    missing = installed.plane.kubectl("get", "pod", "bad", "-n", namespace)
    assert "NotFound" in missing.stderr


def test_injection_is_reported_on_the_owner(installed: Installed, namespace: str) -> None:
    plane = installed.plane
    replicaset = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "web-5d9"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": _pod("x")["spec"]},
        },
    }
    assert create(plane, namespace, replicaset).returncode == 0
    uid = get(plane, "replicaset", "web-5d9", "-n", namespace)["metadata"]["uid"]
    owned = _pod(
        "web-5d9-abcde",
        labels={**LABELLED, "app": "web"},
        ownerReferences=[
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "web-5d9",
                "uid": uid,
                "controller": True,
            }
        ],
    )
    assert create(plane, namespace, owned).returncode == 0

    def injected_event() -> list[dict[str, Any]]:
        events = get(
            plane, "events", "-n", namespace, "--field-selector", "involvedObject.name=web-5d9"
        )
        return [e for e in events["items"] if e["reason"] == "Injected"]

    [event] = poll(injected_event, message="an Injected event on the ReplicaSet")
    assert event["involvedObject"]["kind"] == "ReplicaSet"
    assert event["involvedObject"]["uid"] == uid
    assert (
        "jwtkeymap-resolver injected on port 8181, proxying to 127.0.0.1:8080" in event["message"]
    )
