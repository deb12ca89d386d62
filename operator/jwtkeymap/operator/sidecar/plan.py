"""The sidecar plan: what injecting the resolver adds to one pod.

A pure function of a Pod (or a pod template) and the chart's defaults; no I/O.
The admission webhook and ``jwtkeymap inject`` both call :func:`plan` and apply
the result with :func:`apply_in_place`, so what a reviewer sees offline is
exactly what the cluster would do.

Opt-in is a pod *label* (so the MutatingWebhookConfiguration's objectSelector
filters on the server side and unlabelled pods never reach the webhook); per-pod
settings are annotations. An invalid annotation is an error naming it, never a
silent skip: a workload that asked for an auth sidecar and did not get one would
be served unauthenticated.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import json
import re
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, Final

import jsonpatch

from jwtkeymap.core.claims import split_path
from jwtkeymap.core.errors import JwtKeyMapError
from jwtkeymap.core.settings import PROXY_ENGINES, Behavior
from jwtkeymap.operator.names import DNS_SUBDOMAIN_RE
from jwtkeymap.operator.sidecar.defaults import InjectionDefaults, Mode

PREFIX: Final = "jwtkeymap.io"
INJECT_LABEL: Final = f"{PREFIX}/inject"
STATUS_ANNOTATION: Final = f"{PREFIX}/status"
MODE_ANNOTATION: Final = f"{PREFIX}/mode"
UPSTREAM_PORT_ANNOTATION: Final = f"{PREFIX}/upstream-port"
LISTEN_PORT_ANNOTATION: Final = f"{PREFIX}/listen-port"
METRICS_PORT_ANNOTATION: Final = f"{PREFIX}/metrics-port"
BEHAVIOR_ANNOTATION: Final = f"{PREFIX}/behavior"
CLAIM_FIELD_ANNOTATION: Final = f"{PREFIX}/claim-field"
CONFIG_ANNOTATION: Final = f"{PREFIX}/config"
# "true": the sidecar signs an identity assertion for the workload it fronts (LiteLLM with
# the jwtkeymap hook), with an ephemeral key that never leaves the pod.
ASSERTION_ANNOTATION: Final = f"{PREFIX}/assertion"
# "nginx": in proxy mode, nginx (in the sidecar's image) carries the bytes and asks the
# resolver's check for each request; "resolver" (the default): the resolver carries them.
PROXY_ENGINE_ANNOTATION: Final = f"{PREFIX}/proxy-engine"
INJECTED: Final = "injected"

CONTAINER_NAME: Final = "jwtkeymap-resolver"
PORT_NAME: Final = "jwtkeymap"
METRICS_PORT_NAME: Final = "jwtkeymap-prom"
TMP_VOLUME: Final = "jwtkeymap-tmp"
CONFIG_VOLUME: Final = "jwtkeymap-config"
CONFIG_DIR: Final = "/etc/jwtkeymap"
CONFIG_KEY: Final = "config.yaml"
# The sidecar's writable scratch space (its root filesystem is read-only).
TMP_DIR: Final = "/tmp"  # noqa: S108 (a mount path in the container)

_PORT: Final = re.compile(r"[1-9][0-9]{0,4}")


class SkipReason(enum.StrEnum):
    """Why a pod that reached the injector was left as it is."""

    NOT_LABELLED = "not_labelled"
    ALREADY_INJECTED = "already_injected"
    CONTAINER_EXISTS = "container_exists"


class InjectionError(JwtKeyMapError):
    """A pod asks for injection with an unusable setting; ``field`` names the annotation/label."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.detail = message


@dataclasses.dataclass(frozen=True)
class PodOptions:
    """One pod's injection settings: the defaults overridden by its annotations."""

    mode: Mode
    listen_port: int
    upstream_port: int | None
    metrics_port: int | None
    behavior: Behavior | None
    claim_field: str | None
    config_map: str | None
    assertion: bool = False
    proxy_engine: str | None = None


@dataclasses.dataclass(frozen=True)
class Mutation:
    """The outcome for one pod: a JSON patch (RFC 6902) when injected, a reason either way."""

    injected: bool
    reason: str  # "injected" or a SkipReason value
    message: str
    patch: tuple[Mapping[str, Any], ...] = ()


def _escape(key: str) -> str:
    """Escape a map key for a JSON pointer (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def _app_containers(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list(spec.get("containers") or [])


def _all_containers(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [*(spec.get("initContainers") or []), *_app_containers(spec)]


def _port(annotations: Mapping[str, str], name: str) -> int | None:
    raw = annotations.get(name)
    if raw is None:
        return None
    text = str(raw).strip()
    if not _PORT.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise InjectionError(name, f"must be a port number between 1 and 65535, got {raw!r}")
    return int(text)


def _declared_ports(spec: Mapping[str, Any], *, sidecars: bool = False) -> list[int]:
    ports: list[int] = []
    containers = _all_containers(spec) if sidecars else _app_containers(spec)
    for container in containers:
        for port in container.get("ports") or []:
            if str(port.get("protocol", "TCP")).upper() == "TCP" and "containerPort" in port:
                ports.append(int(port["containerPort"]))
    return sorted(set(ports))


def read_options(pod: Mapping[str, Any], defaults: InjectionDefaults) -> PodOptions:
    """Read and validate the pod's annotations; raise InjectionError naming a bad one."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    annotations: Mapping[str, str] = meta.get("annotations") or {}

    raw_mode = annotations.get(MODE_ANNOTATION)
    try:
        mode = Mode(str(raw_mode).strip()) if raw_mode is not None else defaults.mode
    except ValueError:
        choices = ", ".join(m.value for m in Mode)
        raise InjectionError(
            MODE_ANNOTATION, f"must be one of {choices}, got {raw_mode!r}"
        ) from None

    listen_port = _port(annotations, LISTEN_PORT_ANNOTATION) or defaults.listen_port
    declared = _declared_ports(spec)
    # Init containers too: a restartable one (another sidecar) shares the pod's network.
    if listen_port in _declared_ports(spec, sidecars=True):
        raise InjectionError(
            LISTEN_PORT_ANNOTATION,
            f"port {listen_port} is already used by a container of the pod; choose another",
        )

    upstream_port = _port(annotations, UPSTREAM_PORT_ANNOTATION)
    if mode is Mode.EXT_AUTHZ and upstream_port is not None:
        raise InjectionError(
            UPSTREAM_PORT_ANNOTATION,
            f"only applies to {MODE_ANNOTATION}=proxy (ext-authz mode has no upstream)",
        )
    if mode is Mode.PROXY and upstream_port is None:
        if len(declared) != 1:
            found = ", ".join(map(str, declared)) or "none"
            raise InjectionError(
                UPSTREAM_PORT_ANNOTATION,
                "required in proxy mode unless the pod declares exactly one TCP container "
                f"port (it declares: {found})",
            )
        upstream_port = declared[0]
    if upstream_port is not None and upstream_port == listen_port:
        raise InjectionError(
            UPSTREAM_PORT_ANNOTATION,
            f"must differ from the resolver's listen port {listen_port} "
            f"(set {LISTEN_PORT_ANNOTATION} to move the resolver)",
        )

    metrics_port = _port(annotations, METRICS_PORT_ANNOTATION) or defaults.metrics_port
    if metrics_port is not None:
        taken: dict[int | None, str] = dict.fromkeys(
            _declared_ports(spec, sidecars=True), "used by a container of the pod"
        )
        taken |= {upstream_port: "the upstream port", listen_port: "the resolver's listen port"}
        if metrics_port in taken:
            raise InjectionError(
                METRICS_PORT_ANNOTATION,
                f"port {metrics_port} is {taken[metrics_port]}; choose another",
            )

    raw_behavior = annotations.get(BEHAVIOR_ANNOTATION)
    behavior: Behavior | None = None
    if raw_behavior is not None:
        try:
            behavior = Behavior(str(raw_behavior).strip())
        except ValueError:
            choices = ", ".join(b.value for b in Behavior)
            raise InjectionError(
                BEHAVIOR_ANNOTATION, f"must be one of {choices}, got {raw_behavior!r}"
            ) from None

    claim_field = annotations.get(CLAIM_FIELD_ANNOTATION)
    if claim_field is not None:
        try:
            split_path(str(claim_field))
        except ValueError as exc:
            raise InjectionError(CLAIM_FIELD_ANNOTATION, str(exc)) from None

    config_map = annotations.get(CONFIG_ANNOTATION)
    if config_map is not None and (
        len(config_map) > 253 or not DNS_SUBDOMAIN_RE.fullmatch(str(config_map))
    ):
        raise InjectionError(
            CONFIG_ANNOTATION, f"must name a ConfigMap (a DNS subdomain), got {config_map!r}"
        )

    raw_assertion = annotations.get(ASSERTION_ANNOTATION)
    if raw_assertion is not None and str(raw_assertion) not in ("true", "false"):
        raise InjectionError(
            ASSERTION_ANNOTATION, f'must be "true" or "false", got {raw_assertion!r}'
        )

    raw_engine = annotations.get(PROXY_ENGINE_ANNOTATION)
    engine = str(raw_engine).strip() if raw_engine is not None else None
    if engine is not None and engine not in PROXY_ENGINES:
        raise InjectionError(
            PROXY_ENGINE_ANNOTATION,
            f"must be one of {', '.join(PROXY_ENGINES)}, got {raw_engine!r}",
        )
    if engine is not None and mode is not Mode.PROXY:
        raise InjectionError(
            PROXY_ENGINE_ANNOTATION,
            f"only applies to {MODE_ANNOTATION}=proxy (ext-authz mode relays nothing)",
        )
    if mode is Mode.PROXY and engine is None:
        engine = defaults.proxy_engine

    return PodOptions(
        mode=mode,
        listen_port=listen_port,
        upstream_port=upstream_port if mode is Mode.PROXY else None,
        metrics_port=metrics_port,
        behavior=behavior,
        claim_field=str(claim_field) if claim_field is not None else None,
        config_map=config_map,
        assertion=raw_assertion == "true",
        proxy_engine=engine,
    )


def _setting_value(value: Any) -> str:
    # pydantic-settings parses complex fields (lists, models) from JSON strings.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def _env(options: PodOptions, defaults: InjectionDefaults) -> list[dict[str, Any]]:
    settings: dict[str, Any] = {}
    # A pod with its own full config takes nothing from the chart's defaults: variables
    # would override its file (environment beats file in core.settings).
    if options.config_map is None:
        settings.update(defaults.settings)
    if options.claim_field is not None:
        settings["claim_field"] = options.claim_field
    if options.behavior is not None:
        settings["unregistered_client_behavior"] = options.behavior.value
    if options.proxy_engine == "nginx":
        settings["proxy_engine"] = options.proxy_engine
    env: list[dict[str, Any]] = []
    if defaults.database is not None:
        env.append(
            {
                "name": "JWTKEYMAP_DATABASE_URL",
                "valueFrom": {
                    "secretKeyRef": {
                        "name": defaults.database.secret_name,
                        "key": defaults.database.key,
                    }
                },
            }
        )
    env += [
        {"name": f"JWTKEYMAP_{key.upper()}", "value": _setting_value(value)}
        for key, value in sorted(settings.items())
    ]
    if options.assertion:
        # Merged into the rest of the assertion settings (file or chart defaults).
        env.append({"name": "JWTKEYMAP_ASSERTION__ENABLED", "value": "true"})
    env += [dict(e) for e in defaults.extra_env]
    return env


def _http_probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": PORT_NAME},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 2,
    }


def resolver_container(options: PodOptions, defaults: InjectionDefaults) -> dict[str, Any]:
    """The resolver container for a pod with these options."""
    args: list[str] = []
    mounts: list[dict[str, Any]] = [{"name": TMP_VOLUME, "mountPath": TMP_DIR}]
    if options.config_map is not None:
        args += ["--config", f"{CONFIG_DIR}/{CONFIG_KEY}"]
        mounts.append({"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True})
    args += ["resolver", "--listen", f"0.0.0.0:{options.listen_port}"]
    ports = [{"name": PORT_NAME, "containerPort": options.listen_port, "protocol": "TCP"}]
    if options.metrics_port is not None:
        args += ["--metrics-listen", f"0.0.0.0:{options.metrics_port}"]
        ports.append(
            {"name": METRICS_PORT_NAME, "containerPort": options.metrics_port, "protocol": "TCP"}
        )
    if options.upstream_port is not None:
        args += ["--upstream", f"http://127.0.0.1:{options.upstream_port}"]
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": defaults.image,
        "imagePullPolicy": defaults.image_pull_policy,
        "args": args,
        "ports": ports,
        "env": _env(options, defaults),
        # Started = the process answers; the app containers wait for that (native sidecar).
        "startupProbe": _http_probe("/healthz", period=1, failures=60),
        "readinessProbe": _http_probe("/readyz", period=5, failures=2),
        "livenessProbe": _http_probe("/healthz", period=10, failures=3),
        "resources": copy.deepcopy(defaults.resources),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": defaults.run_as_user,
            "runAsGroup": defaults.run_as_group,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }
    if defaults.native_sidecar:
        container["restartPolicy"] = "Always"
    return container


def _volumes(options: PodOptions) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [{"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}}]
    if options.config_map is not None:
        volumes.append(
            {
                "name": CONFIG_VOLUME,
                "configMap": {
                    "name": options.config_map,
                    "items": [{"key": CONFIG_KEY, "path": CONFIG_KEY}],
                },
            }
        )
    return volumes


def _append(spec: Mapping[str, Any], field: str, items: Sequence[Any]) -> list[dict[str, Any]]:
    if not items:
        return []
    if not spec.get(field):
        return [{"op": "add", "path": f"/spec/{field}", "value": list(items)}]
    return [{"op": "add", "path": f"/spec/{field}/-", "value": item} for item in items]


def skip_reason(pod: Mapping[str, Any]) -> SkipReason | None:
    """Why this pod must not be injected, or None; raise InjectionError for a bad label."""
    meta = pod.get("metadata") or {}
    labels: Mapping[str, str] = meta.get("labels") or {}
    annotations: Mapping[str, str] = meta.get("annotations") or {}
    label = labels.get(INJECT_LABEL)
    if label is None or label == "false":
        return SkipReason.NOT_LABELLED
    if label != "true":
        # Exactly "true": that is all the webhook's objectSelector matches.
        raise InjectionError(INJECT_LABEL, f'must be "true" or "false", got {label!r}')
    if annotations.get(STATUS_ANNOTATION) == INJECTED:
        return SkipReason.ALREADY_INJECTED
    if any(c.get("name") == CONTAINER_NAME for c in _all_containers(pod.get("spec") or {})):
        return SkipReason.CONTAINER_EXISTS
    return None


def plan(pod: Mapping[str, Any], defaults: InjectionDefaults) -> Mutation:
    """Compute the injection for a Pod or pod template; raise InjectionError for a bad setting."""
    reason = skip_reason(pod)
    if reason is not None:
        return Mutation(injected=False, reason=reason.value, message=_SKIP_MESSAGES[reason])
    spec = pod.get("spec") or {}
    if spec.get("hostNetwork"):
        # The resolver's port would be opened on the node itself: refuse rather than skip.
        raise InjectionError(INJECT_LABEL, "cannot inject into a pod with hostNetwork: true")
    options = read_options(pod, defaults)
    container = resolver_container(options, defaults)
    ops: list[dict[str, Any]] = []
    if defaults.native_sidecar:
        # First among init containers: everything after it (migrations too) sees it running.
        if spec.get("initContainers"):
            ops.append({"op": "add", "path": "/spec/initContainers/0", "value": container})
        else:
            ops.append({"op": "add", "path": "/spec/initContainers", "value": [container]})
    else:
        # Last, so `kubectl exec/logs` still default to the application container.
        ops += _append(spec, "containers", [container])
    ops += _append(spec, "volumes", _volumes(options))
    meta = pod.get("metadata") or {}
    if not meta.get("annotations"):
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {}})
    ops.append(
        {
            "op": "add",
            "path": f"/metadata/annotations/{_escape(STATUS_ANNOTATION)}",
            "value": INJECTED,
        }
    )
    target = (
        f"proxying to 127.0.0.1:{options.upstream_port}"
        if options.upstream_port is not None
        else "serving /check (ext-authz)"
    )
    if options.proxy_engine == "nginx":
        target += " through nginx"
    message = f"{CONTAINER_NAME} injected on port {options.listen_port}, {target}"
    return Mutation(injected=True, reason=INJECTED, message=message, patch=tuple(ops))


_SKIP_MESSAGES: Final = {
    SkipReason.NOT_LABELLED: f'pod is not labelled {INJECT_LABEL}="true"',
    SkipReason.ALREADY_INJECTED: f"pod is annotated {STATUS_ANNOTATION}={INJECTED}",
    SkipReason.CONTAINER_EXISTS: f"pod already has a container named {CONTAINER_NAME}",
}


def apply(pod: Mapping[str, Any], mutation: Mutation) -> dict[str, Any]:
    """Return a copy of ``pod`` with the mutation applied."""
    patched: dict[str, Any] = jsonpatch.apply_patch(
        copy.deepcopy(dict(pod)), [dict(op) for op in mutation.patch]
    )
    return patched


def apply_in_place(pod: MutableMapping[str, Any], mutation: Mutation) -> None:
    """Apply the mutation to ``pod`` itself: previous content cleared, the patched one put in.

    Both callers own a live object rather than a copy: kopf diffs the body it
    handed to a patch function, and ``jwtkeymap inject`` edits the template
    inside the document it prints.
    """
    patched = apply(pod, mutation)
    pod.clear()
    pod.update(patched)
