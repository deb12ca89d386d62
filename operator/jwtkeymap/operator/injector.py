"""The sidecar injector: a kopf mutating admission handler for Pod CREATE.

The mutation itself is :func:`jwtkeymap.operator.injection.plan`; this module
only adapts it to kopf (an invalid annotation becomes a denied admission naming
it), counts outcomes for Prometheus and leaves an Event on the pod's owner, so
``kubectl describe replicaset`` shows why a pod was or was not injected (see
``events`` for why this is not ``kopf.event``).

The handler is served on ``/inject-pod`` by the operator's webhook server (kopf
routes ``POST /{handler id}``); the Helm chart's MutatingWebhookConfiguration
points there. Every replica serves admissions, peering or not.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Protocol

import kopf
import yaml
from prometheus_client import Counter
from pydantic import ValidationError

from jwtkeymap.core.errors import ConfigError
from jwtkeymap.core.settings import format_validation_error
from jwtkeymap.operator.events import EventPoster
from jwtkeymap.operator.injection import (
    InjectionDefaults,
    InjectionError,
    Mutation,
    SkipReason,
    apply,
    owner_of,
    plan,
)
from jwtkeymap.operator.kube import Connection

HANDLER_ID: Final = "inject-pod"
# Path of the injection defaults (YAML of the chart's `resolver:` values); unset = no injector.
CONFIG_ENV: Final = "JWTKEYMAP_INJECTION_CONFIG"

INJECTIONS: Final = Counter(
    "jwtkeymap_injections_total",
    "Pods seen by the sidecar injector, by result (injected, skipped, denied) and reason.",
    ["result", "reason"],
)


def load_defaults(path: str | Path) -> InjectionDefaults:
    """Read the injection defaults; raise ConfigError naming the file and field."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read injection defaults {path}: {exc}") from None
    try:
        return InjectionDefaults.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            f"invalid injection defaults in {path}: {format_validation_error(exc)}"
        ) from None


class EventSink(Protocol):
    """Where the injector reports outcomes (an :class:`EventPoster` in the operator)."""

    def post(self, target: Mapping[str, Any], *, type: str, reason: str, message: str) -> None:
        """Report an outcome about ``target``."""


def _mutate_in_place(mutation: Mutation) -> Any:
    def mutate(raw: Any) -> None:
        patched = apply(raw, mutation)
        raw.clear()
        raw.update(patched)

    return mutate


def _announce(
    events: EventSink | None,
    pod: Mapping[str, Any],
    *,
    warning: bool,
    reason: str,
    message: str,
) -> None:
    if events is None:
        return
    meta = pod.get("metadata") or {}
    target = owner_of(pod, meta.get("namespace"))
    if target is None and meta.get("name"):
        # A bare pod: the Event names it before it exists (it is being admitted).
        target = {"apiVersion": "v1", "kind": "Pod", "metadata": dict(meta)}
    if target is not None:
        events.post(target, type="Warning" if warning else "Normal", reason=reason, message=message)


def review(
    pod: Mapping[str, Any],
    defaults: InjectionDefaults,
    *,
    dryrun: bool,
    events: EventSink | None = None,
) -> Mutation:
    """Plan the injection, record the outcome, and raise kopf.AdmissionError for a bad setting."""
    try:
        mutation = plan(pod, defaults)
    except (AttributeError, TypeError, KeyError):
        # The apiserver decodes a Pod before admission, so only a forged review gets here.
        INJECTIONS.labels("denied", "malformed_pod").inc()
        raise kopf.AdmissionError("jwtkeymap sidecar injection: malformed Pod", code=400) from None
    except InjectionError as exc:
        INJECTIONS.labels("denied", "invalid_setting").inc()
        if not dryrun:
            _announce(events, pod, warning=True, reason="InjectionDenied", message=str(exc))
        raise kopf.AdmissionError(f"jwtkeymap sidecar injection: {exc}", code=400) from None
    INJECTIONS.labels("injected" if mutation.injected else "skipped", mutation.reason).inc()
    # sideEffects: None promises nothing observable for dry runs; and unlabelled pods
    # (which the objectSelector keeps away anyway) are not worth an Event.
    if not dryrun and mutation.reason != SkipReason.NOT_LABELLED:
        reason = "Injected" if mutation.injected else "InjectionSkipped"
        _announce(events, pod, warning=False, reason=reason, message=mutation.message)
    return mutation


def register(
    registry: kopf.OperatorRegistry,
    defaults: InjectionDefaults | None = None,
    *,
    connection: Connection | None = None,
) -> bool:
    """Register the Pod injector; without ``defaults``, read them from $JWTKEYMAP_INJECTION_CONFIG.

    Returns False (and registers nothing) when injection is not configured. Events
    are posted with ``connection``, else the in-cluster service account.
    """
    if defaults is None:
        path = os.environ.get(CONFIG_ENV)
        if not path:
            return False
        defaults = load_defaults(path)
    chosen = defaults
    events = EventPoster(connection)

    @kopf.on.startup(registry=registry, id="injector-events")
    async def open_events(**_: Any) -> None:
        await events.start()

    @kopf.on.cleanup(registry=registry, id="injector-events")
    async def close_events(**_: Any) -> None:
        await events.stop()

    @kopf.on.mutate("", "v1", "pods", registry=registry, id=HANDLER_ID, operations=["CREATE"])
    async def inject_pod(body: kopf.Body, patch: kopf.Patch, dryrun: bool, **_: Any) -> None:
        mutation = review(body, chosen, dryrun=dryrun, events=events)
        if mutation.injected:
            # kopf turns the mutated body back into a JSON patch against the original.
            patch.fns.append(_mutate_in_place(mutation))

    return True
