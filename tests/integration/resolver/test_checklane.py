"""Check mode's fast lane (resolver/checklane.py) answers as the application does.

Every check is sent as raw bytes to two resolvers in check mode with the same settings and
signing key: one served as `jwtkeymap resolver` serves it (the check's lane first), one by
a plain aiohttp runner (the application alone). The answers must be the same, the signed
assertion saying the same; the metrics tell which lane took the check.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ed25519

from jwtkeymap.demo.ports import free_port
from jwtkeymap.resolver.handlers import create_app
from support.assertion_keys import write_signing_keys
from support.servers import serve
from support.wire import UNCOMPARED, exchange, in_turn, request

ASSERTION = "x-jwtkeymap-assertion"
# Claims that name the moment an assertion was signed: the two servers sign apart.
MOMENT = {"iat", "exp"}


class Pair:
    """Check mode served twice: with the check's lane, and by the application alone."""

    def __init__(self, lane: Any, app_port: int) -> None:
        self.lane_port, self.app_port = lane.port, app_port
        self.service = lane.service

    async def both(self, requests: list[bytes], *, pipelined: int = 0) -> tuple[list, list]:
        """The answers of each to the same bytes on one connection: each request once the
        last is answered, or all at once and ``pipelined`` answers read."""
        results = []
        for port in (self.lane_port, self.app_port):
            if pipelined:
                answered = await exchange(port, requests, pipelined)
            else:
                answered = await in_turn(port, requests)
            results.append([_comparable(a) for a in answered])
        return results[0], results[1]

    def lanes(self) -> tuple[int, int, dict[str, int]]:
        """Checks the lane answered, of those with a repeated head; handovers by reason."""
        metrics = self.service.metrics
        return metrics.fast_lane, metrics.repeated_heads, metrics.handovers


def _comparable(answer: tuple[str, dict, bytes]) -> tuple[str, dict, Any]:
    status, headers, body = answer
    kept = {k: v for k, v in headers.items() if k not in UNCOMPARED}
    if ASSERTION in kept:  # what it says, but for when it was signed
        claims = jwt.decode(kept[ASSERTION], options={"verify_signature": False})
        kept[ASSERTION] = {k: v for k, v in claims.items() if k not in MOMENT}
    return status, kept, json.loads(body) if body else b""


@pytest.fixture
async def pair(make_settings, database_url, start_resolver, tmp_path):
    write_signing_keys(tmp_path / "keys.pem", ed25519.Ed25519PrivateKey.generate())
    settings = make_settings(
        database_url=database_url,
        unregistered_client_behavior="reject",
        assertion={"signing_key_file": tmp_path / "keys.pem"},
    )
    lane = await start_resolver(settings)
    app_port = free_port()
    async with serve(create_app(settings), port=app_port, runner_class=web.AppRunner):
        yield Pair(lane, app_port)


@pytest.fixture
async def bearer(map_claim, signing_key):
    await map_claim("alice")
    return f"Authorization: Bearer {signing_key.sign(sub='alice')}"


TAKEN = {
    "check": lambda auth: request("GET", "/check", auth),
    # Envoy's ext_authz: the check's path prefix, then the client's method and path.
    "envoy": lambda auth: request("POST", "/check/v1/chat/completions", auth, "Content-Length: 0"),
    "with_body": lambda auth: request("POST", "/check/v1/chat/completions", auth, body=b"{}"),
    "query": lambda auth: request("GET", "/check/v1/models?a=b", auth),
    # The client's identity headers are not the check's concern: the answer names them.
    "spoofed": lambda auth: request("GET", "/check", auth, "X-JWTKeyMap-Key-Hash: " + "f" * 64),
    "no_token": lambda auth: request("GET", "/check"),
    "bad_token": lambda auth: request("GET", "/check", "Authorization: Bearer a.b.c"),
    "not_bearer": lambda auth: request("GET", "/check", "Authorization: Basic YTpi"),
}


@pytest.mark.parametrize("name", sorted(TAKEN))
async def test_the_check_lane_answers_as_the_application(pair, bearer, name):
    data = TAKEN[name](bearer)
    # Twice on one connection: the second is the remembered answer, from a repeated head.
    lane, app = await pair.both([data, data])
    assert lane == app
    assert lane[0] == lane[1]
    fast, repeated, handovers = pair.lanes()
    assert (fast, handovers) == (2, {})
    assert repeated == 1


async def test_an_allowed_check_carries_the_identity_and_a_reused_assertion(pair, bearer):
    data = TAKEN["envoy"](bearer)
    answers = await in_turn(pair.lane_port, [data] * 3)
    status, headers, _ = answers[0]
    assert status == "HTTP/1.1 200 OK"
    assert headers["x-jwtkeymap-decision"] == "mapped"
    assert len(headers["x-jwtkeymap-key-hash"]) == 64
    assert "date" in headers and "server" not in headers  # (no version to show)
    # The same prepared answer serves the next checks: one assertion, signed once.
    assert {a[1][ASSERTION] for a in answers} == {headers[ASSERTION]}
    assert pair.service.signer.signed == 1


async def test_a_refused_token_is_refused_on_every_check(pair, signing_key, map_claim):
    await map_claim("bob", active=False)
    data = request("GET", "/check", f"Authorization: Bearer {signing_key.sign(sub='bob')}")
    lane, app = await pair.both([data] * 3)
    assert lane == app
    assert len({answer[0] for answer in lane}) == 1
    assert not lane[0][0].startswith("HTTP/1.1 200")


HANDED_OVER = {
    # The application's own paths, and checks the lane leaves to it.
    "healthz": (lambda auth: request("GET", "/healthz"), "other_path"),
    "jwks": (lambda auth: request("GET", "/.well-known/jwks.json"), "other_path"),
    "two_authorizations": (
        lambda auth: request("GET", "/check", auth, "Authorization: Bearer other"),
        "authorizations",
    ),
    "http10": (lambda auth: request("GET", "/check", auth, version="1.0"), "not_keepalive"),
    "escaped_path": (lambda auth: request("GET", "/check/a%2Fb", auth), "path"),
    "head": (lambda auth: request("HEAD", "/check", auth), "method"),
}


@pytest.mark.parametrize("name", sorted(HANDED_OVER))
async def test_what_the_check_lane_leaves_is_answered_by_the_application(pair, bearer, name):
    build, reason = HANDED_OVER[name]
    lane, app = await pair.both([build(bearer)])
    assert lane == app
    assert pair.lanes() == (0, 0, {reason: 1})


async def test_pipelined_checks_are_answered_in_order(pair, bearer, signing_key):
    # Two checks in one write: the application reads them both, as before.
    stranger = request("GET", "/check", f"Authorization: Bearer {signing_key.sign(sub='eve')}")
    lane, app = await pair.both([TAKEN["check"](bearer) + stranger], pipelined=2)
    assert lane == app
    assert [answer[0] for answer in lane] == ["HTTP/1.1 200 OK", "HTTP/1.1 403 Forbidden"]
    assert pair.lanes()[2] == {"pipelined": 1}
