"""The operator's admission webhooks under hostile requests, sent straight to its server.

The apiserver only ever sends well-formed AdmissionReviews, but the webhook port is
reachable inside the cluster by anyone: malformed bodies, reviews without a request,
invalid annotations and huge Pod specs must each get a clean refusal (a 4xx, or an
AdmissionReview that denies), never a 5xx, and the server must keep serving.
"""

from __future__ import annotations

import json
import ssl
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from harness import ControlPlane, poll

from jwtkeymap.demo.ports import free_port, port_open
from support.pki import issue_tls
from support.servers import OperatorProcess

pytestmark = [pytest.mark.controlplane, pytest.mark.slow]


class Webhooks:
    def __init__(self, proc: OperatorProcess, port: int) -> None:
        self.proc = proc
        self.base = f"https://127.0.0.1:{port}"

    async def post(self, path: str, body: bytes | str) -> tuple[int, Any]:
        data = body.encode() if isinstance(body, str) else body
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                self.base + path,
                data=data,
                headers={"Content-Type": "application/json"},
                ssl=context,
                timeout=aiohttp.ClientTimeout(total=60),
            ) as resp,
        ):
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text


@pytest.fixture(scope="module")
def webhooks(
    controlplane: ControlPlane, jkm_crd: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Webhooks]:
    """A `jwtkeymap operator` process serving both webhooks over TLS (no configuration
    registered with the apiserver: the tests are the only callers)."""
    tmp = tmp_path_factory.mktemp("webhooks")
    tls = issue_tls(tmp, "jkm-hostile")
    defaults = tmp / "injection.yaml"
    defaults.write_text("{}\n")
    namespace = f"hostile-{uuid.uuid4().hex[:6]}"
    controlplane.kubectl("create", "namespace", namespace, check=True)
    port = free_port()
    env = {**controlplane.client_env(), "JWTKEYMAP_INJECTION_CONFIG": str(defaults)}
    proc = OperatorProcess(
        [namespace],
        {"database_url": "postgresql://postgres@127.0.0.1:1/none", "db_timeout_seconds": 1},
        env=env,
        args=("--webhook-port", str(port), "--webhook-addr", "127.0.0.1",
              "--webhook-cert", str(tls.cert_file), "--webhook-key", str(tls.key_file)),
    )  # fmt: skip
    proc.start()
    try:
        poll(lambda: port_open(port), timeout=60, message="the webhook server")
        yield Webhooks(proc, port)
        assert proc.proc is not None and proc.proc.poll() is None, proc.output()
        assert "Traceback" not in proc.full_output(), proc.full_output()[-4000:]
    finally:
        proc.stop()


def review(obj: Any, *, kind: str = "Pod", operation: str = "CREATE", **request: Any) -> str:
    group, version = ("", "v1") if kind == "Pod" else ("jwtkeymap.io", "v1alpha1")
    resource = "pods" if kind == "Pod" else "jwtkeymappings"
    body = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": resource},
        "namespace": "default",
        "operation": operation,
        "userInfo": {"username": "tester"},
        "object": obj,
        "dryRun": False,
        **request,
    }
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                       "request": body})  # fmt: skip


def pod(**annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default",
                     "labels": {"jwtkeymap.io/inject": "true"}, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "pause",
                                 "ports": [{"containerPort": 8080}]}]},
    }  # fmt: skip


def denied(status: int, body: Any) -> bool:
    """A clean refusal: a 4xx, or an AdmissionReview response that does not allow."""
    if 400 <= status < 500:
        return True
    return status == 200 and isinstance(body, dict) and body["response"]["allowed"] is False


MALFORMED: dict[str, bytes | str] = {
    "not json": b"{{{ not json",
    "not utf-8": b"\xff\xfe\x00garbage",
    "empty": b"",
    "json array": "[1, 2, 3]",
    "json string": '"AdmissionReview"',
    "no request": json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
    "request not object": json.dumps({"kind": "AdmissionReview", "request": [1]}),
    "request without object": json.dumps({"kind": "AdmissionReview", "request": {"uid": "u"}}),
    "object not object": review("a pod"),
    "object without metadata": review({"kind": "Pod", "spec": {}}),
    "spec not object": review({"kind": "Pod", "metadata": {"name": "p"}, "spec": [1]}),
    "containers not list": review(
        {
            "kind": "Pod",
            "metadata": {"name": "p", "labels": {"jwtkeymap.io/inject": "true"}},
            "spec": {"containers": "app"},
        }
    ),
}


@pytest.mark.parametrize("path", ["/inject-pod", "/validate-mapping"])
async def test_malformed_reviews_are_refused_cleanly(webhooks: Webhooks, path: str) -> None:
    for name, body in MALFORMED.items():
        status, answer = await webhooks.post(path, body)
        assert status < 500, (name, status, answer)
        if status == 200:
            # Answered as a review: either refused, or nothing to change for a non-pod.
            assert isinstance(answer, dict) and "response" in answer, (name, answer)
            assert answer["response"].get("status", {}).get("code", 400) < 500, (name, answer)


async def test_invalid_annotations_are_denied_naming_them(webhooks: Webhooks) -> None:
    for key, value in (
        ("jwtkeymap.io/upstream-port", "http"),
        ("jwtkeymap.io/upstream-port", "99999"),
        ("jwtkeymap.io/mode", "sideways"),
        ("jwtkeymap.io/listen-port", "-1"),
    ):
        status, answer = await webhooks.post("/inject-pod", review(pod(**{key: value})))
        assert denied(status, answer), (key, value, status, answer)
        if status == 200:
            assert key in answer["response"]["status"]["message"], answer


async def test_huge_pod_spec_is_answered_without_a_crash(webhooks: Webhooks) -> None:
    big = pod()
    big["spec"]["containers"] = [
        {"name": f"c{i}", "image": "pause", "env": [{"name": "X", "value": "v" * 1000}] * 20}
        for i in range(150)
    ]  # about 3 MB, the apiserver's own request limit
    big["metadata"]["annotations"] = {f"example.com/a{i}": "x" * 1000 for i in range(200)}
    started = time.monotonic()
    status, answer = await webhooks.post("/inject-pod", review(big))
    assert status < 500, (status, str(answer)[:500])
    assert time.monotonic() - started < 30
    # Still serving a normal review afterwards.
    status, answer = await webhooks.post("/inject-pod", review(pod()))
    assert status == 200 and answer["response"]["allowed"] is True, answer
    assert answer["response"].get("patch"), "a labelled pod is injected"


async def test_hostile_mapping_specs_are_denied(webhooks: Webhooks) -> None:
    for spec in (
        {"claim": {"name": "email", "value": "a"}, "key": {"hash": "x"}},
        {"claim": "email", "key": {}},
        {"claim": {"name": "", "value": ""}, "key": {"hash": "a" * 64}},
        {"claim": {"name": "email", "value": "a" * 100000}, "key": {"hash": "a" * 64}},
        [],
    ):
        obj = {"apiVersion": "jwtkeymap.io/v1alpha1", "kind": "JWTKeyMapping",
               "metadata": {"name": "m", "namespace": "default", "uid": "u"}, "spec": spec}  # fmt: skip
        status, answer = await webhooks.post("/validate-mapping", review(obj, kind="JWTKeyMapping"))
        assert denied(status, answer), (spec, status, answer)
