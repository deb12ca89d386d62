"""Handlers of JWTKeyMapping resources: reconcile on change, repair drift, release on deletion.

* create / update / resume → resolve the key hash (Secret or spec), reconcile,
  write the Ready condition; retry with backoff when the key is missing or the
  database is down;
* a timer re-reconciles every resource, restoring rows changed behind our back;
* deletion → the owned row is removed (or retained) before the finalizer is
  released; a database outage holds the finalizer until it is back.
"""

from __future__ import annotations

from typing import Any, Final, cast

import kopf

from jwtkeymap.core.errors import DatabaseUnavailable, JwtKeyMapError, StoreError
from jwtkeymap.core.owners import k8s_owner
from jwtkeymap.core.reconcile.desired import ReconcileOutcome
from jwtkeymap.operator.handlers.indexes import BY_IDENTITY, ByIdentity, tenancy_of
from jwtkeymap.operator.handlers.runtime import backoff, runtime_of
from jwtkeymap.operator.handlers.verdicts import Verdict, attempt, ready, record
from jwtkeymap.operator.resource import RELEASED_ANNOTATION, ref_of
from jwtkeymap.operator.status import (
    Reason,
)

# Distinct ids: kopf tracks progress per id, and a resume sharing its id with the
# update handler would mark a change made while we were down as already handled.
RESUME_ID: Final = "resume"
CREATE_ID: Final = "create"
UPDATE_ID: Final = "update"
DRIFT_ID: Final = "drift"
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
    **kwargs: Any,
) -> None:
    """Create, update, resume: reconcile the resource and record its Ready condition."""
    runtime = runtime_of(memo)
    verdict = await attempt(runtime, spec, meta, namespace or "", tenancy=tenancy_of(kwargs))
    record(verdict, body=body, status=status, meta=meta, patch=patch)
    if verdict.retry:
        raise kopf.TemporaryError(verdict.condition.message, delay=backoff(runtime.settings, retry))
    if verdict.permanent:
        # Retried when the resource or its Secret changes, and by the drift timer.
        raise kopf.PermanentError(verdict.condition.message)


async def drift(
    body: kopf.Body,
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    namespace: str | None,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    """Timer: reconcile again, restoring a row changed outside the operator."""
    if meta.get("deletionTimestamp"):
        return
    tenancy = tenancy_of(kwargs)
    verdict = await attempt(runtime_of(memo), spec, meta, namespace or "", tenancy=tenancy)
    record(verdict, body=body, status=status, meta=meta, patch=patch, drift=True)


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
    if result.outcome is ReconcileOutcome.DELETED:
        kopf.event(body, type="Normal", reason="Deleted", message="mapping removed")
        # Resources that lost a Conflict over this identity may now take it.
        identity = result.identity
        if identity is None:  # a deleted row always names its identity
            return
        taken = cast(ByIdentity, kwargs[BY_IDENTITY])
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
    elif result.outcome is ReconcileOutcome.RETAINED:
        kopf.event(body, type="Normal", reason="Retained", message="mapping kept (deletionPolicy)")
