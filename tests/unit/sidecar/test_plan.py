"""The pod mutation for sidecar injection: a pure function of a pod and the chart's defaults."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from pydantic import ValidationError

from jwtkeymap.core.settings import Settings
from jwtkeymap.operator.sidecar.defaults import InjectionDefaults
from jwtkeymap.operator.sidecar.plan import (
    ASSERTION_ANNOTATION,
    BEHAVIOR_ANNOTATION,
    CLAIM_FIELD_ANNOTATION,
    CONFIG_ANNOTATION,
    CONTAINER_NAME,
    INJECT_LABEL,
    LISTEN_PORT_ANNOTATION,
    METRICS_PORT_ANNOTATION,
    MODE_ANNOTATION,
    PROXY_ENGINE_ANNOTATION,
    STATUS_ANNOTATION,
    UPSTREAM_PORT_ANNOTATION,
    InjectionError,
    Mutation,
    apply,
    apply_in_place,
    plan,
)

DEFAULTS = InjectionDefaults(
    image="registry.example/jwtkeymap:1.2.3",
    settings={
        "issuers": [{"issuer": "https://idp.example", "jwks_url": "https://idp.example/jwks"}],
        "casefold_claim": True,
    },
)


def pod(
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    ports: tuple[int, ...] = (8080,),
    **spec: Any,
) -> dict[str, Any]:
    """A pod labelled for injection unless ``labels`` says otherwise."""
    meta: dict[str, Any] = {
        "name": "web",
        "labels": {INJECT_LABEL: "true"} if labels is None else labels,
    }
    if annotations is not None:
        meta["annotations"] = annotations
    container = {"name": "app", "image": "app:1", "ports": [{"containerPort": p} for p in ports]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [container], **spec},
    }


def injected(p: dict[str, Any], defaults: InjectionDefaults = DEFAULTS) -> dict[str, Any]:
    mutation = plan(p, defaults)
    assert mutation.injected, mutation
    return apply(p, mutation)


def sidecar(p: dict[str, Any]) -> dict[str, Any]:
    found = [
        c
        for c in p["spec"].get("initContainers", []) + p["spec"]["containers"]
        if c["name"] == CONTAINER_NAME
    ]
    assert len(found) == 1
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# --- what gets injected ---------------------------------------------------------------------


def test_native_sidecar_is_the_first_init_container_and_proxies_to_the_only_port() -> None:
    original = pod(initContainers=[{"name": "migrate", "image": "migrate:1"}])
    snapshot = copy.deepcopy(original)
    out = injected(original)

    assert original == snapshot  # pure: the input is never modified
    assert [c["name"] for c in out["spec"]["initContainers"]] == [CONTAINER_NAME, "migrate"]
    assert [c["name"] for c in out["spec"]["containers"]] == ["app"]
    container = out["spec"]["initContainers"][0]
    assert container["restartPolicy"] == "Always"
    assert container["image"] == "registry.example/jwtkeymap:1.2.3"
    assert container["args"] == [
        "resolver",
        "--listen",
        "0.0.0.0:8181",
        "--metrics-listen",
        "0.0.0.0:8182",
        "--upstream",
        "http://127.0.0.1:8080",
    ]
    assert container["ports"] == [
        {"name": "jwtkeymap", "containerPort": 8181, "protocol": "TCP"},
        {"name": "jwtkeymap-prom", "containerPort": 8182, "protocol": "TCP"},
    ]
    assert out["metadata"]["annotations"] == {STATUS_ANNOTATION: "injected"}


def test_port_names_are_valid_service_names() -> None:
    # The apiserver refuses a pod whose port name is not an IANA service name (at most
    # 15 characters: lower-case letters, digits and inner single hyphens, a letter in it).
    for port in sidecar(injected(pod()))["ports"]:
        name = port["name"]
        assert len(name) <= 15 and re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name), name
        assert re.search("[a-z]", name), name


def test_the_metrics_port_moves_with_its_annotation_or_is_left_out() -> None:
    moved = sidecar(injected(pod(annotations={METRICS_PORT_ANNOTATION: "9102"})))
    assert "0.0.0.0:9102" in moved["args"]
    assert moved["ports"][1] == {
        "name": "jwtkeymap-prom",
        "containerPort": 9102,
        "protocol": "TCP",
    }
    none = InjectionDefaults(image="registry.example/jwtkeymap:1.2.3", metrics_port=None)
    bare = sidecar(injected(pod(), none))
    assert "--metrics-listen" not in bare["args"]
    assert [p["name"] for p in bare["ports"]] == ["jwtkeymap"]


def test_sidecar_is_hardened_and_probed() -> None:
    container = sidecar(injected(pod()))
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "jwtkeymap"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "jwtkeymap"}
    assert container["resources"]["requests"] == {"cpu": "50m", "memory": "64Mi"}
    assert {"name": "jwtkeymap-tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_tmp_volume_is_added_next_to_existing_volumes() -> None:
    out = injected(pod(volumes=[{"name": "data", "emptyDir": {}}]))
    assert [v["name"] for v in out["spec"]["volumes"]] == ["data", "jwtkeymap-tmp"]
    assert "emptyDir" in out["spec"]["volumes"][1]


def test_database_url_comes_from_a_secret_and_settings_become_variables() -> None:
    env = env_of(sidecar(injected(pod())))
    assert env["JWTKEYMAP_DATABASE_URL"] == {
        "secretKeyRef": {"name": "jwtkeymap-database", "key": "url"}
    }
    assert env["JWTKEYMAP_CASEFOLD_CLAIM"] == "true"
    assert (
        env["JWTKEYMAP_ISSUERS"]
        == '[{"issuer":"https://idp.example","jwks_url":"https://idp.example/jwks"}]'
    )


def test_rendered_variables_load_into_the_resolver_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The variables are only useful if core.settings reads them back into the same values.
    defaults = DEFAULTS.model_copy(update={"database": None})
    annotations = {BEHAVIOR_ANNOTATION: "reject", CLAIM_FIELD_ANNOTATION: "email"}
    for name, value in env_of(sidecar(injected(pod(annotations=annotations), defaults))).items():
        monkeypatch.setenv(name, value)
    loaded = Settings()
    assert loaded.casefold_claim is True
    assert loaded.issuers[0].jwks_url == "https://idp.example/jwks"
    assert loaded.unregistered_client_behavior == "reject"
    assert loaded.claim_field == "email"


def test_assertion_annotation_turns_on_signing_with_an_ephemeral_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = DEFAULTS.model_copy(
        update={"database": None, "settings": {"assertion": {"audience": "gateway"}}}
    )
    assert "JWTKEYMAP_ASSERTION__ENABLED" not in env_of(sidecar(injected(pod(), defaults)))
    off = pod(annotations={ASSERTION_ANNOTATION: "false"})
    assert "JWTKEYMAP_ASSERTION__ENABLED" not in env_of(sidecar(injected(off, defaults)))
    on = env_of(sidecar(injected(pod(annotations={ASSERTION_ANNOTATION: "true"}), defaults)))
    assert on["JWTKEYMAP_ASSERTION__ENABLED"] == "true"
    for name, value in on.items():
        monkeypatch.setenv(name, value)
    loaded = Settings()
    # On, merged with the chart's other assertion settings; no key file: an ephemeral key.
    assert loaded.assertion.enabled is True
    assert loaded.assertion.audience == "gateway"
    assert loaded.assertion.signing_key_file is None


def test_proxy_engine_annotation_sets_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = DEFAULTS.model_copy(update={"database": None})
    assert "JWTKEYMAP_PROXY_ENGINE" not in env_of(sidecar(injected(pod(), defaults)))
    mutation = plan(pod(annotations={PROXY_ENGINE_ANNOTATION: "nginx"}), defaults)
    assert mutation.message.endswith("proxying to 127.0.0.1:8080 through nginx")
    env = env_of(sidecar(apply(pod(annotations={PROXY_ENGINE_ANNOTATION: "nginx"}), mutation)))
    assert env["JWTKEYMAP_PROXY_ENGINE"] == "nginx"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    loaded = Settings(upstream="http://127.0.0.1:8080")
    assert loaded.proxy_engine == "nginx"


def test_the_charts_proxy_engine_applies_to_proxy_mode_pods_only() -> None:
    defaults = InjectionDefaults.model_validate({"proxyEngine": "nginx", "database": None})
    assert env_of(sidecar(injected(pod(), defaults)))["JWTKEYMAP_PROXY_ENGINE"] == "nginx"
    ext_authz = injected(pod(annotations={MODE_ANNOTATION: "ext-authz"}), defaults)
    assert "JWTKEYMAP_PROXY_ENGINE" not in env_of(sidecar(ext_authz))
    # A pod's annotation overrides the chart's choice.
    own = injected(pod(annotations={PROXY_ENGINE_ANNOTATION: "resolver"}), defaults)
    assert "JWTKEYMAP_PROXY_ENGINE" not in env_of(sidecar(own))


def test_classic_sidecar_is_appended_after_the_app() -> None:
    out = injected(pod(), DEFAULTS.model_copy(update={"native_sidecar": False}))
    assert [c["name"] for c in out["spec"]["containers"]] == ["app", CONTAINER_NAME]
    assert "restartPolicy" not in out["spec"]["containers"][1]
    assert "initContainers" not in out["spec"]


def test_ext_authz_mode_has_no_upstream() -> None:
    out = injected(pod(annotations={MODE_ANNOTATION: "ext-authz"}, ports=(80, 443)))
    assert sidecar(out)["args"] == [
        "resolver",
        "--listen",
        "0.0.0.0:8181",
        "--metrics-listen",
        "0.0.0.0:8182",
    ]
    assert STATUS_ANNOTATION in out["metadata"]["annotations"]


def test_annotations_choose_ports_and_policy() -> None:
    out = injected(
        pod(
            annotations={
                UPSTREAM_PORT_ANNOTATION: "4000",
                LISTEN_PORT_ANNOTATION: "9000",
                BEHAVIOR_ANNOTATION: "auto_register",
                CLAIM_FIELD_ANNOTATION: "user.email",
                "unrelated": "kept",
            },
            ports=(4000, 9090),
        )
    )
    container = sidecar(out)
    assert container["args"][-5:] == [
        "0.0.0.0:9000",
        "--metrics-listen",
        "0.0.0.0:8182",
        "--upstream",
        "http://127.0.0.1:4000",
    ]
    env = env_of(container)
    assert env["JWTKEYMAP_UNREGISTERED_CLIENT_BEHAVIOR"] == "auto_register"
    assert env["JWTKEYMAP_CLAIM_FIELD"] == "user.email"
    assert out["metadata"]["annotations"]["unrelated"] == "kept"


def test_config_map_replaces_the_chart_settings() -> None:
    container = sidecar(out := injected(pod(annotations={CONFIG_ANNOTATION: "team-a-resolver"})))
    assert container["args"][:3] == ["--config", "/etc/jwtkeymap/config.yaml", "resolver"]
    assert {
        "name": "jwtkeymap-config",
        "mountPath": "/etc/jwtkeymap",
        "readOnly": True,
    } in container["volumeMounts"]
    config_volume = next(v for v in out["spec"]["volumes"] if v["name"] == "jwtkeymap-config")
    assert config_volume["configMap"]["name"] == "team-a-resolver"
    # Variables would beat the file, so only the database (a Secret) is passed as one.
    assert set(env_of(container)) == {"JWTKEYMAP_DATABASE_URL"}


# --- skipped, never twice -------------------------------------------------------------------


@pytest.mark.parametrize("labels", [{}, {INJECT_LABEL: "false"}, {"app": "web"}])
def test_unlabelled_pods_are_skipped(labels: dict[str, str]) -> None:
    mutation = plan(pod(labels=labels), DEFAULTS)
    assert mutation == Mutation(injected=False, reason="not_labelled", message=mutation.message)
    assert mutation.patch == ()


def test_injecting_an_injected_pod_changes_nothing() -> None:
    once = injected(pod())
    again = plan(once, DEFAULTS)
    assert not again.injected
    assert again.reason == "already_injected"


def test_existing_resolver_container_is_not_duplicated() -> None:
    p = pod()
    p["spec"]["containers"].append({"name": CONTAINER_NAME, "image": "mine"})
    mutation = plan(p, DEFAULTS)
    assert (mutation.injected, mutation.reason) == (False, "container_exists")


# --- invalid settings are refused, naming the annotation ------------------------------------


@pytest.mark.parametrize(
    ("annotations", "ports", "field", "fragment"),
    [
        ({MODE_ANNOTATION: "sidecar"}, (8080,), MODE_ANNOTATION, "proxy, ext-authz"),
        ({UPSTREAM_PORT_ANNOTATION: "http"}, (8080,), UPSTREAM_PORT_ANNOTATION, "port number"),
        ({UPSTREAM_PORT_ANNOTATION: "70000"}, (8080,), UPSTREAM_PORT_ANNOTATION, "65535"),
        ({}, (80, 443), UPSTREAM_PORT_ANNOTATION, "declares: 80, 443"),
        ({}, (), UPSTREAM_PORT_ANNOTATION, "declares: none"),
        (
            {MODE_ANNOTATION: "ext-authz", UPSTREAM_PORT_ANNOTATION: "80"},
            (80,),
            UPSTREAM_PORT_ANNOTATION,
            "only applies",
        ),
        ({LISTEN_PORT_ANNOTATION: "0"}, (8080,), LISTEN_PORT_ANNOTATION, "port number"),
        ({LISTEN_PORT_ANNOTATION: "8080"}, (8080,), LISTEN_PORT_ANNOTATION, "already used"),
        ({UPSTREAM_PORT_ANNOTATION: "8181"}, (8080,), UPSTREAM_PORT_ANNOTATION, "must differ"),
        ({BEHAVIOR_ANNOTATION: "allow"}, (8080,), BEHAVIOR_ANNOTATION, "fallback_team_mapping"),
        ({CLAIM_FIELD_ANNOTATION: "a..b"}, (8080,), CLAIM_FIELD_ANNOTATION, "empty segment"),
        ({CONFIG_ANNOTATION: "Not_A_Name"}, (8080,), CONFIG_ANNOTATION, "ConfigMap"),
        ({ASSERTION_ANNOTATION: "yes"}, (8080,), ASSERTION_ANNOTATION, '"true" or "false"'),
        ({PROXY_ENGINE_ANNOTATION: "envoy"}, (8080,), PROXY_ENGINE_ANNOTATION, "resolver, nginx"),
        (
            {MODE_ANNOTATION: "ext-authz", PROXY_ENGINE_ANNOTATION: "nginx"},
            (8080,),
            PROXY_ENGINE_ANNOTATION,
            "only applies",
        ),
        ({METRICS_PORT_ANNOTATION: "x"}, (8080,), METRICS_PORT_ANNOTATION, "port number"),
        ({METRICS_PORT_ANNOTATION: "8181"}, (8080,), METRICS_PORT_ANNOTATION, "listen port"),
        ({METRICS_PORT_ANNOTATION: "8080"}, (8080,), METRICS_PORT_ANNOTATION, "upstream port"),
        (
            {METRICS_PORT_ANNOTATION: "9090", UPSTREAM_PORT_ANNOTATION: "8080"},
            (8080, 9090),
            METRICS_PORT_ANNOTATION,
            "a container",
        ),
        (
            {UPSTREAM_PORT_ANNOTATION: "8080"},
            (8080, 8182),
            METRICS_PORT_ANNOTATION,
            "port 8182 is used by a container",
        ),
    ],
)
def test_invalid_annotations_are_errors_naming_them(
    annotations: dict[str, str], ports: tuple[int, ...], field: str, fragment: str
) -> None:
    with pytest.raises(InjectionError) as caught:
        plan(pod(annotations=annotations, ports=ports), DEFAULTS)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert fragment in str(caught.value)


@pytest.mark.parametrize("value", ["yes", "True", ""])
def test_a_label_that_is_neither_true_nor_false_is_an_error(value: str) -> None:
    # The webhook's objectSelector matches "true" exactly; anything else would silently differ.
    with pytest.raises(InjectionError, match=f"^{INJECT_LABEL}: must be"):
        plan(pod(labels={INJECT_LABEL: value}), DEFAULTS)


def test_listen_port_must_not_collide_with_another_sidecar() -> None:
    other = {
        "name": "mesh",
        "image": "mesh:1",
        "restartPolicy": "Always",
        "ports": [{"containerPort": 8181}],
    }
    with pytest.raises(
        InjectionError, match=f"^{LISTEN_PORT_ANNOTATION}: port 8181 is already used"
    ):
        plan(pod(initContainers=[other]), DEFAULTS)


def test_host_network_pods_are_refused() -> None:
    with pytest.raises(InjectionError, match="hostNetwork"):
        plan(pod(hostNetwork=True), DEFAULTS)


# --- the chart's defaults -------------------------------------------------------------------


def test_defaults_take_the_charts_camel_case_values() -> None:
    loaded = InjectionDefaults.model_validate(
        {
            "image": "img:1",
            "nativeSidecar": False,
            "listenPort": 9999,
            "database": {"secretName": "db", "key": "dsn"},
            "extraEnv": [{"name": "X", "value": "1"}],
        }
    )
    assert (loaded.native_sidecar, loaded.listen_port, loaded.database) == (
        False,
        9999,
        loaded.database.__class__(secret_name="db", key="dsn"),
    )


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"imagePullPolicy": "Sometimes"}, "imagePullPolicy"),
        ({"settings": {"claim_feild": "x"}}, "claim_feild"),
        ({"settings": {"database_url": "postgresql://u:p@h/db"}}, "resolver.database"),
        ({"settings": {"metrics_listen": "0.0.0.0:1"}}, "set by the injection"),
        ({"settings": {"proxy_engine": "nginx"}}, "resolver.proxyEngine"),
        ({"proxyEngine": "envoy"}, "proxyEngine"),
        ({"metricsPort": 0}, "metricsPort"),
        ({"typo": 1}, "typo"),
    ],
)
def test_bad_defaults_are_rejected(values: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        InjectionDefaults.model_validate(values)


def test_apply_in_place_keeps_the_object_and_matches_apply() -> None:
    # The webhook (kopf's live body) and `jwtkeymap inject` (a template inside a document)
    # both mutate the object they hold.
    target = pod(annotations={"team": "shop"})
    mutation = plan(target, DEFAULTS)
    expected = apply(target, mutation)
    document = {"spec": {"template": target}}
    apply_in_place(target, mutation)
    assert document["spec"]["template"] is target
    assert target == expected
    assert target["metadata"]["annotations"] == {"team": "shop", STATUS_ANNOTATION: "injected"}


@pytest.mark.parametrize(
    "annotations", [{}, {CONFIG_ANNOTATION: "own"}, {MODE_ANNOTATION: "ext-authz"}]
)
def test_sidecar_arguments_parse_with_the_real_command_line(annotations: dict[str, str]) -> None:
    # Guards against the injected args and `jwtkeymap resolver` drifting apart.
    import click

    from jwtkeymap.cli.context import Context
    from jwtkeymap.cli.main import cli

    args = sidecar(injected(pod(annotations=annotations)))["args"]
    split = args.index("resolver")
    with cli.make_context("jwtkeymap", args[: split + 1]) as root:
        command = cli.get_command(root, "resolver")
        assert isinstance(command, click.Command)
        parsed = command.make_context("resolver", args[split + 1 :], parent=root)
    assert parsed.params["listen"] == "0.0.0.0:8181"
    assert parsed.params["metrics_listen"] == "0.0.0.0:8182"
    assert parsed.params["upstream"] == (
        None if annotations.get(MODE_ANNOTATION) else "http://127.0.0.1:8080"
    )
    context = parsed.find_object(Context)  # what the command reads, wherever --config was
    assert context is not None
    assert context.config == (
        "/etc/jwtkeymap/config.yaml" if CONFIG_ANNOTATION in annotations else None
    )
