"""Which headers the reverse proxy forwards each way: pure logic."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from jwtkeymap.core.keys import KeyIdentity
from jwtkeymap.core.policy import Decision, Verdict
from jwtkeymap.resolver import check
from jwtkeymap.resolver.proxy import downstream_response_headers, upstream_request_headers

ALLOW = check.answer(Decision(Verdict.MAPPED, key=KeyIdentity(token_hash="e" * 64, team_id="t")))


def incoming(**extra: str) -> CIMultiDictProxy[str]:
    headers = CIMultiDict(
        [
            ("Host", "gw.example"),
            ("Authorization", "Bearer tok"),
            ("Content-Type", "application/json"),
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "1"),
            ("Transfer-Encoding", "chunked"),
            ("X-JWTKeyMap-Team-Id", "spoofed"),
            ("x-jwtkeymap-whatever", "spoofed"),
            ("Accept", "text/event-stream"),
        ]
    )
    headers.extend(extra)
    return CIMultiDictProxy(headers)


def test_request_headers_are_cleaned_and_identity_added():
    out = upstream_request_headers(
        incoming(), ALLOW, strip_authorization=False, client="10.0.0.1", scheme="http"
    )
    assert out["Authorization"] == "Bearer tok"
    assert out["Content-Type"] == "application/json"
    assert out["Accept"] == "text/event-stream"
    assert out.getall("x-jwtkeymap-team-id") == ["t"]
    assert out["x-jwtkeymap-key-hash"] == "e" * 64
    assert "x-jwtkeymap-whatever" not in out
    for gone in (
        "Host",
        "Connection",
        "X-Hop",
        "Transfer-Encoding",
        "x-envoy-auth-headers-to-remove",
    ):
        assert gone not in out, gone
    assert out["X-Forwarded-For"] == "10.0.0.1"
    assert out["X-Forwarded-Host"] == "gw.example"
    assert out["X-Forwarded-Proto"] == "http"


def test_forwarded_for_is_appended_and_authorization_can_be_stripped():
    out = upstream_request_headers(
        incoming(**{"X-Forwarded-For": "1.2.3.4"}),
        ALLOW,
        strip_authorization=True,
        client="10.0.0.1",
        scheme="https",
    )
    assert "Authorization" not in out
    assert out["X-Forwarded-For"] == "1.2.3.4, 10.0.0.1"


def test_response_hop_by_hop_headers_are_dropped_others_kept():
    up = CIMultiDictProxy(
        CIMultiDict(
            [
                ("Content-Type", "text/event-stream"),
                ("Content-Encoding", "gzip"),
                ("Set-Cookie", "a=1"),
                ("Set-Cookie", "b=2"),
                ("Connection", "close, X-Up-Hop"),
                ("X-Up-Hop", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Transfer-Encoding", "chunked"),
            ]
        )
    )
    out = downstream_response_headers(up)
    assert out.getall("Set-Cookie") == ["a=1", "b=2"]
    assert out["Content-Encoding"] == "gzip"
    for gone in ("Connection", "X-Up-Hop", "Keep-Alive", "Transfer-Encoding"):
        assert gone not in out
