"""Validating admission for JWTKeyMapping: refuse what the reconcile would refuse, earlier.

Three rules the CRD schema cannot express: the claim name must be on the
configured allow-list; a JWTKeyMappingPolicy must allow the namespace to declare
the identity (403 otherwise); and an (issuer, claim name, claim value) identity
may be declared by one resource only (409, without naming it: it may be another
tenant's). The policy comes before the duplicate check, so a namespace cannot
probe which identities outside its policy are mapped. The operator enforces
the policy again, and the database's unique index stays the final arbiter (two
creations racing through different replicas are caught there and reported as a
Conflict condition).

The webhook reads the policies, the namespace's labels and the mappings from the
API for each review, not from the operator's kopf indexes: every replica serves
the webhook, but kopf fills the indexes only on the active one (a standby is
paused by peering and watches nothing, so its indexes are empty or stale), and
even there a watch delivers a new policy a moment after `kubectl apply` returns.
Reviews are rare (a mapping created or changed); if a read fails, the review is
refused (503), never admitted.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

import kopf
from aiohttp import web

from jwtkeymap.core.settings import Settings
from jwtkeymap.operator.handlers.indexes import IdentityHolder, Tenancy, indexed
from jwtkeymap.operator.handlers.registry import IdentityKey
from jwtkeymap.operator.handlers.runtime import runtime_of
from jwtkeymap.operator.kube import Kube, KubeUnavailable
from jwtkeymap.operator.resource import (
    GROUP,
    PLURAL,
    VERSION,
    SpecError,
    claim_name_allowed,
    identity_of,
    parse_spec,
    ref_of,
)
from jwtkeymap.operator.tenancy import POLICY_PLURAL

HANDLER_ID: Final = "validate-mapping"


def check(
    spec: Mapping[str, Any],
    *,
    namespace: str | None,
    name: str | None,
    uid: str | None,
    settings: Settings,
    taken: Mapping[IdentityKey, Iterable[IdentityHolder]],
    tenancy: Tenancy,
) -> None:
    """Raise kopf.AdmissionError when the spec must be refused.

    ``taken`` maps canonical (issuer, claim name, claim value) to the
    ``(namespace/name, uid)`` of the resources declaring it (the kopf index).
    """
    try:
        parsed = parse_spec(spec)
        identity = identity_of(parsed, settings)
    except SpecError as exc:
        raise kopf.AdmissionError(str(exc), code=422) from None
    if not claim_name_allowed(identity.claim_name, settings):
        allowed = ", ".join(settings.allowed_claim_names)
        raise kopf.AdmissionError(
            f"spec.claim.name: claim {identity.claim_name!r} is not allowed here "
            f"(allowed: {allowed})",
            code=422,
        )
    admission = tenancy.admit(namespace or "", identity)
    if not admission.allowed:
        raise kopf.AdmissionError(admission.reason, code=403)
    me = ref_of(namespace, name)
    key = (identity.issuer, identity.claim_name, identity.claim_value)
    for ref, holder_uid in taken.get(key, ()):  # refs are compared, never shown
        if ref != me and holder_uid != uid:
            scope = f" for issuer {identity.issuer}" if identity.issuer else ""
            raise kopf.AdmissionError(
                f"{identity.claim_name}={identity.claim_value}{scope} is already mapped by "
                "another JWTKeyMapping",
                code=409,
            )


def spec_unchanged(old: Mapping[str, Any] | None, spec: Mapping[str, Any]) -> bool:
    """Whether an UPDATE leaves the spec as it was (``old`` is the stored object, if any)."""
    return old is not None and dict(old.get("spec") or {}) == dict(spec)


async def validate(
    spec: kopf.Spec,
    namespace: str | None,
    name: str,
    uid: str,
    *,
    config: Settings,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    """Admit a JWTKeyMapping CREATE or UPDATE, or raise kopf.AdmissionError."""
    if spec_unchanged(kwargs.get("old"), spec):
        # Finalizers, annotations, a deletion: never blocked, or a resource denied after it
        # was stored (a policy narrowed, a webhook not yet called) could not even be deleted.
        return
    taken, tenancy = await read_indexes(
        runtime_of(memo).kube, namespace or "", config, claim_value=claim_value_of(spec)
    )
    check(
        spec,
        namespace=namespace,
        name=name,
        uid=uid,
        settings=config,
        taken=taken,
        tenancy=tenancy,
    )


async def read_indexes(
    kube: Kube, namespace: str, settings: Settings, *, claim_value: str | None = None
) -> tuple[Mapping[IdentityKey, Iterable[IdentityHolder]], Tenancy]:
    """What the operator's indexes hold for one review, read fresh from the API.

    Only the mappings of the same claim value can conflict, so with a claim value only
    those are listed (a field selector): a review costs the same with 50,000 mappings.
    """
    selector = (
        f"spec.claim.value={escape_field(claim_value)}" if isinstance(claim_value, str) else None
    )
    try:
        policies, labels, mappings = await asyncio.gather(
            kube.list_cluster_objects(POLICY_PLURAL),
            kube.namespace_labels(namespace),
            kube.list_cluster_objects(PLURAL, field_selector=selector),
        )
    except KubeUnavailable as exc:
        raise kopf.AdmissionError(
            f"cannot check the tenancy policies now ({exc}); retry", code=503
        ) from None
    return indexed(policies, namespace, labels, mappings, settings)


def claim_value_of(spec: Mapping[str, Any]) -> str | None:
    """The spec's claim value when the spec has the shape to hold one (check() judges it)."""
    try:
        claim = spec.get("claim")
        value = claim.get("value") if isinstance(claim, Mapping) else None
    except TypeError:  # kopf's view of a spec that is not an object
        return None
    return value if isinstance(value, str) else None


def escape_field(value: str) -> str:
    """A value escaped for a field selector (``\\``, ``,`` and ``=`` are its syntax)."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


def register_validation(registry: kopf.OperatorRegistry, settings: Settings) -> None:
    """Register the validating webhook handler (served only when a webhook server is set)."""
    kopf.on.validate(
        GROUP, VERSION, PLURAL, registry=registry, id=HANDLER_ID, operations=["CREATE", "UPDATE"]
    )(functools.partial(validate, config=settings))


def malformed_review(body: bytes) -> str | None:
    """Say what makes ``body`` unusable as an AdmissionReview request, or None when it is one."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "the body is not a UTF-8 JSON document"
    request = data.get("request") if isinstance(data, dict) else None
    if not isinstance(request, dict):
        return "not an AdmissionReview: no request object"
    if not isinstance(request.get("uid"), str):
        return "request.uid is missing"
    for field in ("kind", "resource"):
        if not isinstance(request.get(field), dict):
            return f"request.{field} is missing"
    objects = [request.get("object"), request.get("oldObject")]
    if any(o is not None and not isinstance(o, dict) for o in objects) or not any(objects):
        return "request.object is missing or not an object"
    return None


class WebhookServer(kopf.WebhookServer):
    """kopf's webhook server, answering a malformed review with 400 instead of a 500.

    Only the apiserver should call it, and it sends well-formed reviews; but the port
    is reachable inside the cluster, and kopf indexes into the body unchecked.
    """

    @staticmethod
    async def _serve(fn: Any, request: web.Request) -> web.Response:
        problem = malformed_review(await request.read())
        if problem is not None:
            raise web.HTTPBadRequest(reason=problem)
        return await kopf.WebhookServer._serve(fn, request)
