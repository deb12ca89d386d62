"""What the hardened webhook server refuses before kopf sees it."""

from __future__ import annotations

import json

import pytest

from jwtkeymap.operator.webhooks import malformed_review

GOOD = {
    "request": {
        "uid": "u",
        "kind": {"kind": "Pod"},
        "resource": {"resource": "pods"},
        "object": {"metadata": {}},
    }
}


def with_request(**fields: object) -> bytes:
    return json.dumps({"request": {**GOOD["request"], **fields}}).encode()


@pytest.mark.parametrize(
    "body",
    [
        b"\xff",
        b"",
        b"[1]",
        b'{"kind": "AdmissionReview"}',
        b'{"request": [1]}',
        with_request(uid=None),
        with_request(kind="Pod"),
        with_request(object="a pod"),
        with_request(object=None),
    ],
)
def test_malformed_reviews_are_named(body: bytes) -> None:
    assert malformed_review(body)


def test_a_well_formed_review_passes() -> None:
    assert malformed_review(json.dumps(GOOD).encode()) is None
    # A DELETE carries only the old object.
    assert malformed_review(with_request(object=None, oldObject={"metadata": {}})) is None
