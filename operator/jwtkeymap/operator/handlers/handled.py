"""kopf's record of the last handled state: a digest in the status, not a copy in an annotation.

kopf tells a creation from an update from nothing-new by comparing each object
with the "essence" it stored after handling it last (labels, annotations, spec).
By default it stores that essence whole in an annotation: one more ``PATCH`` of
the resource per handled change (the status has its own subresource, so kopf
cannot fold the two), and a copy of the spec, key hash included, on the object.

This storage keeps a digest of the essence in ``status.lastHandled`` instead, so
it rides on the status patch the handler writes anyway, and shows nothing of
the spec. Only the drift check's resync annotation stays readable in it: the
update handler tells a resync-only change (``DriftRepaired``) from a real one by
comparing the two records without it.

An object handled by an older operator has only kopf's annotation: its essence
is read from there and digested the same way, so an upgrade neither re-creates
nor re-updates anything; the annotation is dropped the next time the object is
handled.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any, Final, cast

import kopf

from jwtkeymap.operator.resource import RESYNC_ANNOTATION

FIELD: Final = "lastHandled"
# What kopf (every version since 1.x, with v1 keys) stored before; read on upgrade.
LEGACY_ANNOTATION: Final = "kopf.zalando.org/last-handled-configuration"
_KOPF_PREFIX: Final = "kopf.zalando.org/"
_LAST_APPLIED: Final = "kubectl.kubernetes.io/last-applied-configuration"
_NOT_ESSENCE: Final = frozenset({"apiVersion", "kind", "metadata", "status"})


class HandledDigest(kopf.DiffBaseStorage):
    """A digest of kopf's essence in ``status.lastHandled`` (with the resync annotation)."""

    def build(
        self,
        *,
        body: kopf.Body,
        extra_fields: Iterable[Any] | None = None,
    ) -> kopf.BodyEssence:
        if extra_fields:  # no handler of ours asks for any: kopf's own way then
            return compact(super().build(body=body, extra_fields=extra_fields))
        # kopf's essence without its deep copy of the whole body (status and managedFields
        # included) on every event: compact() only reads, and keeps nothing of the body.
        essence: dict[str, Any] = {k: v for k, v in body.items() if k not in _NOT_ESSENCE}
        meta = body.get("metadata") or {}
        essence["metadata"] = {
            "labels": meta.get("labels"),
            "annotations": {
                k: v for k, v in (meta.get("annotations") or {}).items() if k != _LAST_APPLIED
            },
        }
        return compact(essence)

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        recorded = (body.get("status") or {}).get(FIELD)
        if isinstance(recorded, str):
            return cast(kopf.BodyEssence, json.loads(recorded))
        legacy = (body.metadata.annotations or {}).get(LEGACY_ANNOTATION)
        if legacy is None:
            return None
        return compact(json.loads(legacy))

    def store(
        self,
        *,
        body: kopf.Body,
        patch: kopf.Patch,
        essence: kopf.BodyEssence,
    ) -> None:
        patch.status[FIELD] = json.dumps(essence, separators=(",", ":"), sort_keys=True)
        if LEGACY_ANNOTATION in (body.metadata.annotations or {}):
            patch.metadata.annotations[LEGACY_ANNOTATION] = None


def compact(essence: Mapping[str, Any]) -> kopf.BodyEssence:
    """kopf's essence as ``{"digest": …}`` plus the resync annotation, if any.

    kopf's own annotations (its progress records, the legacy essence) are left
    out of the digest, as kopf leaves them out of its comparisons.
    """
    meta = dict(essence.get("metadata") or {})
    annotations = {
        k: v for k, v in (meta.pop("annotations", None) or {}).items()
        if not k.startswith(_KOPF_PREFIX)
    }  # fmt: skip
    resync = annotations.pop(RESYNC_ANNOTATION, None)
    if annotations:
        meta["annotations"] = annotations
    if not meta.get("labels"):
        meta.pop("labels", None)
    rest = {k: v for k, v in essence.items() if k != "metadata"}
    if meta:
        rest["metadata"] = meta
    canonical = json.dumps(rest, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    record: dict[str, Any] = {"digest": hashlib.sha256(canonical.encode()).hexdigest()[:32]}
    if resync is not None:
        record["metadata"] = {"annotations": {RESYNC_ANNOTATION: resync}}
    return cast(kopf.BodyEssence, record)
