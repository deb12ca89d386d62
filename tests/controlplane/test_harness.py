"""Proof that the test control plane is a real Kubernetes API.

Schema and CEL validation, a kopf operator, Helm and an admission webhook, all against it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import subprocess
import sys
import uuid
from pathlib import Path

import jwt
import kopf
import pytest
from aiohttp import web
from harness import TESTDATA, Binaries, ControlPlane, apoll, poll

from support.pki import issue_tls

pytestmark = pytest.mark.controlplane


def widget(name: str, *, min_replicas: int, max_replicas: int) -> str:
    """A Widget manifest as JSON (which kubectl reads as YAML)."""
    return json.dumps(
        {
            "apiVersion": "harness.jwtkeymap.io/v1",
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": {"minReplicas": min_replicas, "maxReplicas": max_replicas},
        }
    )


# --- (a) CRD schema and CEL validation ------------------------------------------------------


def test_valid_widget_is_stored(
    controlplane: ControlPlane, widget_crd: str, namespace: str
) -> None:
    applied = controlplane.kubectl(
        "apply", "-n", namespace, "-f", "-", input=widget("ok", min_replicas=1, max_replicas=3)
    )
    assert applied.returncode == 0, applied.stderr
    stored = controlplane.kubectl(
        "get", "widget", "ok", "-n", namespace, "-o", "jsonpath={.spec.maxReplicas}", check=True
    )
    assert stored.stdout == "3"


def test_openapi_rule_violation_is_rejected(
    controlplane: ControlPlane, widget_crd: str, namespace: str
) -> None:
    applied = controlplane.kubectl(
        "apply", "-n", namespace, "-f", "-", input=widget("too-few", min_replicas=0, max_replicas=3)
    )
    assert applied.returncode != 0
    assert "spec.minReplicas" in applied.stderr
    assert "should be greater than or equal to 1" in applied.stderr
    missing = controlplane.kubectl("get", "widget", "too-few", "-n", namespace)
    assert "NotFound" in missing.stderr


def test_cel_rule_violation_is_rejected(
    controlplane: ControlPlane, widget_crd: str, namespace: str
) -> None:
    applied = controlplane.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=widget("inverted", min_replicas=5, max_replicas=3),
    )
    assert applied.returncode != 0
    assert "minReplicas must not exceed maxReplicas" in applied.stderr


# --- (b) a kopf operator against the real apiserver -----------------------------------------


async def test_kopf_operator_patches_status(
    controlplane: ControlPlane,
    widget_crd: str,
    namespace: str,
    kopf_registry: kopf.OperatorRegistry,
) -> None:
    handled: list[str] = []

    @kopf.on.create("harness.jwtkeymap.io", "v1", "widgets", registry=kopf_registry)
    def on_create(meta: kopf.Meta, patch: kopf.Patch, **_: object) -> None:
        handled.append(meta["name"])
        patch.status["phase"] = "Ready"
        patch.status["observedGeneration"] = meta["generation"]

    settings = kopf.OperatorSettings()
    settings.watching.server_timeout = 10  # so that stopping never waits on a long watch
    stop, ready = asyncio.Event(), asyncio.Event()
    operator = asyncio.create_task(
        kopf.operator(
            registry=kopf_registry,
            settings=settings,
            standalone=True,
            namespaces=[namespace],
            stop_flag=stop,
            ready_flag=ready,
        )
    )
    try:
        await asyncio.wait_for(ready.wait(), timeout=30)
        manifest = widget("reconciled", min_replicas=2, max_replicas=4)
        await controlplane.akubectl(
            "create", "-n", namespace, "-f", "-", input=manifest, check=True
        )

        async def ready_phase() -> bool:
            assert not operator.done(), "the operator stopped early"
            got = await controlplane.akubectl(
                "get", "widget", "reconciled", "-n", namespace, "-o", "jsonpath={.status.phase}"
            )
            return got.stdout == "Ready"

        await apoll(ready_phase, message="the operator to set status.phase=Ready")
    finally:
        stop.set()
        await asyncio.wait_for(operator, timeout=30)

    assert handled == ["reconciled"]
    jsonpath = "jsonpath={.metadata.generation}/{.status.observedGeneration}"
    generation = controlplane.kubectl(
        "get", "widget", "reconciled", "-n", namespace, "-o", jsonpath, check=True
    )
    assert generation.stdout == "1/1"


# --- (c) helm ---------------------------------------------------------------------------------


def test_helm_template_passes_server_dry_run(controlplane: ControlPlane, namespace: str) -> None:
    rendered = controlplane.helm(
        "template", "dry", str(TESTDATA / "chart"), "-n", namespace, check=True
    )
    dry_run = controlplane.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", input=rendered.stdout
    )
    assert dry_run.returncode == 0, dry_run.stderr
    for obj in (
        "configmap/dry-settings",
        "deployment.apps/dry",
        "rolebinding.rbac.authorization.k8s.io/dry",
    ):
        assert f"{obj} created (server dry run)" in dry_run.stdout
    left = controlplane.kubectl("get", "configmap", "dry-settings", "-n", namespace)
    assert "NotFound" in left.stderr


def test_helm_install_creates_objects(controlplane: ControlPlane, namespace: str) -> None:
    installed = controlplane.helm(
        "install", "smoke", str(TESTDATA / "chart"), "-n", namespace, "--set", "greeting=hi"
    )
    assert installed.returncode == 0, installed.stderr
    status = json.loads(
        controlplane.helm("status", "smoke", "-n", namespace, "-o", "json", check=True).stdout
    )
    assert status["info"]["status"] == "deployed"

    config = json.loads(
        controlplane.kubectl(
            "get", "configmap", "smoke-settings", "-n", namespace, "-o", "json", check=True
        ).stdout
    )
    assert config["data"]["greeting"] == "hi"
    # Helm took the version from the live apiserver, so the build's version stamp is visible here.
    assert config["data"]["kubeVersion"] == controlplane.binaries.k8s_version
    controlplane.kubectl("get", "deployment", "smoke", "-n", namespace, check=True)

    # RBAC is really enforced: the chart's Role grants configmaps, and nothing else.
    account = f"system:serviceaccount:{namespace}:smoke"
    allowed = controlplane.kubectl(
        "auth", "can-i", "list", "configmaps", "-n", namespace, f"--as={account}"
    )
    denied = controlplane.kubectl(
        "auth", "can-i", "list", "secrets", "-n", namespace, f"--as={account}"
    )
    assert allowed.stdout.strip() == "yes"
    assert denied.stdout.strip() == "no"


# --- (d) a mutating admission webhook on 127.0.0.1 -------------------------------------------


MUTATION_ANNOTATION = "harness.jwtkeymap.io/mutated"


def _pod(name: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
        }
    )


async def test_mutating_webhook_is_called_for_pods(
    controlplane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    reviews: list[dict[str, object]] = []

    async def mutate(request: web.Request) -> web.Response:
        review = await request.json()
        reviews.append(review["request"])
        patch = [
            {"op": "add", "path": "/metadata/annotations", "value": {MUTATION_ANNOTATION: "true"}}
        ]
        return web.json_response(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {
                    "uid": review["request"]["uid"],
                    "allowed": True,
                    "patchType": "JSONPatch",
                    "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
                },
            }
        )

    tls = issue_tls(tmp_path, "webhook")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    app = web.Application()
    app.router.add_post("/mutate", mutate)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]

    config_name = f"harness-{uuid.uuid4().hex[:8]}"
    webhook = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": config_name},
        "webhooks": [
            {
                "name": "pods.harness.jwtkeymap.io",
                "clientConfig": {
                    "url": f"https://127.0.0.1:{port}/mutate",
                    "caBundle": tls.ca_bundle_b64,
                },
                "rules": [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                    }
                ],
                # Only this test's namespace, so no other test's Pods depend on this server.
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10,
            }
        ],
    }
    kubectl = controlplane.akubectl
    try:
        await kubectl("apply", "-f", "-", input=json.dumps(webhook), check=True)

        # The apiserver picks up new webhook configurations asynchronously; probe with dry runs.
        async def dry_run_is_mutated() -> bool:
            got = await kubectl(
                "create", "--dry-run=server", "-n", namespace, "-o", "json", "-f", "-",
                input=_pod("probe"),
            )  # fmt: skip
            if got.returncode != 0:
                return False
            return MUTATION_ANNOTATION in json.loads(got.stdout)["metadata"].get("annotations", {})

        await apoll(dry_run_is_mutated, message="the apiserver to call the webhook")
        await kubectl("create", "-n", namespace, "-f", "-", input=_pod("mutated"), check=True)
        stored = await kubectl("get", "pod", "mutated", "-n", namespace, "-o", "json", check=True)
    finally:
        await kubectl("delete", "mutatingwebhookconfiguration", config_name, "--ignore-not-found")
        await runner.cleanup()

    pod = json.loads(stored.stdout)
    assert pod["metadata"]["annotations"][MUTATION_ANNOTATION] == "true"
    assert pod["status"]["phase"] == "Pending"  # no scheduler or kubelet here
    real = [r for r in reviews if not r.get("dryRun")]
    assert [(r["namespace"], r["name"], r["operation"]) for r in real] == [
        (namespace, "mutated", "CREATE")
    ]


# --- the harness itself -----------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def test_up_and_down_leave_nothing_behind(binaries: Binaries, tmp_path: Path) -> None:
    state = tmp_path / "state"
    script = Path(__file__).parent / "harness.py"
    up = subprocess.run(
        [sys.executable, str(script), "up", "--dir", str(state)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert up.returncode == 0, up.stderr
    assert f"export KUBECONFIG={state / 'kubeconfig'}" in up.stdout
    pids = json.loads((state / "state.json").read_text())["pids"]
    assert all(_alive(pid) for pid in pids.values())

    version = subprocess.run(
        [str(binaries.kubectl), "version", "-o", "json"],
        capture_output=True,
        text=True,
        env={**os.environ, "KUBECONFIG": str(state / "kubeconfig")},
        timeout=60,
    )
    assert version.returncode == 0, version.stderr
    assert json.loads(version.stdout)["serverVersion"]["gitVersion"].startswith("v1.")

    down = subprocess.run(
        [sys.executable, str(script), "down", "--dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 0, down.stderr
    poll(
        lambda: not any(_alive(pid) for pid in pids.values()),
        timeout=15,
        message="processes to exit",
    )
    assert not state.exists()


# --- service-account tokens --------------------------------------------------------------------


def test_service_account_token_verifies_against_the_issuer_jwks(
    controlplane: ControlPlane, namespace: str
) -> None:
    controlplane.kubectl("create", "serviceaccount", "robot", "-n", namespace, check=True)
    token = controlplane.kubectl(
        "create", "token", "robot", "-n", namespace, "--audience=jwtkeymap-test", check=True
    ).stdout.strip()
    discovery = json.loads(
        controlplane.kubectl("get", "--raw", "/.well-known/openid-configuration", check=True).stdout
    )
    jwks = json.loads(controlplane.kubectl("get", "--raw", "/openid/v1/jwks", check=True).stdout)

    key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token)["kid"]]
    claims = jwt.decode(
        token, key.key, algorithms=["RS256"], audience="jwtkeymap-test", issuer=controlplane.server
    )
    assert discovery["issuer"] == controlplane.server
    assert claims["sub"] == f"system:serviceaccount:{namespace}:robot"
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, key.key, algorithms=["RS256"], audience="someone-else")
