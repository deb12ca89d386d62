"""Register the operator's handlers on a kopf registry.

Handlers are registered on an explicit registry, so the CLI, the tests and the
benchmark each run their own operator. What a handler needs reaches it one of
two ways: configuration known now (the settings) is bound with
``functools.partial``; what is opened at startup (pool, API client, Redis) is
put in kopf's operator memo by the startup handler (see ``runtime``).
"""

from __future__ import annotations

import functools

import kopf

from jwtkeymap.core.settings import Settings
from jwtkeymap.operator.handlers.indexes import (
    NAMESPACE_LABELS,
    POLICIES,
    index_namespace,
    index_policy,
)
from jwtkeymap.operator.handlers.mapping import (
    CREATE_ID,
    RELEASE_ID,
    RESUME_ID,
    UPDATE_ID,
    reconcile,
    release,
)
from jwtkeymap.operator.handlers.runtime import (
    CLEANUP_ID,
    PROBE_ID,
    STARTUP_ID,
    KubeConnector,
    close,
    configure,
    database,
)
from jwtkeymap.operator.handlers.secrets import (
    SECRET_CHANGED_ID,
    UNWATCH_ID,
    WATCH_ID,
    secret_changed,
    stop_awaiting,
    watch_referenced,
)
from jwtkeymap.operator.kube import Kube
from jwtkeymap.operator.metrics import register_metrics
from jwtkeymap.operator.resource import GROUP, PLURAL, VERSION
from jwtkeymap.operator.sidecar.webhook import register_injector
from jwtkeymap.operator.tenancy import POLICY_PLURAL
from jwtkeymap.operator.webhooks import register_validation

RESOURCE = (GROUP, VERSION, PLURAL)


def register(
    registry: kopf.OperatorRegistry,
    settings: Settings,
    *,
    connect_kube: KubeConnector = Kube.connect,
    admission: bool = False,
) -> None:
    """Register every handler of the operator on ``registry``.

    With ``admission`` the validating webhook (and the sidecar injector, when
    $JWTKEYMAP_INJECTION_CONFIG is set) is registered too; kopf then needs
    ``settings.admission.server`` to be configured (it refuses to run without one).
    The shared runtime is in the operator memo once kopf has started
    (:func:`jwtkeymap.operator.handlers.runtime.runtime_of`).
    """
    on = kopf.on
    opening = functools.partial(configure, config=settings, connect_kube=connect_kube)
    on.startup(registry=registry, id=STARTUP_ID)(opening)
    # kopf runs activity handlers in this order: the Secret watch after the runtime opens,
    # its cleanup before the runtime closes.
    watching = functools.partial(watch_referenced, max_age=settings.drift_interval_seconds)
    on.startup(registry=registry, id=WATCH_ID)(watching)
    on.cleanup(registry=registry, id=UNWATCH_ID)(stop_awaiting)
    on.cleanup(registry=registry, id=CLEANUP_ID)(close)
    on.probe(registry=registry, id=PROBE_ID)(database)

    # Cluster-scoped: kopf watches them cluster-wide even when it serves some namespaces.
    # JWTKeyMappings have no kopf index (see handlers.registry for why).
    kopf.index(GROUP, VERSION, POLICY_PLURAL, registry=registry, id=POLICIES)(index_policy)
    kopf.index("", "v1", "namespaces", registry=registry, id=NAMESPACE_LABELS)(index_namespace)

    on.resume(*RESOURCE, registry=registry, id=RESUME_ID)(reconcile)
    on.create(*RESOURCE, registry=registry, id=CREATE_ID)(reconcile)
    on.update(*RESOURCE, registry=registry, id=UPDATE_ID)(reconcile)
    on.delete(*RESOURCE, registry=registry, id=RELEASE_ID)(release)

    # Server-side narrowed to the labelled Secrets by watch_referenced (the startup above).
    on.event("", "v1", "secrets", registry=registry, id=SECRET_CHANGED_ID)(secret_changed)

    if admission:
        register_validation(registry, settings)
        register_injector(registry)  # pod injection, when $JWTKEYMAP_INJECTION_CONFIG is set
    register_metrics(registry)  # /metrics, when $JWTKEYMAP_METRICS_PORT is set
