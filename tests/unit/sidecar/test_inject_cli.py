"""`jwtkeymap inject`: the webhook's mutation rendered offline for manifests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from jwtkeymap.cli import cli

MANIFESTS = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web, jwtkeymap.io/inject: "true"}
    spec:
      containers:
        - name: app
          image: web:1
          ports: [{containerPort: 4000}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: jwtkeymap}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: cache}
spec:
  selector: {matchLabels: {app: cache}}
  serviceName: cache
  template:
    metadata: {labels: {app: cache}}
    spec:
      containers: [{name: cache, image: cache:1, ports: [{containerPort: 6379}]}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: report}
spec:
  schedule: "@daily"
  jobTemplate:
    spec:
      template:
        metadata:
          labels: {jwtkeymap.io/inject: "true"}
          annotations: {jwtkeymap.io/mode: ext-authz}
        spec:
          restartPolicy: Never
          containers: [{name: job, image: job:1}]
"""


def run(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["inject", *args], input=input)
    return result.exit_code, result.stdout, result.stderr


def names(template: dict) -> list[str]:
    spec = template["spec"]
    return [c["name"] for c in spec.get("initContainers", []) + spec["containers"]]


def test_labelled_workloads_are_injected_and_others_pass_through() -> None:
    code, out, err = run("-f", "-", input=MANIFESTS)
    assert code == 0, err
    deployment, service, statefulset, cronjob = yaml.safe_load_all(out)
    assert names(deployment["spec"]["template"]) == ["jwtkeymap-resolver", "app"]
    resolver = deployment["spec"]["template"]["spec"]["initContainers"][0]
    assert resolver["args"][-2:] == ["--upstream", "http://127.0.0.1:4000"]
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {
        "jwtkeymap.io/status": "injected"
    }
    assert service == yaml.safe_load(MANIFESTS.split("---")[1])
    assert names(statefulset["spec"]["template"]) == ["cache"]
    job_template = cronjob["spec"]["jobTemplate"]["spec"]["template"]
    assert names(job_template) == ["jwtkeymap-resolver", "job"]
    assert "--upstream" not in job_template["spec"]["initContainers"][0]["args"]
    assert err.splitlines() == [
        "deployment/web: injected",
        "statefulset/cache: skipped (not_labelled)",
        "cronjob/report: injected",
    ]


def test_output_is_stable_when_injected_twice() -> None:
    _, once, _ = run("-f", "-", input=MANIFESTS)
    code, twice, err = run("-f", "-", input=once)
    assert code == 0
    assert twice == once
    assert "deployment/web: skipped (already_injected)" in err


def test_all_injects_unlabelled_workloads_and_labels_them() -> None:
    code, out, _ = run("--all", "-f", "-", input=MANIFESTS)
    assert code == 0
    statefulset = list(yaml.safe_load_all(out))[2]
    template = statefulset["spec"]["template"]
    assert template["metadata"]["labels"]["jwtkeymap.io/inject"] == "true"
    assert names(template) == ["jwtkeymap-resolver", "cache"]


def test_defaults_file_and_image(tmp_path: Path) -> None:
    defaults = tmp_path / "resolver.yaml"
    defaults.write_text(
        "nativeSidecar: false\nlistenPort: 9000\ndatabase: {secretName: db, key: dsn}\n"
    )
    code, out, err = run(
        "--defaults", str(defaults), "--image", "reg/jkm:9", "-f", "-", input=MANIFESTS
    )
    assert code == 0, err
    template = next(yaml.safe_load_all(out))["spec"]["template"]
    assert names(template) == ["app", "jwtkeymap-resolver"]
    resolver = template["spec"]["containers"][1]
    assert resolver["image"] == "reg/jkm:9"
    assert resolver["ports"][0]["containerPort"] == 9000
    assert resolver["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "db", "key": "dsn"}


def test_invalid_annotation_fails_naming_document_and_annotation(tmp_path: Path) -> None:
    bad = MANIFESTS.replace(
        'labels: {app: web, jwtkeymap.io/inject: "true"}',
        'labels: {app: web, jwtkeymap.io/inject: "true"}\n      annotations: {jwtkeymap.io/mode: sidecar}',
    )
    path = tmp_path / "web.yaml"
    path.write_text(bad)
    code, out, err = run("-f", str(path))
    assert code == 1
    assert out == ""
    assert (
        f"{path} document 0: Deployment/web: jwtkeymap.io/mode: must be one of proxy, ext-authz"
        in err
    )


def test_bad_defaults_are_reported(tmp_path: Path) -> None:
    defaults = tmp_path / "resolver.yaml"
    defaults.write_text("listenPort: 0\n")
    code, _, err = run("--defaults", str(defaults), "-f", "-", input=MANIFESTS)
    assert code == 1
    assert "listenPort: Input should be greater than or equal to 1" in err


def test_injected_manifests_match_the_kubernetes_schemas() -> None:
    import kubernetes_validate

    code, out, err = run("--all", "-f", "-", input=MANIFESTS)
    assert code == 0, err
    docs = list(yaml.safe_load_all(out))
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    broken = docs[0]
    broken["spec"]["template"]["spec"]["initContainers"][0]["restartPolicy"] = 7
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_defaults_from_the_charts_values_file(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        "image: {repository: reg.example/jkm, tag: '2.0'}\n"
        "operator: {replicas: 3}\n"
        "injection:\n  resolver:\n    listenPort: 9100\n    settings: {claim_field: email}\n"
    )
    code, out, err = run("--defaults", str(values), "-f", "-", input=MANIFESTS)
    assert code == 0, err
    resolver = next(yaml.safe_load_all(out))["spec"]["template"]["spec"]["initContainers"][0]
    assert resolver["image"] == "reg.example/jkm:2.0"  # the operator's image, as the chart does
    assert resolver["ports"][0]["containerPort"] == 9100
    assert {"name": "JWTKEYMAP_CLAIM_FIELD", "value": "email"} in resolver["env"]
