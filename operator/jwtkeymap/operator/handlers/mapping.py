"""Handlers of JWTKeyMapping resources: reconcile on change, release on deletion.

* create / update / resume → resolve the key hash (Secret or spec), reconcile,
  write the Ready condition; retry with backoff when the key is missing or the
  database is down. Each handler first records the resource in the registry
  (what the Secret and conflict wake-ups and the drift check read);
* drift is not a timer per resource: one loop checks every resource against one
  read of the rows (``resync``) and marks the ones to redo with an annotation,
  whose update handler then repairs the row and reports it as drift;
* deletion → the owned row is removed (or retained) before the finalizer is
  released; a database outage holds the finalizer until it is back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import kopf

from jwtkeymap.core.errors import DatabaseUnavailable, JwtKeyMapError, StoreError
from jwtkeymap.core.owners import k8s_owner
from jwtkeymap.core.reconcile.desired import ReconcileOutcome
from jwtkeymap.operator.handlers.indexes import tenancy_of
from jwtkeymap.operator.handlers.runtime import Runtime, backoff, runtime_of
from jwtkeymap.operator.handlers.verdicts import Verdict, attempt, ready, record
from jwtkeymap.operator.resource import (
    RELEASED_ANNOTATION,
    RESYNC_ANNOTATION,
    SECRET_VERSION_ANNOTATION,
    MappingSpec,
    SpecError,
    identity_of,
    parse_spec,
    ref_of,
)
from jwtkeymap.operator.status import Reason

# Distinct ids: kopf tracks progress per id, and a resume sharing its id with the
# update handler would mark a change made while we were down as already handled.
RESUME_ID: Final = "resume"
CREATE_ID: Final = "create"
UPDATE_ID: Final = "update"
RELEASE_ID: Final = "release"


async def reconcile(
    body: kopf.Body,
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    namespace: str | None,
    retry: int,
    memo: kopf.Memo,
    reason: str = "",
    old: Any = None,
    new: Any = None,
    **kwargs: Any,
) -> None:
    """Create, update, resume: reconcile the resource and record its Ready condition."""
    runtime = runtime_of(memo)
    ns = namespace or ""
    parsed = remember(runtime, spec, meta, ns)
    resuming = reason == kopf.Reason.RESUME
    verdict = await attempt(
        runtime, spec, meta, ns, tenancy=tenancy_of(kwargs), resuming=resuming, parsed=parsed
    )
    uid = str(meta["uid"])
    runtime.registry.synced(
        uid, k8s_owner(uid), verdict.digest,
        retry=verdict.condition.reason != Reason.INVALID_SPEC.value,
    )  # fmt: skip
    drift = _only_resync(reason, old, new)
    record(verdict, body=body, status=status, meta=meta, patch=patch, drift=drift)
    if verdict.retry:
        raise kopf.TemporaryError(verdict.condition.message, delay=backoff(runtime.settings, retry))
    if verdict.permanent:
        # Retried when the resource or its Secret changes, and by the drift check.
        raise kopf.PermanentError(verdict.condition.message)


def remember(
    runtime: Runtime, spec: Mapping[str, Any], meta: Mapping[str, Any], ns: str
) -> MappingSpec | None:
    """Record the resource in the registry (its identity, the Secret it reads); its parsed spec."""
    secret_ref = (spec.get("key") or {}).get("secretRef") or {}
    parsed: MappingSpec | None = None
    identity = None
    try:
        parsed = parse_spec(spec)
        identity = identity_of(parsed, runtime.settings)
    except SpecError:
        pass  # attempt() reports it
    runtime.registry.remember(
        str(meta["uid"]), ns, str(meta["name"]),
        identity=identity,
        secret=secret_ref.get("name") or None,
        secret_seen=(meta.get("annotations") or {}).get(SECRET_VERSION_ANNOTATION),
    )  # fmt: skip
    return parsed


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
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    """Deletion: remove (or retain) the owned row, then wake the resources it blocked."""
    runtime = runtime_of(memo)
    retain = spec.get("deletionPolicy") == "Retain"
    try:
        async with runtime.limit:
            result = await runtime.reconciler.delete(
                k8s_owner(uid), retain=retain, ref=ref_of(namespace, name)
            )
    except (DatabaseUnavailable, StoreError) as exc:
        condition = ready(Reason.DATABASE_UNAVAILABLE, f"deletion waits: {exc}", ok=None)
        record(Verdict(condition), body=body, status=status, meta=meta, patch=patch)
        raise kopf.TemporaryError(
            f"finalizer held until the database is back: {exc}",
            delay=backoff(runtime.settings, retry),
        ) from None
    runtime.registry.forget(uid)
    if result.outcome is ReconcileOutcome.DELETED:
        kopf.event(body, type="Normal", reason="Deleted", message="mapping removed")
        # Resources that lost a Conflict over this identity may now take it.
        identity = result.identity
        if identity is None:  # a deleted row always names its identity
            return
        key = (identity.issuer, identity.claim_name, identity.claim_value)
        for ref, other_uid in runtime.registry.holders(key):
            if other_uid == uid:
                continue
            other_ns, _, other_name = ref.partition("/")
            try:
                await runtime.kube.annotate_mapping(
                    other_ns, other_name, {RELEASED_ANNOTATION: uid}
                )
            except JwtKeyMapError as exc:
                logger.warning("could not wake %s after the release: %s", ref, exc)
    elif result.outcome is ReconcileOutcome.RETAINED:
        kopf.event(body, type="Normal", reason="Retained", message="mapping kept (deletionPolicy)")


def _only_resync(reason: str, old: Any, new: Any) -> bool:
    """Whether this update is the drift check's annotation and nothing else."""
    if reason != kopf.Reason.UPDATE or old is None or new is None:
        return False
    return _without_resync(old) == _without_resync(new)


def _without_resync(essence: Mapping[str, Any]) -> dict[str, Any]:
    """kopf's essence of a resource without the resync annotation (nor empty leftovers)."""
    meta = dict(essence.get("metadata") or {})
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if k != RESYNC_ANNOTATION
    }
    meta.pop("annotations", None)
    if annotations:
        meta["annotations"] = annotations
    rest = {k: v for k, v in essence.items() if k != "metadata"}
    return {**rest, "metadata": meta} if meta else rest
