"""One reconcile attempt, classified: the Ready condition it earns and how kopf goes on.

:func:`attempt` turns every expected failure (bad spec, missing Secret, database
down, conflict) into a :class:`Verdict` instead of an exception, and
:func:`record` writes that verdict into the status patch, emitting an Event only
on a transition, so a resume or a timer that finds nothing new writes nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

import kopf

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.errors import DatabaseUnavailable, SchemaError, StoreError
from jwtkeymap.core.owners import k8s_owner
from jwtkeymap.core.reconcile.desired import (
    Adoptable,
    DesiredMapping,
    ReconcileOutcome,
    ReconcileResult,
)
from jwtkeymap.operator.handlers.indexes import Tenancy, indexed
from jwtkeymap.operator.handlers.runtime import Runtime
from jwtkeymap.operator.kube import KubeUnavailable
from jwtkeymap.operator.resource import (
    MappingSpec,
    SpecError,
    desired_mapping,
    identity_of,
    parse_spec,
    ref_of,
)
from jwtkeymap.operator.secrets import SecretKeyMissing, SecretNotFound, key_hash_from_data
from jwtkeymap.operator.status import (
    READY,
    Condition,
    Reason,
    is_current,
    is_transition,
    now_rfc3339,
    set_condition,
)
from jwtkeymap.operator.tenancy import POLICY_PLURAL, Admission


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A reconcile attempt's Ready condition, and how kopf should go on."""

    condition: Condition
    result: ReconcileResult | None = None
    retry: bool = False  # temporary: kopf retries with backoff
    permanent: bool = False  # needs a change to the resource (or its Secret)
    digest: str | None = None  # the row it is synced to (Synced only)


def ready(reason: Reason, message: str, ok: bool | None = False) -> Condition:
    """The Ready condition with this reason (``ok`` None is Unknown)."""
    return Condition(type=READY, status=ok, reason=reason.value, message=message)


async def desired_for(
    runtime: Runtime,
    spec: MappingSpec,
    meta: Mapping[str, Any],
    namespace: str,
    *,
    may_adopt: frozenset[Adoptable] = frozenset(),
) -> DesiredMapping:
    """Resolve the key hash (reading the Secret when referenced) and build the desired mapping."""
    if spec.key.secret_ref is not None:
        ref = spec.key.secret_ref
        data = await runtime.kube.secret_data(namespace, ref.name)
        token_hash = key_hash_from_data(data, secret=ref_of(namespace, ref.name), key=ref.key)
    elif spec.key.hash is not None:
        token_hash = spec.key.hash
    else:  # the spec model requires exactly one of the two
        raise SpecError("spec.key", "exactly one of key.secretRef or key.hash must be set")
    return desired_mapping(
        spec,
        runtime.settings,
        token_hash=token_hash,
        owner=k8s_owner(str(meta["uid"])),
        ref=ref_of(namespace, meta.get("name")),
        annotations=meta.get("annotations"),
        may_adopt=may_adopt,
    )


async def confirm_denial(
    runtime: Runtime, namespace: str, identity: MappingIdentity, denied: Admission
) -> Admission:
    """The decision again from a fresh API read, before a denial is made permanent.

    kopf's indexes can be behind: a policy created a moment ago, or a replica that has
    just taken over from another and is still listing. Denials are rare, so they are
    confirmed; if the API cannot be read, the indexes' denial stands (the drift check and
    any change of the resource retry it).
    """
    try:
        policies, labels = await asyncio.gather(
            runtime.kube.list_cluster_objects(POLICY_PLURAL),
            runtime.kube.namespace_labels(namespace),
        )
    except KubeUnavailable:
        return denied
    _, fresh = indexed(policies, namespace, labels, (), runtime.settings)
    return fresh.admit(namespace, identity)


async def attempt(
    runtime: Runtime,
    spec_body: Mapping[str, Any],
    meta: Mapping[str, Any],
    namespace: str,
    *,
    tenancy: Tenancy,
    resuming: bool = False,
    parsed: MappingSpec | None = None,
) -> Verdict:
    """Reconcile one resource and classify the result; never raises for expected failures.

    ``parsed`` is ``spec_body`` already parsed, if the caller has it. A resume first
    looks for its row in the resumes' shared bulk read (``Resync``).
    """
    try:
        spec = parsed if parsed is not None else parse_spec(spec_body)
        # Before the Secret is read: a namespace learns nothing through a denied mapping.
        identity = identity_of(spec, runtime.settings)
        admission = tenancy.admit(namespace, identity)
        if not admission.allowed:
            admission = await confirm_denial(runtime, namespace, identity, admission)
        if not admission.allowed:
            # Permanent: retried on a change and by the drift check (a new policy is seen then).
            return Verdict(ready(Reason.POLICY_DENIED, admission.reason), permanent=True)
        want = await desired_for(runtime, spec, meta, namespace, may_adopt=admission.may_adopt)
        known = await runtime.resync.known(want.owner) if resuming else None
        async with runtime.limit:
            result = await runtime.reconciler.apply(want, known=known)
    except SpecError as exc:
        return Verdict(ready(Reason.INVALID_SPEC, str(exc)), permanent=True)
    except SchemaError as exc:
        return Verdict(ready(Reason.INVALID_SPEC, str(exc)), permanent=True)
    except SecretNotFound as exc:
        return Verdict(ready(Reason.SECRET_NOT_FOUND, str(exc)), permanent=True)
    except SecretKeyMissing as exc:
        return Verdict(ready(Reason.SECRET_KEY_MISSING, str(exc)), permanent=True)
    except KubeUnavailable as exc:
        return Verdict(ready(Reason.SECRET_UNREADABLE, str(exc), ok=None), retry=True)
    except (DatabaseUnavailable, StoreError) as exc:
        return Verdict(ready(Reason.DATABASE_UNAVAILABLE, str(exc), ok=None), retry=True)
    if result.outcome is ReconcileOutcome.CONFLICT:
        # No retry loop: the holder's deletion wakes this resource (RELEASED_ANNOTATION),
        # and the drift check tries again anyway.
        return Verdict(ready(Reason.CONFLICT, result.message), result=result)
    if result.outcome is ReconcileOutcome.POLICY_DENIED:
        return Verdict(ready(Reason.POLICY_DENIED, result.message), result=result)
    if result.outcome is ReconcileOutcome.KEY_NOT_FOUND:
        return Verdict(ready(Reason.KEY_NOT_FOUND, result.message), result=result, retry=True)
    identity = result.identity or want.identity
    scope = f" for issuer {identity.issuer}" if identity.issuer else ""
    # The same text whatever was done, so a resume or a timer finds the status current
    # and writes nothing; what changed is told by the Event and lastSyncTime.
    message = (
        f"{identity.claim_name}={identity.claim_value}{scope} is mapped to key "
        f"{result.key_fingerprint}"
    )
    return Verdict(ready(Reason.SYNCED, message, ok=True), result=result, digest=want.digest())


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
    transition = is_transition(conditions, verdict.condition)
    if not wrote and is_current(conditions, verdict.condition, generation=generation):
        return  # nothing to say: no status write at all (resume and timers stay free)
    patch.status["conditions"] = set_condition(
        conditions, verdict.condition, generation=generation, now=now
    )
    patch.status["observedGeneration"] = generation
    if result is not None and result.mapping_id is not None:
        patch.status["mappingId"] = result.mapping_id
    if result is not None and result.key_fingerprint is not None:
        patch.status["keyFingerprint"] = result.key_fingerprint
    if wrote or transition:
        patch.status["lastSyncTime"] = now_rfc3339(now)
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
