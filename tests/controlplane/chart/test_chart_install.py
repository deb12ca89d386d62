"""The chart installed into a real kube-apiserver, with its operator answering the webhooks.

There is no kubelet here, so the chart's Deployment never runs. The operator runs
in-process instead, configured as that Deployment would configure it: the chart's
ConfigMap (operator settings and injection defaults, through the same environment
variable), its generated webhook certificate, its service account's token (so its
RBAC is all the operator gets) and its ClusterKopfPeering. The webhook
configurations point the apiserver at it through ``webhook.url``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import kopf
import pytest
from charttools import CHART, CRD, LABELLED, create, get, helm_install, pod, release_files
from harness import ControlPlane, poll

from jwtkeymap.core.keys import hash_key
from jwtkeymap.core.settings import load_settings
from jwtkeymap.demo.ports import free_port
from jwtkeymap.operator.handlers.wiring import register
from jwtkeymap.operator.kube import Connection, Kube
from jwtkeymap.operator.sidecar import webhook
from jwtkeymap.operator.sidecar.defaults import load_defaults
from jwtkeymap.operator.sidecar.plan import CONTAINER_NAME, apply, plan

pytestmark = [pytest.mark.controlplane, pytest.mark.slow]

RELEASE = "jkm"
KEY = "sk-chart-test-key"
OPERATOR_SETTINGS = {
    "allowed_claim_names": ["email"],
    "reconcile_backoff_seconds": 0.25,
    "reconcile_backoff_max_seconds": 1,
}


class Installed:
    """The installed release and its in-process operator."""

    def __init__(self, plane: ControlPlane, namespace: str, files: Path) -> None:
        self.plane = plane
        self.namespace = namespace
        self.defaults = load_defaults(files / "injection.yaml")

    def counted(self, result: str, reason: str) -> float:
        """How many admissions the injector counted with this result and reason."""
        return float(webhook.INJECTIONS.labels(result, reason)._value.get())


def _run_operator(
    plane: ControlPlane,
    token: str,
    files: Path,
    database_url: str,
    port: int,
    stop: threading.Event,
    ready: threading.Event,
) -> None:
    registry = kopf.OperatorRegistry()
    connection = Connection(server=plane.server, token=token, ca_path=plane.ca_file)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=plane.server, ca_path=str(plane.ca_file), token=token)

    @kopf.on.startup(registry=registry)
    def webhook_server(settings: kopf.OperatorSettings, **_: Any) -> None:
        # What `jwtkeymap operator --webhook-port … --webhook-cert … --webhook-key …` sets up.
        settings.admission.server = kopf.WebhookServer(
            addr="127.0.0.1",
            port=port,
            certfile=str(files / "tls.crt"),
            pkeyfile=str(files / "tls.key"),
        )
        settings.watching.server_timeout = 10

    async def connect() -> Kube:
        return await Kube.connect(connection)

    settings = load_settings(files / "config.yaml", database_url=database_url)
    register(registry, settings, connect_kube=connect, admission=True)
    asyncio.run(
        kopf.operator(
            registry=registry,
            clusterwide=True,
            peering_name=f"{RELEASE}-jwtkeymap",
            priority=100,
            stop_flag=stop,
            ready_flag=ready,
        )
    )


def _kubeconfig(plane: ControlPlane, token: str, path: Path) -> Path:
    # For the injector's Event client, which (like in a pod) finds its own credentials.
    config = json.loads(plane.kubeconfig.read_text())
    config["users"][0]["user"] = {"token": token}
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def database(pg_server: Any, migrated_template: str) -> Iterator[str]:
    """A migrated database holding one virtual key (KEY)."""
    name = f"jkm_chart_{uuid.uuid4().hex[:8]}"

    async def setup() -> None:
        await pg_server.execute(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}"')
        conn = await asyncpg.connect(pg_server.url_for(name))
        try:
            await conn.execute(
                'INSERT INTO "LiteLLM_VerificationToken" (token, team_id) VALUES ($1, $2)',
                hash_key(KEY),
                "team-a",
            )
        finally:
            await conn.close()

    asyncio.run(setup())
    yield pg_server.url_for(name)
    asyncio.run(pg_server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def installed(
    controlplane: ControlPlane, database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installed]:
    """`helm install` of the chart, and its operator serving the apiserver's webhook calls."""
    plane = controlplane
    namespace = f"jkm-{uuid.uuid4().hex[:8]}"
    plane.kubectl("create", "namespace", namespace, check=True)
    port = free_port()
    helm_install(
        plane,
        RELEASE,
        namespace,
        port,
        "injection.resolver.settings.claim_field=email",
        f"json:operator.settings={json.dumps(OPERATOR_SETTINGS)}",
    )
    stop, ready = threading.Event(), threading.Event()
    thread: threading.Thread | None = None
    try:
        files = release_files(plane, RELEASE, namespace, tmp_path_factory.mktemp("release"))
        token = plane.kubectl(
            "create", "token", f"{RELEASE}-jwtkeymap", "-n", namespace, check=True
        ).stdout.strip()
        with pytest.MonkeyPatch.context() as patch:
            # As the chart's Deployment sets them.
            patch.setenv(webhook.CONFIG_ENV, str(files / "injection.yaml"))
            patch.setattr(
                "kubernetes_asyncio.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION",
                str(_kubeconfig(plane, token, files / "kubeconfig")),
            )
            thread = threading.Thread(
                target=_run_operator,
                args=(plane, token, files, database, port, stop, ready),
                daemon=True,
            )
            thread.start()
            assert ready.wait(60), "the operator did not start"
        probe_ns = f"probe-{uuid.uuid4().hex[:6]}"
        plane.kubectl("create", "namespace", probe_ns, check=True)

        # The apiserver learns about webhook configurations asynchronously: probe with dry runs.
        def injected_dry_run() -> bool:
            assert thread is not None and thread.is_alive(), "the operator stopped"
            got = plane.kubectl(
                "create", "--dry-run=server", "-n", probe_ns, "-o", "json", "-f", "-",
                input=json.dumps(pod("probe", labels=LABELLED)),
            )  # fmt: skip
            return got.returncode == 0 and "initContainers" in json.loads(got.stdout)["spec"]

        poll(injected_dry_run, timeout=60, message="the apiserver to call the injector")

        # A new CRD is served, and a new validating webhook called, a little after both
        # exist ("Resource kind … not found … a delay"): probe until the validator answers.
        def validated_dry_run() -> bool:
            got = plane.kubectl(
                "create", "--dry-run=server", "-n", probe_ns, "-f", "-",
                input=json.dumps(mapping("probe", "sub", "probe", {"hash": "0" * 64})),
            )  # fmt: skip
            return 'admission webhook "validate.jwtkeymappings.jwtkeymap.io"' in got.stderr

        poll(validated_dry_run, timeout=60, message="the apiserver to serve and validate mappings")
        yield Installed(plane, namespace, files)
        # Release the mappings while the operator still runs (their finalizers need it).
        plane.kubectl("delete", "jwtkeymappings", "--all", "-A", "--wait", "--timeout=60s")
    finally:
        stop.set()
        if thread is not None:
            thread.join(30)
        plane.helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "60s")


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
    assert can("patch", "secrets", "-n", "team-a") == "yes"  # the watched label
    assert can("update", "secrets", "-n", "team-a") == "no"
    assert can("watch", "jwtkeymappingpolicies.jwtkeymap.io") == "yes"
    assert can("patch", "jwtkeymappingpolicies.jwtkeymap.io") == "no"
    assert (
        can("patch", "jwtkeymappings.jwtkeymap.io", "--subresource=status", "-n", "team-a") == "yes"
    )
    assert can("create", "events", "-n", "team-a") == "yes"
    assert can("patch", "clusterkopfpeerings.kopf.dev") == "yes"
    assert can("list", "pods", "--all-namespaces") == "no"
    assert can("delete", "secrets", "-n", ns) == "no"
    assert can("create", "mutatingwebhookconfigurations") == "no"


def test_the_operator_may_only_label_secrets(installed: Installed, namespace: str) -> None:
    """The chart's ValidatingAdmissionPolicy narrows the operator's patch on Secrets."""
    plane = installed.plane
    account = f"--as=system:serviceaccount:{installed.namespace}:{RELEASE}-jwtkeymap"
    plane.kubectl(
        "create", "secret", "generic", "probe", "-n", namespace, "--from-literal=apiKey=sk-x",
        check=True,
    )  # fmt: skip

    def patch(body: dict[str, Any], *who: str) -> Any:
        args = ("patch", "secret", "probe", "-n", namespace, "--type=merge", "-p", json.dumps(body))
        return plane.kubectl(*args, *who)

    watched = {"metadata": {"labels": {"jwtkeymap.io/watched": "true"}}}
    refused = [
        {"data": {"apiKey": "eA=="}},
        {"stringData": {"other": "x"}},
        {"metadata": {"labels": {"team": "a"}}},
        {"metadata": {"labels": {"jwtkeymap.io/watched": "false"}}},
        {"metadata": {"annotations": {"a": "b"}}},
        {"immutable": True},
    ]
    for body in refused:
        done = patch(body, account)
        assert done.returncode != 0, body
        assert "may only add the label jwtkeymap.io/watched=true" in done.stderr, done.stderr
    assert patch(watched, account).returncode == 0
    assert patch(watched, account).returncode == 0  # again: a no-op, still allowed
    removed = patch({"metadata": {"labels": {"jwtkeymap.io/watched": None}}}, account)
    assert removed.returncode != 0
    # The policy binds the operator's ServiceAccount only.
    assert patch({"metadata": {"labels": {"team": "a"}}}).returncode == 0
    stored = get(plane, "secret", "probe", "-n", namespace)
    assert stored["metadata"]["labels"] == {"jwtkeymap.io/watched": "true", "team": "a"}
    assert stored["data"]["apiKey"] == "c2steA=="  # sk-x, untouched


def test_labelled_pod_gets_the_sidecar(installed: Installed, namespace: str) -> None:
    plane = installed.plane
    created = create(plane, namespace, pod("web", labels=LABELLED))
    assert created.returncode == 0, created.stderr
    stored = get(plane, "pod", "web", "-n", namespace)
    assert stored["metadata"]["annotations"]["jwtkeymap.io/status"] == "injected"
    [sidecar] = stored["spec"]["initContainers"]
    assert sidecar["name"] == CONTAINER_NAME
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == "ghcr.io/jwtkeymap/jwtkeymap:0.1.0"
    assert sidecar["args"] == [
        "resolver",
        "--listen",
        "0.0.0.0:8181",
        "--metrics-listen",
        "0.0.0.0:8182",
        "--upstream",
        "http://127.0.0.1:8080",
    ]
    assert [p["name"] for p in sidecar["ports"]] == ["jwtkeymap", "jwtkeymap-prom"]
    env = {e["name"]: e for e in sidecar["env"]}
    assert env["JWTKEYMAP_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "jwtkeymap-database",
        "key": "url",
    }
    assert env["JWTKEYMAP_CLAIM_FIELD"]["value"] == "email"
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    assert [c["name"] for c in stored["spec"]["containers"]] == ["app"]


def contains(big: Any, small: Any) -> bool:
    """Whether ``small`` is ``big`` less the fields the apiserver defaults."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(
            k in big and contains(big[k], v) for k, v in small.items()
        )
    if isinstance(small, list):
        return isinstance(big, list) and len(big) == len(small) and all(map(contains, big, small))
    return bool(big == small)


def test_webhook_and_offline_inject_agree(installed: Installed, namespace: str) -> None:
    plane = installed.plane
    submitted = pod("twin", labels=LABELLED)
    assert create(plane, namespace, submitted).returncode == 0
    stored = get(plane, "pod", "twin", "-n", namespace)
    offline = apply(submitted, plan(submitted, installed.defaults))
    assert contains(stored["spec"], offline["spec"])
    assert contains(stored["metadata"]["annotations"], offline["metadata"]["annotations"])


def test_unlabelled_pod_is_untouched(installed: Installed, namespace: str) -> None:
    before = installed.counted("skipped", "not_labelled")
    created = create(installed.plane, namespace, pod("plain", labels={"app": "plain"}))
    assert created.returncode == 0, created.stderr
    stored = get(installed.plane, "pod", "plain", "-n", namespace)
    assert "initContainers" not in stored["spec"]
    assert "jwtkeymap.io/status" not in stored["metadata"].get("annotations", {})
    # Filtered by the objectSelector: the apiserver did not even ask.
    assert installed.counted("skipped", "not_labelled") == before


def test_second_admission_of_an_injected_pod_does_not_inject_twice(
    installed: Installed, namespace: str
) -> None:
    plane = installed.plane
    assert create(plane, namespace, pod("first", labels=LABELLED)).returncode == 0
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
    twice = get(plane, "pod", "again", "-n", namespace)
    names = [c["name"] for c in twice["spec"]["initContainers"] + twice["spec"]["containers"]]
    assert names.count(CONTAINER_NAME) == 1
    assert installed.counted("skipped", "already_injected") == before + 1


def test_invalid_annotation_is_denied_naming_it(installed: Installed, namespace: str) -> None:
    bad = pod("bad", labels=LABELLED, annotations={"jwtkeymap.io/upstream-port": "http"})
    created = create(installed.plane, namespace, bad)
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
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod("x")["spec"]},
        },
    }
    assert create(plane, namespace, replicaset).returncode == 0
    uid = get(plane, "replicaset", "web-5d9", "-n", namespace)["metadata"]["uid"]
    owned = pod(
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


def mapping(name: str, claim: str, value: str, key: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "jwtkeymap.io/v1alpha1",
        "kind": "JWTKeyMapping",
        "metadata": {"name": name},
        "spec": {"issuer": "*", "claim": {"name": claim, "value": value}, "key": key},
    }


def test_validating_webhook_applies_the_charts_operator_settings(
    installed: Installed, namespace: str
) -> None:
    # allowed_claim_names came from operator.settings in the chart's values.
    refused = create(
        installed.plane, namespace, mapping("by-sub", "sub", "alice", {"hash": "0" * 64})
    )
    assert refused.returncode != 0
    assert (
        'admission webhook "validate.jwtkeymappings.jwtkeymap.io" denied the request'
        in refused.stderr
    )
    assert "spec.claim.name: claim 'sub' is not allowed here (allowed: email)" in refused.stderr


def test_mapping_is_reconciled_by_the_operator_as_its_service_account(
    installed: Installed, namespace: str
) -> None:
    plane = installed.plane
    # Secure by default: the platform team's first policy lets this namespace map e-mails.
    policy = {
        "apiVersion": "jwtkeymap.io/v1alpha1",
        "kind": "JWTKeyMappingPolicy",
        "metadata": {"name": f"chart-{namespace}"},
        "spec": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "issuers": ["*"],
            "claims": [{"name": "email", "values": ["*@example.com"]}],
        },
    }
    plane.kubectl("apply", "-f", "-", input=json.dumps(policy), check=True)
    plane.kubectl(
        "create", "secret", "generic", "alice-key", "-n", namespace, f"--from-literal=apiKey={KEY}",
        check=True,
    )  # fmt: skip
    created = create(
        plane,
        namespace,
        mapping(
            "alice",
            "email",
            "alice@example.com",
            {"secretRef": {"name": "alice-key", "key": "apiKey"}},
        ),
    )
    assert created.returncode == 0, created.stderr

    def ready() -> dict[str, Any] | None:
        status = get(plane, "jwtkeymapping", "alice", "-n", namespace).get("status", {})
        found = [c for c in status.get("conditions", []) if c["type"] == "Ready"]
        return found[0] if found and found[0]["status"] == "True" else None

    condition = poll(ready, message="the mapping to become Ready")
    assert condition["reason"] == "Synced"
    stored = get(plane, "jwtkeymapping", "alice", "-n", namespace)
    assert "jwtkeymap.io/finalizer" in stored["metadata"]["finalizers"]
    # Labelled (with the chart's patch grant) before it was read, so its watch follows it.
    labels = get(plane, "secret", "alice-key", "-n", namespace)["metadata"]["labels"]
    assert labels["jwtkeymap.io/watched"] == "true"


def test_operator_joined_the_charts_peering(installed: Installed) -> None:
    peering = get(installed.plane, "clusterkopfpeering", f"{RELEASE}-jwtkeymap")
    peers = peering.get("status", {})
    assert len(peers) == 1
    [(_, peer)] = peers.items()
    assert peer["priority"] == 100


def test_upgrade_keeps_the_webhook_certificate(installed: Installed) -> None:
    plane, ns = installed.plane, installed.namespace
    secret = f"{RELEASE}-jwtkeymap-webhook-tls"
    before = get(plane, "secret", secret, "-n", ns)["data"]
    upgraded = plane.helm(
        "upgrade", RELEASE, str(CHART), "-n", ns, "--reuse-values", "--set", "operator.replicas=3"
    )
    assert upgraded.returncode == 0, upgraded.stderr
    assert get(plane, "deployment", f"{RELEASE}-jwtkeymap", "-n", ns)["spec"]["replicas"] == 3
    # Regenerated certificates would break the replicas still serving the old one.
    assert get(plane, "secret", secret, "-n", ns)["data"] == before
    hook = get(plane, "mutatingwebhookconfiguration", f"{RELEASE}-jwtkeymap-injector")
    assert hook["webhooks"][0]["clientConfig"]["caBundle"] == before["ca.crt"]
