"""The sidecar's defaults: the resolver container as the Helm chart configures it.

The chart renders its ``injection.resolver`` values into the operator's
ConfigMap (``injection.yaml``); ``jwtkeymap inject --defaults`` reads either
that file or the chart's whole values file. Both go through :func:`load_defaults`,
so a values file that installs also injects the same sidecar offline.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from jwtkeymap import __version__
from jwtkeymap.core.errors import ConfigError
from jwtkeymap.core.settings import ProxyEngine, Settings, format_validation_error
from jwtkeymap.operator.names import DNS_SUBDOMAIN

IMAGE_REPOSITORY: Final = "ghcr.io/jwtkeymap/jwtkeymap"
# Settings the injection itself decides; a default for them would be silently overridden.
_RESERVED_SETTINGS: Final = frozenset(
    {"database_url", "listen", "metrics_listen", "upstream", "proxy_engine"}
)


class Mode(enum.StrEnum):
    """How the sidecar sits in front of the workload."""

    PROXY = "proxy"  # reverse proxy: the Service targets the resolver, which forwards
    EXT_AUTHZ = "ext-authz"  # /check only, for an Envoy or nginx in the pod or at the edge


class _Values(BaseModel):
    # The chart renders its camelCase values straight into this model.
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class SecretKeyRef(_Values):
    """A key of a Secret in the *workload's* namespace."""

    secret_name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")


class InjectionDefaults(_Values):
    """The resolver sidecar as the chart configures it (``injection.resolver`` in its values)."""

    # The chart's default too: its appVersion is the package version.
    image: str = Field(default=f"{IMAGE_REPOSITORY}:{__version__}", min_length=1)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    mode: Mode = Mode.PROXY
    listen_port: int = Field(default=8181, ge=1, le=65535)
    # What carries a proxy-mode sidecar's bytes: the resolver, or the image's nginx asking
    # the resolver's check (docs/resolver.md). A pod's jwtkeymap.io/proxy-engine overrides.
    proxy_engine: ProxyEngine = "resolver"
    # /metrics, on a port of its own (named jwtkeymap-prom): a reverse proxy's listen
    # port is the app's way in and serves no metrics. None: no metrics port.
    metrics_port: int | None = Field(default=8182, ge=1, le=65535)
    # A restartable init container (Kubernetes >= 1.29): started, and probed, before the
    # app containers, so the app never takes traffic through a resolver that is not there.
    native_sidecar: bool = True
    # The database URL for the sidecar; None runs it without a database (reject/fallback only).
    database: SecretKeyRef | None = SecretKeyRef(
        secret_name="jwtkeymap-database",  # noqa: S106 (the name of a Secret, not a password)
        key="url",
    )
    # Resolver settings (core.settings names), rendered as JWTKEYMAP_* variables.
    settings: dict[str, Any] = Field(default_factory=dict)
    extra_env: list[dict[str, Any]] = Field(default_factory=list)
    resources: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            # ~170 MiB with every default cache full (100k clients), ~260 MiB at worst with
            # assertions on: bench/RESULTS.md. The limit leaves room for bursts.
            "limits": {"memory": "512Mi"},
        }
    )
    run_as_user: int = Field(default=10001, ge=1)
    run_as_group: int = Field(default=10001, ge=1)

    @field_validator("settings")
    @classmethod
    def _known_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        known = set(Settings.model_fields)
        unknown = sorted(k for k in value if k not in known)
        if unknown:
            raise ValueError(f"unknown resolver setting(s) {unknown}")
        reserved = sorted(k for k in value if k in _RESERVED_SETTINGS)
        if reserved:
            raise ValueError(
                f"{reserved} are set by the injection (database: use resolver.database; "
                "proxy_engine: resolver.proxyEngine)"
            )
        return value


def _chart_image(values: Mapping[str, Any]) -> str | None:
    image = values.get("image")
    if not isinstance(image, Mapping) or not image.get("repository"):
        return None
    if image.get("digest"):
        return f"{image['repository']}@{image['digest']}"
    return f"{image['repository']}:{image.get('tag') or __version__}"


def defaults_data(loaded: Mapping[str, Any]) -> dict[str, Any]:
    """Injection defaults from a chart values file, or from the chart's injection.yaml."""
    if "injection" not in loaded:
        return dict(loaded)
    resolver = dict((loaded.get("injection") or {}).get("resolver") or {})
    # As the chart does: an empty resolver image means the operator's image.
    if not resolver.get("image"):
        resolver.pop("image", None)
        image = _chart_image(loaded)
        if image is not None:
            resolver["image"] = image
    return resolver


def _read(path: str | Path) -> tuple[str, str]:
    if str(path) == "-":
        return "<stdin>", sys.stdin.read()
    try:
        return str(path), Path(path).read_text()
    except OSError as exc:
        reason = exc.strerror or exc
        raise ConfigError(f"cannot read injection defaults {path}: {reason}") from None


def load_defaults(path: str | Path | None, *, image: str | None = None) -> InjectionDefaults:
    """The defaults from chart values or an injection.yaml (``-``: stdin), else the built-in ones.

    ``image`` overrides the file's. Raises ConfigError naming the file and the field.
    """
    data: dict[str, Any] = {}
    where = ""
    if path is not None:
        label, text = _read(path)
        where = f" in {label}"
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid injection defaults{where}: not YAML: {exc}") from None
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"invalid injection defaults{where}: expected a mapping")
        data.update(defaults_data(loaded))
    if image is not None:
        data["image"] = image
    try:
        return InjectionDefaults.model_validate(data)
    except ValidationError as exc:
        detail = format_validation_error(exc)
        raise ConfigError(f"invalid injection defaults{where}: {detail}") from None
