"""kopf's record of the handled state: a digest in the status, read from kopf's old annotation."""

from __future__ import annotations

import copy
import json
from typing import Any

import kopf

from jwtkeymap.core.keys import hash_key
from jwtkeymap.operator.handlers.handled import FIELD, LEGACY_ANNOTATION, HandledDigest, compact
from jwtkeymap.operator.handlers.mapping import _only_resync
from jwtkeymap.operator.resource import RESYNC_ANNOTATION, SECRET_VERSION_ANNOTATION

TOKEN = hash_key("sk-handled")
STORAGE = HandledDigest()


def resource(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "jwtkeymap.io/v1alpha1",
        "kind": "JWTKeyMapping",
        "metadata": {
            "name": "ann",
            "namespace": "ns",
            "uid": "uid-1",
            "resourceVersion": "7",
            "generation": 1,
            "labels": {"team": "a"},
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
                "kopf.zalando.org/update": '{"retries": 1}',
            },
        },
        "spec": {"claim": {"name": "email", "value": "ann@example.com"}, "key": {"hash": TOKEN}},
        "status": {"conditions": []},
    }
    for path, value in changes.items():
        node = body
        *parents, leaf = path.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return body


def build(body: dict[str, Any]) -> Any:
    return STORAGE.build(body=kopf.Body(body))


def test_the_record_is_a_digest_that_shows_no_spec() -> None:
    essence = build(resource())
    assert set(essence) == {"digest"}
    patch = kopf.Patch()
    STORAGE.store(body=kopf.Body(resource()), patch=patch, essence=essence)
    stored = patch["status"][FIELD]
    assert TOKEN not in stored and "ann@example.com" not in stored
    assert "metadata" not in patch  # nothing but the status is patched
    assert STORAGE.fetch(body=kopf.Body(resource(status={FIELD: stored}))) == essence


def test_what_kopf_compares_moves_the_digest_and_nothing_else_does() -> None:
    base = build(resource())
    assert build(resource(spec__key={"hash": hash_key("sk-other")})) != base
    assert build(resource(metadata__labels={"team": "b"})) != base
    woken = resource()
    woken["metadata"]["annotations"][SECRET_VERSION_ANNOTATION] = "12"
    assert build(woken) != base
    # The status, kopf's own progress annotations and kubectl's copy are not the resource's.
    assert build(resource(status={"conditions": [{"type": "Ready"}]})) == base
    progressed = resource()
    progressed["metadata"]["annotations"]["kopf.zalando.org/create"] = '{"retries": 3}'
    progressed["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = "x"
    assert build(progressed) == base


def test_a_resync_annotation_stays_readable_and_apart_from_the_digest() -> None:
    base = build(resource())
    marked = resource()
    marked["metadata"]["annotations"][RESYNC_ANNOTATION] = "2026-11-30T08:00:00Z"
    resynced = build(marked)
    assert resynced["digest"] == base["digest"]
    assert resynced["metadata"]["annotations"] == {RESYNC_ANNOTATION: "2026-11-30T08:00:00Z"}
    assert _only_resync(kopf.Reason.UPDATE, base, resynced)
    changed = copy.deepcopy(marked)
    changed["spec"]["claim"]["value"] = "bob@example.com"
    assert not _only_resync(kopf.Reason.UPDATE, base, build(changed))


def test_an_older_operators_annotation_reads_as_the_same_state() -> None:
    body = resource()
    legacy = kopf.AnnotationsDiffBaseStorage().build(body=kopf.Body(body))
    body["metadata"]["annotations"][LEGACY_ANNOTATION] = json.dumps(legacy)
    upgraded = kopf.Body(body)
    assert STORAGE.fetch(body=upgraded) == STORAGE.build(body=upgraded)
    # The next record drops the old annotation (its copy of the spec) with it.
    patch = kopf.Patch()
    STORAGE.store(body=upgraded, patch=patch, essence=STORAGE.build(body=upgraded))
    assert patch["metadata"]["annotations"] == {LEGACY_ANNOTATION: None}
    assert FIELD in patch["status"]


def test_the_status_record_wins_over_a_leftover_annotation() -> None:
    body = resource(status={FIELD: json.dumps({"digest": "0" * 32})})
    body["metadata"]["annotations"][LEGACY_ANNOTATION] = json.dumps({"spec": {}})
    assert STORAGE.fetch(body=kopf.Body(body)) == {"digest": "0" * 32}


def test_never_handled_is_none() -> None:
    assert STORAGE.fetch(body=kopf.Body(resource())) is None
    assert compact({}) == compact({"metadata": {"annotations": {}, "labels": {}}})


def test_the_quick_essence_is_kopfs_own() -> None:
    """build() skips kopf's deep copy; its digest must be that of kopf's own essence."""
    body = resource(metadata__labels={}, extra={"top": [1, 2]})
    body["metadata"]["annotations"]["jwtkeymap.io/adopt"] = "true"
    untouched = copy.deepcopy(body)
    kopfs = kopf.AnnotationsDiffBaseStorage().build(body=kopf.Body(copy.deepcopy(body)))
    assert build(body) == compact(kopfs)
    assert body == untouched  # read, never changed
    assert build(resource()) == STORAGE.build(body=kopf.Body(resource()), extra_fields=["spec.x"])
