"""Helpers shared by the chart tests."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness import REPO_ROOT, ControlPlane

CHART = REPO_ROOT / "charts" / "jwtkeymap"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))

Render = Callable[..., list[dict[str, Any]]]


def set_args(sets: dict[str, str] | None, values: Sequence[Path]) -> list[str]:
    """helm arguments for values files and --set pairs."""
    args: list[str] = []
    for path in values:
        args += ["-f", str(path)]
    for key, value in (sets or {}).items():
        args += ["--set", f"{key}={value}"]
    return args


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (and ``name``)."""
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{len(found)} {kind} objects named {name}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> set[str]:
    """The kinds rendered."""
    return {d["kind"] for d in docs}


# --- installing into the control plane --------------------------------------------------------

CRD = "jwtkeymappings.jwtkeymap.io"
LABELLED = {"jwtkeymap.io/inject": "true"}


def crd_is_foreign(plane: ControlPlane) -> bool:
    """Whether the CRD exists but was applied without Helm (Helm refuses to adopt it)."""
    got = plane.kubectl("get", "crd", CRD, "-o", "json")
    if got.returncode != 0:
        return False
    labels = json.loads(got.stdout)["metadata"].get("labels", {})
    return labels.get("app.kubernetes.io/managed-by") != "Helm"


def helm_install(plane: ControlPlane, release: str, namespace: str, port: int, *sets: str) -> None:
    """Install the chart with its webhooks pointing at https://127.0.0.1:``port``."""
    args = ["--set", f"webhook.url=https://127.0.0.1:{port}"]
    args += ["--set", "webhook.tls.helm.extraSANs={127.0.0.1}"]
    args += ["--set", f"crds.enabled={'false' if crd_is_foreign(plane) else 'true'}"]
    for item in sets:
        args += ["--set-json" if item.startswith("json:") else "--set", item.removeprefix("json:")]
    done = plane.helm("install", release, str(CHART), "-n", namespace, *args)
    assert done.returncode == 0, done.stderr


def get(plane: ControlPlane, *args: str) -> dict[str, Any]:
    """`kubectl get … -o json`."""
    return json.loads(plane.kubectl("get", *args, "-o", "json", check=True).stdout)


def create(plane: ControlPlane, namespace: str, obj: dict[str, Any]) -> Any:
    """`kubectl create` of an object given as a dict (result not checked)."""
    return plane.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(obj))


def release_files(plane: ControlPlane, release: str, namespace: str, directory: Path) -> Path:
    """Write the release's webhook certificate and ConfigMap files into ``directory``."""
    secret = get(plane, "secret", f"{release}-jwtkeymap-webhook-tls", "-n", namespace)
    for key in ("tls.crt", "tls.key"):
        (directory / key).write_bytes(base64.b64decode(secret["data"][key]))
    config = get(plane, "configmap", f"{release}-jwtkeymap", "-n", namespace)
    for key, text in config["data"].items():
        (directory / key).write_text(text)
    return directory


def pod(name: str, *, labels: dict[str, str] | None = None, **meta: Any) -> dict[str, Any]:
    """A Pod with one container declaring port 8080."""
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
