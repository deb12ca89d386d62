"""`helm upgrade` with changed values, then `helm uninstall` with `crds.keep` true and false.

Runs LAST in the tier (conftest.py moves this file to the end): it changes the session's
release and finally removes it, so no test may use ``release`` after it. The tests of this file
run in order and build on each other.

What Helm itself never removes is not an orphan of the release: the kopf peering CRDs in the
chart's ``crds/`` folder, and the database Secret the user created before installing.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from harness import REPO_ROOT, ControlPlane, poll
from installtools import (
    LABELLED,
    declare_mapping,
    fullname,
    get,
    is_ready,
    mapping_rows,
    operator_pods,
    wait_synced,
)

CHART = REPO_ROOT / "charts" / "jwtkeymap"
CRDS = ("jwtkeymappings.jwtkeymap.io", "jwtkeymappingpolicies.jwtkeymap.io")
MAPPINGS_NS = "upgrade-mappings"


def helm_to(kube: ControlPlane, release: Any, verb: str, values: dict[str, Any], tmp: Path) -> None:
    """`helm install|upgrade` of the release with ``values``, waiting for it to be ready."""
    path = tmp / f"{verb}-values.json"
    path.write_text(json.dumps(values))
    done = kube.helm(
        verb, release.name, str(CHART), "-n", release.namespace, "-f", str(path),
        "--wait", "--timeout", "5m", timeout=330,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def uninstall(kube: ControlPlane, release: Any) -> None:
    """`helm uninstall --wait`."""
    done = kube.helm(
        "uninstall", release.name, "-n", release.namespace, "--wait", "--timeout", "3m",
        timeout=200,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def labelled_objects(kube: ControlPlane, release: Any) -> list[str]:
    """Every object, namespaced or cluster-scoped, carrying the release's instance label."""
    kinds = kube.kubectl("api-resources", "--verbs=list", "-o", "name", check=True).stdout.split()
    found = kube.kubectl(
        "get", ",".join(kinds), "-A", "-l", f"app.kubernetes.io/instance={release.name}",
        "-o", "json", timeout=120,
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    return sorted(
        f"{o['kind']}/{o['metadata'].get('namespace', '')}/{o['metadata']['name']}"
        for o in json.loads(found.stdout)["items"]
    )


def named_leftovers(kube: ControlPlane, release: Any) -> list[str]:
    """The release's objects looked up by name and namespace, whatever their labels."""
    name, ns = fullname(release.name), release.namespace
    wanted = [
        ("deployment", name, ns), ("configmap", name, ns), ("secret", f"{name}-webhook-tls", ns),
        ("service", f"{name}-webhook", ns), ("service", f"{name}-metrics", ns),
        ("serviceaccount", name, ns), ("pdb", name, ns),
        ("clusterrole", name, None), ("clusterrolebinding", name, None),
        ("mutatingwebhookconfiguration", f"{name}-injector", None),
        ("validatingwebhookconfiguration", f"{name}-validator", None),
        ("clusterkopfpeering", name, None),
    ]  # fmt: skip
    left = []
    for kind, obj, where in wanted:
        found = kube.kubectl("get", kind, obj, *(["-n", where] if where else []))
        if found.returncode == 0:
            left.append(f"{kind}/{obj}")
    pods = kube.kubectl("get", "pods", "-n", ns, "-o", "name").stdout.split()
    leases = kube.kubectl("get", "leases", "-n", ns, "-o", "name").stdout.split()
    history = kube.kubectl(
        "get", "secrets", "-n", ns, "-l", f"owner=helm,name={release.name}", "-o", "name"
    ).stdout.split()
    return left + pods + leases + history


OPERATOR_LABELS = "app.kubernetes.io/component=operator"


def test_upgrade_rolls_out_new_replicas_and_resolver_settings(
    kube: ControlPlane, release: Any, node_cluster: Any, node_postgres: Any,
    workload_namespace: str, tmp_path: Path,
) -> None:  # fmt: skip
    kube.kubectl("create", "namespace", MAPPINGS_NS, check=True)
    value, _ = declare_mapping(kube, MAPPINGS_NS, "carol", node_postgres.url)
    wait_synced(kube, MAPPINGS_NS, "carol")
    before = {p["metadata"]["name"] for p in operator_pods(kube, release.name, release.namespace)}

    values = copy.deepcopy(release.values)
    values["operator"]["replicas"] = 1
    settings = values["injection"]["resolver"]["settings"]
    assert settings["unregistered_client_behavior"] != "fallback_team_mapping"
    settings["unregistered_client_behavior"] = "fallback_team_mapping"
    helm_to(kube, release, "upgrade", values, tmp_path)

    name, ns = fullname(release.name), release.namespace
    deployment = get(kube, "deployment", name, "-n", ns)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["status"].get("updatedReplicas") == 1, deployment["status"]
    assert deployment["status"].get("readyReplicas") == 1, deployment["status"]
    [pod] = poll(
        lambda: (pods := operator_pods(kube, release.name, ns)) and len(pods) == 1 and pods,
        timeout=120,
        message="the old operator pods to go",
    )
    assert pod["metadata"]["name"] not in before  # the changed ConfigMap rolled the pods
    assert is_ready(pod)
    # The PodDisruptionBudget exists only with more than one replica.
    assert "NotFound" in kube.kubectl("get", "pdb", name, "-n", ns).stderr

    config = get(kube, "configmap", name, "-n", ns)
    injection = yaml.safe_load(config["data"]["injection.yaml"])
    assert injection["settings"]["unregistered_client_behavior"] == "fallback_team_mapping"

    # A pod created now gets the new settings, and its resolver starts with them.
    app = {
        "name": "app",
        "image": node_cluster.images.pause.ref,
        "ports": [{"containerPort": 8080}],
    }
    pod_manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "after-upgrade", "namespace": workload_namespace, "labels": LABELLED},
        "spec": {"containers": [app]},
    }

    # The old replicas keep serving admissions while they stop (the chart's preStop delay),
    # with the old settings: wait until they are gone, not only terminating.
    poll(
        lambda: len(get(kube, "pods", "-n", ns, "-l", OPERATOR_LABELS)["items"]) == 1,
        timeout=120,
        message="the old operator pods gone (not only terminating)",
    )

    def created() -> bool:
        done = kube.kubectl("create", "-f", "-", input=json.dumps(pod_manifest))
        if done.returncode == 0:
            return True
        # Right after the rollout kube-proxy may still route the webhook Service to the old
        # pods (or to none): with failurePolicy Fail the pod is refused, never created bare.
        assert "failed calling webhook" in done.stderr, done.stderr
        return False

    poll(created, timeout=60, message="the webhook Service routed to the new operator pod")
    stored = get(kube, "pod", "after-upgrade", "-n", workload_namespace)
    [sidecar] = stored["spec"]["initContainers"]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["JWTKEYMAP_UNREGISTERED_CLIENT_BEHAVIOR"] == "fallback_team_mapping"
    poll(
        lambda: is_ready(get(kube, "pod", "after-upgrade", "-n", workload_namespace)),
        timeout=120,
        message="the injected pod to be Ready",
    )

    # The mapping made before the upgrade is still served.
    wait_synced(kube, MAPPINGS_NS, "carol")
    assert len(mapping_rows(node_postgres.url, value)) == 1


def test_uninstall_with_crds_kept_orphans_nothing_and_keeps_the_mappings(
    kube: ControlPlane, release: Any, node_postgres: Any
) -> None:
    assert release.values.get("crds", {}).get("keep", True) is True  # the chart's default
    uninstall(kube, release)

    expected = sorted(f"CustomResourceDefinition//{crd}" for crd in CRDS)
    poll(
        lambda: labelled_objects(kube, release) == expected,
        timeout=120,
        message="only the kept CRDs to carry the release's label",
    )
    assert named_leftovers(kube, release) == []
    # The CRDs stayed, so did the mappings, and the rows they manage.
    assert get(kube, "jwtkeymapping", "carol", "-n", MAPPINGS_NS)["spec"]["claim"]["value"]
    assert len(mapping_rows(node_postgres.url, f"carol@{MAPPINGS_NS}.example.com")) == 1


def test_reinstall_with_crds_not_kept_then_uninstall_removes_them(
    kube: ControlPlane, release: Any, node_postgres: Any, tmp_path: Path
) -> None:
    values = {**copy.deepcopy(release.values), "crds": {"enabled": True, "keep": False}}
    helm_to(kube, release, "install", values, tmp_path)
    deployment = get(kube, "deployment", fullname(release.name), "-n", release.namespace)
    replicas = release.values["operator"]["replicas"]
    assert deployment["status"].get("readyReplicas") == replicas, deployment["status"]

    # Mappings go first, while the operator runs to release their finalizers: the one that
    # outlived the first release is served again, its row removed before the resource goes.
    deleted = kube.kubectl(
        "delete", "jwtkeymappings", "--all", "-A", "--wait", "--timeout=90s", timeout=100
    )
    assert deleted.returncode == 0, deleted.stderr
    assert mapping_rows(node_postgres.url, f"carol@{MAPPINGS_NS}.example.com") == []
    uninstall(kube, release)

    poll(
        lambda: labelled_objects(kube, release) == [],
        timeout=120,
        message="no object to carry the release's label",
    )
    assert named_leftovers(kube, release) == []
    for crd in CRDS:
        assert "NotFound" in kube.kubectl("get", "crd", crd).stderr, crd
