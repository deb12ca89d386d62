"""The Helm chart, rendered offline: lint, Kubernetes schemas, and the choices it encodes."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from charttools import CHART, CI_VALUES, Render, find, kinds
from cryptography import x509
from harness import REPO_ROOT, Binaries

from jwtkeymap.operator import webhooks
from jwtkeymap.operator.resource import FINALIZER, GROUP, PLURAL
from jwtkeymap.operator.sidecar import webhook
from jwtkeymap.operator.sidecar.defaults import InjectionDefaults, load_defaults
from jwtkeymap.operator.sidecar.plan import INJECT_LABEL, METRICS_PORT_NAME

pytestmark = pytest.mark.controlplane

Helm = Callable[..., subprocess.CompletedProcess[str]]
NS = "jwtkeymap-system"
# Kinds of other projects' CRDs: kubernetes-validate has no schema for them.
FOREIGN_KINDS = {"Certificate", "Issuer", "ServiceMonitor", "PodMonitor", "ClusterKopfPeering"}


def schema_version(binaries: Binaries) -> str:
    """The control plane's minor version, as kubernetes-validate names its schemas."""
    major, minor = binaries.k8s_version.lstrip("v").split(".")[:2]
    return f"{major}.{minor}.0"


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_lint_is_clean(run_helm: Helm, values: object) -> None:
    done = run_helm("lint", "--strict", str(CHART), "-f", str(values))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_rendered_objects_match_the_kubernetes_schemas(
    render: Render, binaries: Binaries, values: object
) -> None:
    docs = render(values)
    version = schema_version(binaries)
    checked = 0
    for doc in docs:
        if doc["kind"] in FOREIGN_KINDS:
            continue
        kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 7  # the Deployment, RBAC, Services, webhooks… were all checked


def test_a_broken_object_would_be_caught(binaries: Binaries, render: Render) -> None:
    # The schema check above is only worth something if it fails on a real mistake.
    deployment = find(render(), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPortt"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, schema_version(binaries), strict=True)


def test_default_objects(render: Render) -> None:
    docs = render()
    assert kinds(docs) == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Secret",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "CustomResourceDefinition",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "ClusterKopfPeering",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "MutatingAdmissionPolicy",
        "MutatingAdmissionPolicyBinding",
    }
    assert find(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_the_pod_monitor_scrapes_every_injected_sidecars_metrics_port(render: Render) -> None:
    docs = render(sets={"injection.podMonitor.enabled": "true"})
    monitor = find(docs, "PodMonitor")
    assert monitor["spec"]["selector"] == {"matchLabels": {INJECT_LABEL: "true"}}
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == (METRICS_PORT_NAME, "/metrics")
    assert "PodMonitor" not in kinds(render())  # opt-in


# --- values.schema.json is strict --------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"operator.replica": "2"}, "additional properties 'replica' not allowed"),
        ({"injection.resolver.nativeSidecars": "true"}, "'nativeSidecars' not allowed"),
        ({"webhook.failurePolicy": "Sometimes"}, "failurePolicy"),
        ({"injection.resolver.settings.database_url": "postgresql://u:p@db/x"}, "settings"),
        ({"database.existingSecret": ""}, "existingSecret"),
        ({"operator.replicas": "2", "peering.enabled": "false"}, "needs peering.enabled=true"),
        (
            {"metrics.enabled": "false", "metrics.serviceMonitor.enabled": "true"},
            "needs metrics.enabled",
        ),
        (
            {"injection.podMonitor.enabled": "true", "injection.resolver.metricsPort": "null"},
            "needs injection.resolver.metricsPort",
        ),
        # Prometheus' durations, as the Prometheus Operator's CRDs check them.
        ({"injection.podMonitor.interval": "30 seconds"}, "interval"),
        ({"metrics.serviceMonitor.scrapeTimeout": "10sec"}, "scrapeTimeout"),
    ],
)
def test_invalid_values_are_refused(run_helm: Helm, sets: dict[str, str], message: str) -> None:
    args = [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]
    done = run_helm("template", "r", str(CHART), *args)
    assert done.returncode != 0
    assert message in done.stderr


# --- the CRD -----------------------------------------------------------------------------------


# That the chart's CRD files are copies of crds/ is checked without a control plane:
# tests/unit/packaging/test_chart_crds.py.


@pytest.mark.parametrize(
    "crd", ["jwtkeymappings.jwtkeymap.io", "jwtkeymappingpolicies.jwtkeymap.io"]
)
def test_rendered_crd_is_the_repository_crd_plus_labels(render: Render, crd: str) -> None:
    source = yaml.safe_load((REPO_ROOT / "crds" / f"{crd}.yaml").read_text())
    rendered = find(render(), "CustomResourceDefinition", crd)
    assert rendered["spec"] == source["spec"]
    assert rendered["metadata"]["name"] == source["metadata"]["name"]
    assert source["metadata"]["labels"].items() <= rendered["metadata"]["labels"].items()
    assert rendered["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert rendered["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_crd_flags(render: Render) -> None:
    unkept = find(
        render(sets={"crds.keep": "false"}),
        "CustomResourceDefinition",
        "jwtkeymappings.jwtkeymap.io",
    )
    assert "helm.sh/resource-policy" not in unkept["metadata"].get("annotations", {})
    assert "CustomResourceDefinition" not in kinds(render(sets={"crds.enabled": "false"}))


# --- webhooks ----------------------------------------------------------------------------------


def test_injector_webhook_is_opt_in_and_fails_closed(render: Render) -> None:
    docs = render(sets={"injection.excludeNamespaces": "{monitoring}"})
    hook = find(docs, "MutatingWebhookConfiguration")["webhooks"][0]
    assert hook["clientConfig"]["service"] == {
        "name": "r-jwtkeymap-webhook",
        "namespace": NS,
        "path": f"/{webhook.HANDLER_ID}",
        "port": 443,
    }
    assert hook["objectSelector"] == {"matchLabels": {INJECT_LABEL: "true"}}
    excluded = hook["namespaceSelector"]["matchExpressions"][0]
    assert excluded["key"] == "kubernetes.io/metadata.name"
    assert excluded["operator"] == "NotIn"
    assert excluded["values"] == ["kube-system", "kube-public", NS, "monitoring"]
    assert hook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert (hook["failurePolicy"], hook["sideEffects"], hook["timeoutSeconds"]) == (
        "Fail",
        "None",
        10,
    )
    service = find(docs, "Service", "r-jwtkeymap-webhook")
    assert service["spec"]["ports"][0]["targetPort"] == "webhook"


def test_validating_webhook_routes_to_the_operators_handler(render: Render) -> None:
    hook = find(render(), "ValidatingWebhookConfiguration")["webhooks"][0]
    assert hook["clientConfig"]["service"]["path"] == f"/{webhooks.HANDLER_ID}"
    assert hook["rules"][0]["resources"] == ["jwtkeymappings"]
    assert hook["rules"][0]["operations"] == ["CREATE", "UPDATE"]


def test_generated_certificate_serves_the_service_name_and_is_trusted_by_both_webhooks(
    render: Render,
) -> None:
    docs = render()
    secret = find(docs, "Secret")
    assert secret["type"] == "kubernetes.io/tls"
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"r-jwtkeymap-webhook.{NS}.svc" in names.get_values_for_type(x509.DNSName)
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        assert (
            find(docs, kind)["webhooks"][0]["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
        )
    deployment = find(docs, "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == secret["metadata"]["name"]


def test_cert_manager_injects_the_ca(render: Render) -> None:
    docs = render(sets={"webhook.tls.source": "certManager"})
    assert "Secret" not in kinds(docs)
    certificate = find(docs, "Certificate", "r-jwtkeymap-webhook")
    assert certificate["spec"]["secretName"] == "r-jwtkeymap-webhook-tls"
    assert certificate["spec"]["issuerRef"]["name"] == "r-jwtkeymap-webhook-ca"
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        config = find(docs, kind)
        assert config["metadata"]["annotations"] == {
            "cert-manager.io/inject-ca-from": f"{NS}/r-jwtkeymap-webhook"
        }
        assert "caBundle" not in config["webhooks"][0]["clientConfig"]


def test_development_url_replaces_the_service(render: Render) -> None:
    docs = render(
        sets={"webhook.url": "https://127.0.0.1:9443/", "webhook.tls.helm.extraSANs": "{127.0.0.1}"}
    )
    client = find(docs, "MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"]
    assert client["url"] == "https://127.0.0.1:9443/inject-pod"
    assert "service" not in client
    cert = x509.load_pem_x509_certificate(base64.b64decode(find(docs, "Secret")["data"]["tls.crt"]))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


# --- the operator ------------------------------------------------------------------------------


def test_operator_is_hardened(render: Render) -> None:
    pod = find(render(), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    env = {e["name"]: e for e in container["env"]}
    assert env["JWTKEYMAP_DATABASE_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "jwtkeymap-database", "key": "url"}
    }
    assert all("value" not in e or "postgres" not in e["value"] for e in container["env"])


def test_operator_command_line(render: Render) -> None:
    args = find(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("operator") :] == [
        "operator",
        "--all-namespaces",
        "--peering=r-jwtkeymap",
        "--liveness=http://0.0.0.0:8081/healthz",
        "--webhook-port=9443",
        "--webhook-cert=/etc/jwtkeymap/tls/tls.crt",
        "--webhook-key=/etc/jwtkeymap/tls/tls.key",
    ]
    single = render(sets={"operator.replicas": "1", "peering.enabled": "false"})
    assert (
        "--standalone"
        in find(single, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    assert "PodDisruptionBudget" not in kinds(single)
    assert "ClusterKopfPeering" not in kinds(single)


def test_rbac_is_least_privilege(render: Render) -> None:
    rules = find(render(), "ClusterRole")["rules"]
    granted = {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    assert all("*" not in item for item in granted)
    resources = {r for _, r, _ in granted}
    assert "pods" not in resources
    assert "mutatingwebhookconfigurations" not in resources
    assert ("", "secrets", "get") in granted
    # patch: the operator labels the Secrets mappings reference (its watch selects them).
    assert ("", "secrets", "patch") in granted
    assert not {("", "secrets", v) for v in ("create", "update", "delete")} & granted
    assert ("jwtkeymap.io", "jwtkeymappings/status", "patch") in granted
    assert ("kopf.dev", "clusterkopfpeerings", "patch") in granted
    # Policies and namespaces are read for tenancy, never written.
    assert ("jwtkeymap.io", "jwtkeymappingpolicies", "watch") in granted
    assert ("", "namespaces", "watch") in granted
    assert not {("jwtkeymap.io", "jwtkeymappingpolicies", v) for v in ("create", "patch")} & granted


def test_secret_label_policy_binds_the_operator_only(
    render: Render, run_helm: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    policy = find(render(), "ValidatingAdmissionPolicy")
    [condition] = policy["spec"]["matchConditions"]
    assert '"system:serviceaccount:jwtkeymap-system:r-jwtkeymap"' in condition["expression"]
    assert policy["spec"]["matchConstraints"]["resourceRules"][0]["resources"] == ["secrets"]
    binding = find(render(), "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }
    # Off on request, and on a 1.29 cluster (no v1 ValidatingAdmissionPolicy there).
    assert "ValidatingAdmissionPolicy" not in kinds(
        render(sets={"rbac.secretLabelPolicy": "false"})
    )
    old = run_helm("template", "r", str(CHART), "--kube-version", "1.29.4")
    assert old.returncode == 0, old.stderr
    assert "ValidatingAdmissionPolicy" not in kinds(
        [d for d in yaml.safe_load_all(old.stdout) if d]
    )


def test_finalizer_policy_puts_the_operators_finalizer_on_creation_only(
    render: Render, run_helm: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    policy = find(render(), "MutatingAdmissionPolicy")
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Ignore"  # the operator adds it otherwise
    [rule] = spec["matchConstraints"]["resourceRules"]
    assert (rule["apiGroups"], rule["resources"], rule["operations"]) == (
        [GROUP], [PLURAL], ["CREATE"]
    )  # fmt: skip
    [mutation] = spec["mutations"]
    assert mutation["jsonPatch"]["expression"].count(f'"{FINALIZER}"') == 2
    assert f'"{FINALIZER}"' in spec["matchConditions"][0]["expression"]
    binding = find(render(), "MutatingAdmissionPolicyBinding")
    assert binding["spec"] == {"policyName": policy["metadata"]["name"]}
    # Off on request, and before 1.36 (no v1 MutatingAdmissionPolicy there).
    assert "MutatingAdmissionPolicy" not in kinds(render(sets={"finalizerPolicy.enabled": "false"}))
    old = run_helm("template", "r", str(CHART), "--kube-version", "1.35.2")
    assert old.returncode == 0, old.stderr
    assert "MutatingAdmissionPolicy" not in kinds([d for d in yaml.safe_load_all(old.stdout) if d])


def test_a_null_database_or_metrics_port_reaches_the_injector_as_none(
    render: Render, tmp_path: Path
) -> None:
    # Helm removes a key its user sets to null; the chart must still say "none".
    values = tmp_path / "values.yaml"
    values.write_text("injection:\n  resolver:\n    database: null\n    metricsPort: null\n")
    data = find(render(values), "ConfigMap")["data"]
    defaults = InjectionDefaults.model_validate(yaml.safe_load(data["injection.yaml"]))
    assert (defaults.database, defaults.metrics_port) == (None, None)
    data = find(render(), "ConfigMap")["data"]
    defaults = InjectionDefaults.model_validate(yaml.safe_load(data["injection.yaml"]))
    assert defaults.database is not None and defaults.metrics_port == 8182


def test_injection_defaults_in_the_configmap_load_into_the_injector(render: Render) -> None:
    docs = render(CHART / "ci" / "cert-manager-values.yaml", sets={"image.tag": "9.9.9"})
    data = find(docs, "ConfigMap")["data"]
    defaults = InjectionDefaults.model_validate(yaml.safe_load(data["injection.yaml"]))
    assert defaults.image == "ghcr.io/jwtkeymap/jwtkeymap:9.9.9"  # the operator's image
    assert defaults.native_sidecar is False
    assert defaults.settings["issuers"][0]["issuer"] == "https://idp.example.com"
    assert yaml.safe_load(data["config.yaml"]) == {
        "allowed_claim_names": ["email", "sub"],
        "drift_interval_seconds": 120,
    }
    deployment = find(docs, "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env[webhook.CONFIG_ENV] == "/etc/jwtkeymap/operator/injection.yaml"


def test_values_schema_is_strict_everywhere() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    loose: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        if (
            node.get("type") == "object"
            and "properties" in node
            and node.get("additionalProperties") is not False
        ):
            loose.append(path or "(root)")
        for key, child in node.get("properties", {}).items():
            walk(child, f"{path}.{key}")
        for child in node.get("oneOf", []):
            walk(child, path)

    walk(schema, "")
    assert loose == []
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(defaults) == set(schema["properties"])


def test_notes_say_how_to_label_a_workload_and_check_mappings(run_helm: Helm) -> None:
    def notes(*args: str) -> str:
        done = run_helm("install", "r", str(CHART), "-n", NS, "--dry-run=client", *args)
        assert done.returncode == 0, done.stderr
        return done.stdout.split("NOTES:", 1)[1]

    text = notes()
    assert "kubectl get jkm -A" in text
    assert '"jwtkeymap.io/inject":"true"' in text
    assert "no trusted issuers" in text
    configured = notes(
        "-f",
        str(CHART / "ci" / "cert-manager-values.yaml"),
        "--set",
        "injection.failurePolicy=Fail",
    )
    assert "no trusted issuers" not in configured
    assert "WARNING: one operator replica with failurePolicy Fail" in configured


INJECTING = [
    p
    for p in CI_VALUES
    if (yaml.safe_load(p.read_text()) or {}).get("injection", {}).get("enabled", True)
]


@pytest.mark.parametrize("values", INJECTING, ids=lambda p: p.name)
def test_offline_inject_with_the_values_file_matches_the_chart(render: Render, values: Any) -> None:
    # `jwtkeymap inject --defaults my-values.yaml` must inject what the installed chart would:
    # the chart's defaults and the model's defaults have to agree.
    docs = render(values)
    chart = InjectionDefaults.model_validate(
        yaml.safe_load(find(docs, "ConfigMap")["data"]["injection.yaml"])
    )
    assert load_defaults(str(values)) == chart


def test_deployment_arguments_parse_with_the_real_command_line(render: Render) -> None:
    # Guards against the chart and `jwtkeymap operator` drifting apart (renamed flags).
    import click

    from jwtkeymap.cli.context import Context
    from jwtkeymap.cli.main import cli

    args = find(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    split = args.index("operator")
    with cli.make_context("jwtkeymap", args[: split + 1]) as root:
        command = cli.get_command(root, "operator")
        assert isinstance(command, click.Command)
        parsed = command.make_context("operator", args[split + 1 :], parent=root)
    context = parsed.find_object(Context)  # what the command reads, wherever --config was
    assert context is not None and context.config == "/etc/jwtkeymap/operator/config.yaml"
    assert parsed.params["webhook_port"] == 9443
    assert parsed.params["peering_name"] == "r-jwtkeymap"
    assert parsed.params["all_namespaces"] is True


def test_chart_app_version_is_the_package_version() -> None:
    from jwtkeymap import __version__

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__
