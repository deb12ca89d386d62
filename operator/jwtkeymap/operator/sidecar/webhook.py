"""The sidecar webhook: kopf's mutating admission handler for Pod CREATE.

The mutation itself is :func:`jwtkeymap.operator.sidecar.plan.plan`; this module
only adapts it to kopf (an invalid annotation becomes a denied admission naming
it), counts outcomes for Prometheus and leaves an Event on the pod's owner, so
``kubectl describe replicaset`` shows why a pod was or was not injected (see
``operator/events.py`` for why this is not ``kopf.event``).

The handler is served on ``/inject-pod`` by the operator's webhook server (kopf
routes ``POST /{handler id}``); the Helm chart's MutatingWebhookConfiguration
points there. Every replica serves admissions, peering or not.

What the handler needs (the defaults, the Event poster) is opened by a startup
handler and kept in kopf's operator ``memo``, which kopf hands to every handler
of this operator and of no other (tests run several operators in one process).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, MutableMapping
from typing import Any, Final, Protocol, cast

import kopf
from prometheus_client import Counter

from jwtkeymap.operator.events import EventPoster
from jwtkeymap.operator.kube import Connection
from jwtkeymap.operator.sidecar.defaults import InjectionDefaults, load_defaults
from jwtkeymap.operator.sidecar.plan import (
    InjectionError,
    Mutation,
    SkipReason,
    apply_in_place,
    plan,
)

HANDLER_ID: Final = "inject-pod"
EVENTS_ID: Final = "injector-events"
# Path of the injection defaults (YAML of the chart's `resolver:` values); unset = no injector.
CONFIG_ENV: Final = "JWTKEYMAP_INJECTION_CONFIG"
_MEMO_KEY: Final = "jwtkeymap.sidecar"

INJECTIONS: Final = Counter(
    "jwtkeymap_injections_total",
    "Pods seen by the sidecar injector, by result (injected, skipped, denied) and reason.",
    ["result", "reason"],
)


class EventSink(Protocol):
    """Where the webhook reports outcomes (an :class:`EventPoster` in the operator)."""

    def post(self, target: Mapping[str, Any], *, type: str, reason: str, message: str) -> None:
        """Report an outcome about ``target``."""


def owner_of(pod: Mapping[str, Any], namespace: str | None) -> dict[str, Any] | None:
    """The pod's controller as an object body for an Event (None for a bare pod)."""
    meta = pod.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return {
                "apiVersion": ref.get("apiVersion"),
                "kind": ref.get("kind"),
                "metadata": {
                    "name": ref.get("name"),
                    "uid": ref.get("uid"),
                    "namespace": namespace or meta.get("namespace"),
                },
            }
    return None


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


@dataclasses.dataclass(frozen=True)
class Injector:
    """What the mutating handler works with, opened at operator startup."""

    defaults: InjectionDefaults
    events: EventPoster


def _injector(memo: kopf.Memo) -> Injector:
    # Set by open_injector, which kopf runs before it serves any admission.
    return cast(Injector, memo[_MEMO_KEY])


async def open_injector(
    memo: kopf.Memo,
    *,
    defaults: InjectionDefaults,
    connection: Connection | None,
    **_: Any,
) -> None:
    """Startup: open the Event poster and keep it, with the defaults, in the operator memo."""
    memo[_MEMO_KEY] = Injector(defaults, await EventPoster.open(connection))


async def close_injector(memo: kopf.Memo, **_: Any) -> None:
    """Cleanup: let pending Events go out, then close their client."""
    await _injector(memo).events.close()


async def inject_pod(
    body: kopf.Body, patch: kopf.Patch, dryrun: bool, memo: kopf.Memo, **_: Any
) -> None:
    """Mutate a Pod being created: add the resolver when it asks for it."""
    injector = _injector(memo)
    mutation = review(body, injector.defaults, dryrun=dryrun, events=injector.events)
    if mutation.injected:
        # kopf turns the mutated body back into a JSON patch against the original.
        patch.fns.append(functools.partial(_mutate, mutation))


def _mutate(mutation: Mutation, raw: kopf.RawBody) -> None:
    apply_in_place(cast(MutableMapping[str, Any], raw), mutation)


def register_injector(
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
    opening = functools.partial(open_injector, defaults=defaults, connection=connection)
    kopf.on.startup(registry=registry, id=EVENTS_ID)(opening)
    kopf.on.cleanup(registry=registry, id=EVENTS_ID)(close_injector)
    kopf.on.mutate("", "v1", "pods", registry=registry, id=HANDLER_ID, operations=["CREATE"])(
        inject_pod
    )
    return True
