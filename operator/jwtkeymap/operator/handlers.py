"""kopf handlers: JWTKeyMapping resources reconciled into PostgreSQL through ``core.reconcile``.

Handlers are registered on an explicit registry by :func:`register`, so the CLI,
the tests and the benchmark each run their own operator without module-level
state. The flow for one resource:

* create / update / resume → resolve the key hash (Secret or spec), reconcile,
  write the Ready condition; retry with backoff when the key is missing or the
  database is down;
* a change to a referenced Secret → the dependent resources are annotated, which
  makes kopf re-run their update handler (no polling per resource);
* a timer re-reconciles every resource, restoring rows changed behind our back;
* deletion → the owned row is removed (or retained) before the finalizer is
  released; a database outage holds the finalizer until it is back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf

from jwtkeymap.core.errors import (
    DatabaseUnavailable,
    JwtKeyMapError,
    SchemaError,
    StoreError,
)
from jwtkeymap.core.litellm import LiteLLMCache
from jwtkeymap.core.owners import k8s_owner
from jwtkeymap.core.reconcile import (
    OPERATOR_ACTOR,
    DesiredMapping,
    Outcome,
    Reconciler,
    ReconcileResult,
)
from jwtkeymap.core.settings import Settings
from jwtkeymap.core.store import Store
from jwtkeymap.operator import status as st
from jwtkeymap.operator.kube import Kube, KubeUnavailable
from jwtkeymap.operator.resource import (
    FINALIZER,
    GROUP,
    PLURAL,
    RELEASED_ANNOTATION,
    SECRET_VERSION_ANNOTATION,
    VERSION,
    MappingSpec,
    SpecError,
    desired_mapping,
    identity_of,
    parse_spec,
)
from jwtkeymap.operator.secrets import SecretKeyMissing, SecretNotFound, key_hash_from_data

log = logging.getLogger(__name__)

KubeConnector = Callable[[], Awaitable[Kube]]
RESOURCE = (GROUP, VERSION, PLURAL)


@dataclasses.dataclass
class Runtime:
    """What the handlers share: set up at operator startup, closed at cleanup."""

    settings: Settings
    connect_kube: KubeConnector
    store: Store | None = None
    reconciler: Reconciler | None = None
    kube: Kube | None = None
    litellm: LiteLLMCache | None = None
    # At most one reconcile per pooled connection: a resume storm (thousands of handlers
    # at once) then queues here instead of timing out on the pool and flapping the
    # Ready condition to DatabaseUnavailable.
    limit: asyncio.Semaphore = dataclasses.field(default_factory=lambda: asyncio.Semaphore(4))

    async def start(self) -> None:
        """Open the pool (even while the database is down), the API client and Redis."""
        s = self.settings
        if not s.database_url:
            raise kopf.PermanentError("no database configured: set JWTKEYMAP_DATABASE_URL")
        self.limit = asyncio.Semaphore(s.db_pool_max_size)
        self.store = await Store.open(
            s.database_url, min_size=0, max_size=s.db_pool_max_size, timeout=s.db_timeout_seconds
        )
        if s.redis_url:
            self.litellm = LiteLLMCache(s.redis_url)
        self.reconciler = Reconciler(
            self.store,
            actor=OPERATOR_ACTOR,
            evict=self.litellm.evict if self.litellm else None,
        )
        self.kube = await self.connect_kube()

    async def stop(self) -> None:
        """Close everything opened by :meth:`start`."""
        if self.kube is not None:
            await self.kube.close()
        if self.litellm is not None:
            await self.litellm.close()
        if self.store is not None:
            await self.store.close()

    def backoff(self, retry: int) -> float:
        """Exponential retry delay for attempt ``retry`` (0-based), capped."""
        s = self.settings
        delay = s.reconcile_backoff_seconds * 2 ** min(retry, 16)
        return float(min(delay, s.reconcile_backoff_max_seconds))


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A reconcile attempt's Ready condition, and how kopf should go on."""

    condition: st.Condition
    result: ReconcileResult | None = None
    retry: bool = False  # temporary: kopf retries with backoff
    permanent: bool = False  # needs a change to the resource (or its Secret)


def _ready(reason: st.Reason, message: str, ok: bool | None = False) -> st.Condition:
    return st.Condition(type=st.READY, status=ok, reason=reason.value, message=message)


def ref_of(namespace: str | None, name: str | None) -> str:
    """``namespace/name`` of a resource."""
    return f"{namespace}/{name}"


async def desired_for(
    runtime: Runtime, spec: MappingSpec, meta: Mapping[str, Any], namespace: str
) -> DesiredMapping:
    """Resolve the key hash (reading the Secret when referenced) and build the desired mapping."""
    if spec.key.secret_ref is not None:
        ref = spec.key.secret_ref
        assert runtime.kube is not None
        data = await runtime.kube.secret_data(namespace, ref.name)
        token_hash = key_hash_from_data(data, secret=ref_of(namespace, ref.name), key=ref.key)
    else:
        assert spec.key.hash is not None
        token_hash = spec.key.hash
    return desired_mapping(
        spec,
        runtime.settings,
        token_hash=token_hash,
        owner=k8s_owner(str(meta["uid"])),
        ref=ref_of(namespace, meta.get("name")),
        annotations=meta.get("annotations"),
    )


async def attempt(
    runtime: Runtime, spec_body: Mapping[str, Any], meta: Mapping[str, Any], namespace: str
) -> Verdict:
    """Reconcile one resource and classify the result; never raises for expected failures."""
    assert runtime.reconciler is not None
    try:
        spec = parse_spec(spec_body)
        want = await desired_for(runtime, spec, meta, namespace)
        async with runtime.limit:
            result = await runtime.reconciler.apply(want)
    except SpecError as exc:
        return Verdict(_ready(st.Reason.INVALID_SPEC, str(exc)), permanent=True)
    except SchemaError as exc:
        return Verdict(_ready(st.Reason.INVALID_SPEC, str(exc)), permanent=True)
    except SecretNotFound as exc:
        return Verdict(_ready(st.Reason.SECRET_NOT_FOUND, str(exc)), permanent=True)
    except SecretKeyMissing as exc:
        return Verdict(_ready(st.Reason.SECRET_KEY_MISSING, str(exc)), permanent=True)
    except KubeUnavailable as exc:
        return Verdict(_ready(st.Reason.SECRET_UNREADABLE, str(exc), ok=None), retry=True)
    except (DatabaseUnavailable, StoreError) as exc:
        return Verdict(_ready(st.Reason.DATABASE_UNAVAILABLE, str(exc), ok=None), retry=True)
    if result.outcome is Outcome.CONFLICT:
        # No retry loop: the holder's deletion wakes this resource (RELEASED_ANNOTATION),
        # and the drift timer tries again anyway.
        return Verdict(_ready(st.Reason.CONFLICT, result.message), result=result)
    if result.outcome is Outcome.KEY_NOT_FOUND:
        return Verdict(_ready(st.Reason.KEY_NOT_FOUND, result.message), result=result, retry=True)
    identity = result.identity
    assert identity is not None
    scope = f" for issuer {identity.issuer}" if identity.issuer else ""
    # The same text whatever was done, so a resume or a timer finds the status current
    # and writes nothing; what changed is told by the Event and lastSyncTime.
    message = (
        f"{identity.claim_name}={identity.claim_value}{scope} is mapped to key "
        f"{result.key_fingerprint}"
    )
    return Verdict(_ready(st.Reason.SYNCED, message, ok=True), result=result)


def record(
    verdict: Verdict,
    *,
    body: kopf.Body,
    status: Mapping[str, Any],
    meta: Mapping[str, Any],
    patch: kopf.Patch,
    now: dt.datetime | None = None,
    drift: bool = False,
) -> None:
    """Write the verdict into the status patch and emit an Event on a transition."""
    conditions = status.get("conditions") or []
    generation = meta.get("generation")
    result = verdict.result
    wrote = result is not None and result.outcome.wrote
    transition = st.is_transition(conditions, verdict.condition)
    if not wrote and st.is_current(conditions, verdict.condition, generation=generation):
        return  # nothing to say: no status write at all (resume and timers stay free)
    patch.status["conditions"] = st.set_condition(
        conditions, verdict.condition, generation=generation, now=now
    )
    patch.status["observedGeneration"] = generation
    if result is not None and result.mapping_id is not None:
        patch.status["mappingId"] = result.mapping_id
    if result is not None and result.key_fingerprint is not None:
        patch.status["keyFingerprint"] = result.key_fingerprint
    if wrote or transition:
        patch.status["lastSyncTime"] = st.now_rfc3339(now)
    if drift and wrote:
        kopf.event(
            body,
            type="Warning",
            reason="DriftRepaired",
            message=f"row changed outside the operator, restored; {verdict.condition.message}",
        )
    elif transition:
        kopf.event(
            body,
            type="Normal" if verdict.condition.status else "Warning",
            reason=verdict.condition.reason,
            message=verdict.condition.message,
        )


def register(
    registry: kopf.OperatorRegistry,
    settings: Settings,
    *,
    connect_kube: KubeConnector | None = None,
    admission: bool = False,
) -> Runtime:
    """Register every handler of the operator on ``registry``; return their shared runtime.

    With ``admission`` the validating webhook is registered too; kopf then needs
    ``settings.admission.server`` to be configured (it refuses to run without one).
    """
    runtime = Runtime(settings=settings, connect_kube=connect_kube or Kube.connect)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # kopf logs whole objects at DEBUG: Secrets (plaintext keys) and specs with key
        # hashes. Never below INFO for kopf, whatever the configured level.
        kopf_logger = logging.getLogger("kopf")
        if kopf_logger.getEffectiveLevel() < logging.INFO:
            kopf_logger.setLevel(logging.INFO)
        settings.persistence.finalizer = FINALIZER
        # Our own Events (kopf.event, not subject to this level) mark transitions;
        # kopf's per-handler INFO chatter would drown them.
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = settings.watching.server_timeout or 300
        await runtime.start()

    @kopf.on.cleanup(registry=registry)
    async def close(**_: Any) -> None:
        await runtime.stop()

    @kopf.index(*RESOURCE, registry=registry, id="by_secret")
    def by_secret(
        namespace: str | None, name: str, spec: kopf.Spec, meta: kopf.Meta, **_: Any
    ) -> dict[tuple[str, str], tuple[str, str | None]] | None:
        """Mappings by the Secret they read, with the Secret version they last saw."""
        secret_ref = (spec.get("key") or {}).get("secretRef") or {}
        if not secret_ref.get("name"):
            return None
        seen = meta.annotations.get(SECRET_VERSION_ANNOTATION)
        return {(namespace or "", secret_ref["name"]): (name, seen)}

    @kopf.index(*RESOURCE, registry=registry, id="by_identity")
    def by_identity(
        namespace: str | None, name: str, uid: str, spec: kopf.Spec, **_: Any
    ) -> dict[tuple[str, str, str], tuple[str, str]] | None:
        """Mappings by (issuer, claim name, claim value), for the admission webhook."""
        try:
            identity = identity_of(parse_spec(spec), runtime.settings)
        except SpecError:
            return None
        key = (identity.issuer, identity.claim_name, identity.claim_value)
        return {key: (ref_of(namespace, name), uid)}

    # Distinct ids: kopf tracks progress per id, and a resume sharing its id with the
    # update handler would mark a change made while we were down as already handled.
    @kopf.on.resume(*RESOURCE, registry=registry, id="resume")
    @kopf.on.create(*RESOURCE, registry=registry, id="create")
    @kopf.on.update(*RESOURCE, registry=registry, id="update")
    async def reconcile(
        body: kopf.Body,
        spec: kopf.Spec,
        meta: kopf.Meta,
        status: kopf.Status,
        patch: kopf.Patch,
        namespace: str | None,
        retry: int,
        **_: Any,
    ) -> None:
        verdict = await attempt(runtime, spec, meta, namespace or "")
        record(verdict, body=body, status=status, meta=meta, patch=patch)
        if verdict.retry:
            raise kopf.TemporaryError(verdict.condition.message, delay=runtime.backoff(retry))
        if verdict.permanent:
            # Retried when the resource or its Secret changes, and by the drift timer.
            raise kopf.PermanentError(verdict.condition.message)

    @kopf.timer(
        *RESOURCE,
        registry=registry,
        id="drift",
        interval=settings.drift_interval_seconds,
        initial_delay=settings.drift_interval_seconds,
    )
    async def drift(
        body: kopf.Body,
        spec: kopf.Spec,
        meta: kopf.Meta,
        status: kopf.Status,
        patch: kopf.Patch,
        namespace: str | None,
        **_: Any,
    ) -> None:
        if meta.get("deletionTimestamp"):
            return
        verdict = await attempt(runtime, spec, meta, namespace or "")
        record(verdict, body=body, status=status, meta=meta, patch=patch, drift=True)

    @kopf.on.delete(*RESOURCE, registry=registry, id="release")
    async def release(
        body: kopf.Body,
        spec: kopf.Spec,
        meta: kopf.Meta,
        status: kopf.Status,
        patch: kopf.Patch,
        namespace: str | None,
        name: str,
        uid: str,
        retry: int,
        logger: kopf.Logger,
        **kwargs: Any,
    ) -> None:
        assert runtime.reconciler is not None and runtime.kube is not None
        retain = spec.get("deletionPolicy") == "Retain"
        try:
            async with runtime.limit:
                result = await runtime.reconciler.delete(
                    k8s_owner(uid), retain=retain, ref=ref_of(namespace, name)
                )
        except (DatabaseUnavailable, StoreError) as exc:
            condition = _ready(st.Reason.DATABASE_UNAVAILABLE, f"deletion waits: {exc}", ok=None)
            record(Verdict(condition), body=body, status=status, meta=meta, patch=patch)
            raise kopf.TemporaryError(
                f"finalizer held until the database is back: {exc}", delay=runtime.backoff(retry)
            ) from None
        if result.outcome is Outcome.DELETED:
            kopf.event(body, type="Normal", reason="Deleted", message="mapping removed")
            # Resources that lost a Conflict over this identity may now take it.
            taken: kopf.Index[tuple[str, str, str], tuple[str, str]] = kwargs["by_identity"]
            identity = result.identity
            assert identity is not None
            key = (identity.issuer, identity.claim_name, identity.claim_value)
            for ref, other_uid in taken.get(key, []):
                if other_uid == uid:
                    continue
                other_ns, _, other_name = ref.partition("/")
                try:
                    await runtime.kube.annotate_mapping(
                        other_ns, other_name, {RELEASED_ANNOTATION: uid}
                    )
                except JwtKeyMapError as exc:
                    logger.warning("could not wake %s after the release: %s", ref, exc)
        elif result.outcome is Outcome.RETAINED:
            kopf.event(
                body, type="Normal", reason="Retained", message="mapping kept (deletionPolicy)"
            )

    @kopf.on.event("", "v1", "secrets", registry=registry, id="secret-changed")
    async def secret_changed(
        type: str,
        namespace: str | None,
        name: str,
        body: kopf.Body,
        logger: kopf.Logger,
        **kwargs: Any,
    ) -> None:
        by_secret: kopf.Index[tuple[str, str], tuple[str, str | None]] = kwargs["by_secret"]
        if not type:
            return  # the initial listing: resume handlers read every Secret anyway
        version = str(body.metadata.get("resourceVersion") or "")
        if type == "DELETED":
            version = f"deleted-{version}"
        assert runtime.kube is not None
        ns = namespace or ""
        for mapping, seen in by_secret.get((ns, name), []):
            if seen == version:
                continue
            try:
                await runtime.kube.annotate_mapping(
                    ns, mapping, {SECRET_VERSION_ANNOTATION: version}
                )
            except JwtKeyMapError as exc:
                logger.warning("could not mark %s/%s for resync: %s", namespace, mapping, exc)

    @kopf.on.probe(registry=registry, id="database")
    async def database(**_: Any) -> str:
        """Liveness detail: a database outage is reported, not fatal (restarts would not help)."""
        if runtime.store is None:
            return "starting"
        try:
            await runtime.store.ping()
        except JwtKeyMapError as exc:
            return f"unavailable: {type(exc).__name__}"
        return "ok"

    from jwtkeymap.operator import metrics, webhooks
    from jwtkeymap.operator.sidecar import webhook as sidecar

    if admission:
        webhooks.register(registry, settings)
        sidecar.register(registry)  # pod injection, when $JWTKEYMAP_INJECTION_CONFIG is set
    metrics.register(registry)  # /metrics, when $JWTKEYMAP_METRICS_PORT is set
    return runtime
