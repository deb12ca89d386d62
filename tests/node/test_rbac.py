"""RBAC for real: the operator pods run under the chart's ServiceAccount, get what the chart's
ClusterRole grants and nothing more, and never hit a `forbidden` while doing their work.

conftest.py runs this file after the other tests of the tier (and before the upgrade and
uninstall), so the log check covers their work too.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from harness import ControlPlane
from installtools import fullname, operator_pods, pod_logs

# Run inside an operator pod: the API as the pod's own credentials see it. Prints one JSON object.
IN_POD = r"""
import json, ssl, sys, urllib.error, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
token = open(f"{sa}/token").read().strip()
tls = ssl.create_default_context(cafile=f"{sa}/ca.crt")
api = "https://kubernetes.default.svc"

def call(method, path, body=None):
    req = urllib.request.Request(api + path, method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=tls, timeout=10) as rsp:
            return rsp.status, json.load(rsp)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)

ns = sys.argv[1]
secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "rbac-probe"}}
review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
out = {
    "whoami": call("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", review),
    "read secrets": call("GET", f"/api/v1/namespaces/{ns}/secrets")[0],
    "create secret": call("POST", f"/api/v1/namespaces/{ns}/secrets", secret)[0],
    "delete secret": call("DELETE", f"/api/v1/namespaces/{ns}/secrets/jwtkeymap-database")[0],
    "read configmaps": call("GET", f"/api/v1/namespaces/{ns}/configmaps")[0],
    "list pods": call("GET", "/api/v1/pods")[0],
    "list webhooks": call("GET", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations")[0],
}
print(json.dumps(out))
"""


def service_account(release: Any) -> str:
    """The chart's ServiceAccount as a user name."""
    return f"system:serviceaccount:{release.namespace}:{fullname(release.name)}"


def test_operator_pods_run_as_the_charts_service_account(kube: ControlPlane, release: Any) -> None:
    pods = operator_pods(kube, release.name, release.namespace)
    assert pods
    for pod in pods:
        assert pod["spec"]["serviceAccountName"] == fullname(release.name)
        # The token the pod got is the ServiceAccount's projected token.
        volumes = [v for v in pod["spec"]["volumes"] if v["name"].startswith("kube-api-access")]
        assert volumes, pod["spec"]["volumes"]


@pytest.mark.parametrize(
    ("request_", "granted"),
    [
        ("watch jwtkeymappings.jwtkeymap.io --all-namespaces", "yes"),
        ("patch jwtkeymappings.jwtkeymap.io --subresource=status -n default", "yes"),
        ("list jwtkeymappingpolicies.jwtkeymap.io", "yes"),
        ("patch clusterkopfpeerings.kopf.dev", "yes"),
        ("create events -n default", "yes"),
        # Keys are read from each mapping's own namespace: Secrets are readable cluster-wide,
        # and patchable only to add the watch label (the chart's ValidatingAdmissionPolicy
        # refuses any other change); never created, updated or deleted.
        ("get secrets -n kube-system", "yes"),
        ("patch secrets -n default", "yes"),
        ("create secrets -n default", "no"),
        ("delete secrets -n jwtkeymap-system", "no"),
        ("update secrets -n default", "no"),
        ("get configmaps -n default", "no"),
        ("list pods --all-namespaces", "no"),
        ("create pods -n default", "no"),
        ("delete jwtkeymappings.jwtkeymap.io -n default", "no"),
        ("patch jwtkeymappingpolicies.jwtkeymap.io", "no"),
        ("create mutatingwebhookconfigurations", "no"),
        ("create clusterrolebindings", "no"),
    ],
)
def test_service_account_gets_what_the_chart_grants_and_nothing_more(
    kube: ControlPlane, release: Any, request_: str, granted: str
) -> None:
    answer = kube.kubectl("auth", "can-i", *request_.split(), f"--as={service_account(release)}")
    assert answer.stdout.strip() == granted, answer.stderr


def test_operator_pod_credentials_are_limited_for_real(
    kube: ControlPlane, release: Any, workload_namespace: str
) -> None:
    [pod, *_] = operator_pods(kube, release.name, release.namespace)
    done = kube.kubectl(
        "exec", "-n", release.namespace, pod["metadata"]["name"], "-c", "operator", "--",
        "python", "-c", IN_POD, workload_namespace, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    status, review = seen.pop("whoami")
    assert status == 201, review
    assert review["status"]["userInfo"]["username"] == service_account(release)
    assert seen == {
        "read secrets": 200,
        "create secret": 403,
        "delete secret": 403,
        "read configmaps": 403,
        "list pods": 403,
        "list webhooks": 403,
    }
    # The refused delete really did nothing.
    kept = kube.kubectl("get", "secret", "jwtkeymap-database", "-n", workload_namespace)
    assert kept.returncode == 0, kept.stderr


def refused_by_lifecycle(line: str) -> bool:
    """A 403 from the NamespaceLifecycle admission plugin (an Event posted into a namespace
    being deleted, as the tests delete theirs), not from RBAC: the reason says which."""
    return "NamespaceTerminating" in line


def test_operator_logs_have_no_forbidden(kube: ControlPlane, release: Any) -> None:
    pods = operator_pods(kube, release.name, release.namespace)
    assert pods
    lines = [
        f"{pod['metadata']['name']}: {line}"
        for pod in pods
        for line in pod_logs(kube, release.namespace, pod["metadata"]["name"]).splitlines()
        if "forbidden" in line.lower() and not refused_by_lifecycle(line)
    ]
    assert not lines, "the operator was refused by the API:\n" + "\n".join(lines[:40])
