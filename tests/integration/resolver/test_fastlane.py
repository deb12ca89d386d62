"""The proxy's fast lane (resolver/fastlane.py) answers as the application does.

Every request is sent as raw bytes to two resolvers with the same settings in front of the
same echo upstream: one served as `jwtkeymap resolver` serves it (the fast lane first), one
by a plain aiohttp runner (the application alone). The answers, and what the upstream
received, must be the same; the metrics tell which lane took the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import generate_latest

from jwtkeymap.demo.polling import wait_until
from jwtkeymap.demo.ports import free_port
from jwtkeymap.resolver import lane as lane_module
from jwtkeymap.resolver.handlers import create_app
from jwtkeymap.resolver.lane import LANE_BODY_MAX
from jwtkeymap.resolver.upstream import BUFFERED_BODY_MAX
from support.servers import serve
from support.wire import UNCOMPARED, exchange, in_turn, read_response, request


class Pair:
    """The same settings served twice: with the fast lane, and by the application alone."""

    def __init__(self, lane: Any, app_port: int, echo: Any) -> None:
        self.lane_port, self.app_port, self.echo = lane.port, app_port, echo
        self.counts = lane.service.metrics  # which lane took what (the /metrics counters)

    async def both(
        self, requests: list[bytes], answers: int = 1, *, one_by_one: bool = False
    ) -> tuple[list, list]:
        """Send the same bytes to each (all at once, or ``one_by_one``: each once the last
        is answered); return (lane answers + upstream saw, app's same)."""
        results = []
        for port in (self.lane_port, self.app_port):
            before = len(self.echo.requests)
            if one_by_one:
                answered = await in_turn(port, requests)
            else:
                answered = await exchange(port, requests, answers)
            seen = [_comparable(r) for r in self.echo.requests[before:]]
            results.append(([_strip(a) for a in answered], seen))
        return results[0], results[1]

    def lanes(self) -> tuple[int, dict[str, int]]:
        """Requests the fast lane answered; connections it handed over, by reason."""
        return self.counts.fast_lane, self.counts.handovers


def _strip(answer: tuple[str, dict, bytes]) -> tuple[str, dict, Any]:
    status, headers, body = answer
    kept = {k: v for k, v in headers.items() if k not in UNCOMPARED}
    if headers.get("x-upstream") == "echo" and body:  # the echo names its peer: not compared
        seen = json.loads(body)
        body = _comparable(seen)
        kept.pop("content-length", None)
    return status, kept, body


def _comparable(seen: dict[str, Any]) -> dict[str, Any]:
    # The peer (the resolver's upstream connection) and the forwarded-for port differ.
    return {k: v for k, v in seen.items() if k != "peer"}


@pytest.fixture
async def pair(make_settings, database_url, start_resolver, upstream):
    echo, port = upstream
    settings = make_settings(database_url=database_url, upstream=f"http://127.0.0.1:{port}")
    lane = await start_resolver(settings)
    app_port = free_port()
    async with serve(create_app(settings), port=app_port, runner_class=web.AppRunner):
        yield Pair(lane, app_port, echo)


@pytest.fixture
async def bearer(map_claim, signing_key):
    await map_claim("alice")
    return f"Authorization: Bearer {signing_key.sign(sub='alice')}"


# Requests the fast lane takes: the lane's answer and the application's are the same.
LONG = b"p" * (BUFFERED_BODY_MAX * 3)

TAKEN = {
    "get": lambda auth: request("GET", "/v1/models", auth),
    "post": lambda auth: request("POST", "/v1/chat/completions", auth, body=b'{"model":"m"}'),
    # A long prompt: read whole here too, within the lane's budget for large bodies.
    "long_prompt": lambda auth: request("POST", "/v1/chat/completions", auth, body=LONG),
    "query": lambda auth: request("GET", "/v1/models?a=%20b&c=d", auth),
    "dotted": lambda auth: request("GET", "/openai/deployments/gpt-4.1/chat", auth),
    "head": lambda auth: request("HEAD", "/v1/models", auth),
    "spoofed": lambda auth: request(
        "GET", "/x", auth, "X-JWTKeyMap-Key-Hash: " + "f" * 64, "x_jwtkeymap_team_id: t"
    ),
    "hop_by_hop": lambda auth: request(
        "GET", "/x", auth, "Connection: keep-alive, X-Secret", "X-Secret: 1", "TE: trailers"
    ),
    "forwarded_for": lambda auth: request("GET", "/x", auth, "X-Forwarded-For: 203.0.113.9"),
    "no_token": lambda auth: request("GET", "/v1/models"),
    "bad_token": lambda auth: request("GET", "/v1/models", "Authorization: Bearer a.b.c"),
    "not_bearer": lambda auth: request("GET", "/v1/models", "Authorization: Basic YTpi"),
}


@pytest.mark.parametrize("name", sorted(TAKEN))
async def test_the_fast_lane_answers_as_the_application(pair, bearer, name):
    lane, app = await pair.both([TAKEN[name](bearer)])
    assert lane == app
    status = lane[0][0][0]
    refused = name in ("no_token", "bad_token", "not_bearer")
    assert status.startswith("HTTP/1.1 401" if refused else "HTTP/1.1 200")
    assert pair.lanes() == (1, {})


# Requests the fast lane leaves to the application, with the reason it counts.
LEFT = {
    "http10": (lambda auth: request("GET", "/x", auth, version="1.0"), "not_keepalive"),
    "close": (lambda auth: request("GET", "/x", auth, "Connection: close"), "not_keepalive"),
    "chunked": (
        lambda auth: (
            request("POST", "/x", auth, "Transfer-Encoding: chunked")[:-2]
            + b"\r\n3\r\nabc\r\n0\r\n\r\n"
        ),
        "framing",
    ),
    "large_body": (
        lambda auth: request("POST", "/x", auth, body=b"a" * (LANE_BODY_MAX + 1)),
        "body_size",
    ),
    "healthz": (lambda auth: request("GET", "/healthz", auth), "resolver_path"),
    "check": (lambda auth: request("GET", "/check/v1", auth), "resolver_path"),
    "escaped": (lambda auth: request("GET", "/%68ealthz", auth), "path"),
    "dot_segment": (lambda auth: request("GET", "/a/../healthz", auth), "path"),
    "empty_segment": (lambda auth: request("GET", "//x", auth), "path"),
    "absolute_form": (lambda auth: request("GET", "http://evil.test/x", auth), "path"),
    "two_tokens": (
        lambda auth: request("GET", "/x", auth, "Authorization: Bearer other"),
        "authorizations",
    ),
    "malformed": (lambda auth: b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n", "malformed"),
    # The framings a request smuggler tries: every one is the application's to refuse.
    "length_and_chunked": (
        lambda auth: (
            request("POST", "/x", auth, "Content-Length: 4", "Transfer-Encoding: chunked")
            + b"0\r\n\r\n"
        ),
        "malformed",
    ),
    "two_lengths": (
        lambda auth: request("POST", "/x", auth, "Content-Length: 2", "Content-Length: 3") + b"abc",
        "malformed",
    ),
    "folded_header": (
        lambda auth: request("GET", "/x", auth, "X-Folded: a", " b"),
        "malformed",
    ),
    "bare_lf": (lambda auth: request("GET", "/x", auth).replace(b"\r\n", b"\n"), "malformed"),
}


@pytest.mark.parametrize("name", sorted(LEFT))
async def test_requests_the_lane_leaves_are_answered_by_the_application(pair, bearer, name):
    make, reason = LEFT[name]
    lane, app = await pair.both([make(bearer)])
    assert lane == app
    assert pair.lanes() == (0, {reason: 1})


async def test_pipelined_requests_are_answered_in_order(pair, bearer):
    both = request("GET", "/one", bearer) + request("GET", "/two", bearer)
    lane, app = await pair.both([both], answers=2)
    assert lane == app
    assert [seen["path"] for seen in lane[1]] == ["/one", "/two"]
    assert pair.lanes() == (0, {"pipelined": 1})


async def test_a_request_arriving_in_pieces_stays_in_the_lane(pair, bearer):
    data = request("POST", "/v1/chat/completions", bearer, body=b'{"model": "m"}' * 50)
    pieces = [data[:5], data[5:40], data[40:-300], data[-300:-1], data[-1:]]
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.lane_port)
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.05)  # each piece is its own read: spacing is the point
        status, _, body = await read_response(reader)
    finally:
        writer.close()
    assert status.startswith("HTTP/1.1 200")
    assert json.loads(body)["body_length"] == len(b'{"model": "m"}' * 50)
    assert pair.lanes() == (1, {})


@pytest.fixture
async def one_long_body(make_settings, database_url, start_resolver, upstream, monkeypatch):
    """A resolver whose lane may hold one LONG body at a time: (port, echo, metrics)."""
    monkeypatch.setattr(lane_module, "LANE_BODIES_BYTES", len(LONG) + BUFFERED_BODY_MAX)
    echo, port = upstream
    settings = make_settings(
        database_url=database_url,
        upstream=f"http://127.0.0.1:{port}",
        header_timeout_seconds=1,
    )
    running = await start_resolver(settings)
    return running.port, echo, running.service.metrics


async def _open(port: int, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    return reader, writer


async def test_long_bodies_over_the_lanes_budget_go_to_the_application(one_long_body, bearer):
    port, echo, metrics = one_long_body
    data = request("POST", "/long", bearer, body=LONG)
    # The first connection's body is half here: it holds the budget ...
    first = await _open(port, data[: len(data) // 2])
    await asyncio.sleep(0.1)
    # ... so the second one's goes to the application, which answers it alike.
    second = await _open(port, data)
    status, _, body = await read_response(second[0])
    assert status.startswith("HTTP/1.1 200") and json.loads(body)["body_length"] == len(LONG)
    assert (metrics.fast_lane, metrics.handovers) == (0, {"body_budget": 1})
    first[1].write(data[len(data) // 2 :])
    status, _, body = await read_response(first[0])
    assert status.startswith("HTTP/1.1 200") and json.loads(body)["body_length"] == len(LONG)
    # The budget is back: the next long body stays in the lane.
    third = await _open(port, data)
    assert (await read_response(third[0]))[0].startswith("HTTP/1.1 200")
    assert (metrics.fast_lane, metrics.handovers) == (2, {"body_budget": 1})
    for _, writer in (first, second, third):
        writer.close()
    assert [seen["path"] for seen in echo.requests] == ["/long"] * 3


async def test_a_long_body_slower_than_a_head_goes_to_the_application(one_long_body, bearer):
    # The check comes after the body: a body that takes longer than a head may is not held
    # in the lane (nor refused): the application reads the rest and answers.
    port, echo, metrics = one_long_body
    data = request("POST", "/slow", bearer, body=LONG)
    reader, writer = await _open(port, data[:-100])
    await asyncio.sleep(1.5)  # past the head timeout (1 s)
    assert metrics.handovers == {"body_time": 1}
    writer.write(data[-100:])
    status, _, body = await read_response(reader)
    writer.close()
    assert status.startswith("HTTP/1.1 200") and json.loads(body)["body_length"] == len(LONG)
    # A client that goes away mid-body gives its share back too.
    _, gone = await _open(port, data[:-100])
    await asyncio.sleep(0.1)
    gone.close()
    await asyncio.sleep(0.1)
    reader, writer = await _open(port, data)
    assert (await read_response(reader))[0].startswith("HTTP/1.1 200")
    writer.close()
    assert (metrics.fast_lane, metrics.handovers) == (1, {"body_time": 1})
    assert [seen["path"] for seen in echo.requests] == ["/slow", "/slow"]


async def test_every_answer_of_the_lane_is_counted_once(
    make_settings, database_url, start_resolver, upstream, bearer, signing_key
):
    # The first request of each token is decided; the repeats are remembered answers,
    # which the lane counts after it has acted on them: allowed and refused alike.
    echo, port = upstream
    settings = make_settings(
        database_url=database_url,
        upstream=f"http://127.0.0.1:{port}",
        unregistered_client_behavior="reject",
    )
    lane = await start_resolver(settings)
    stranger = f"Authorization: Bearer {signing_key.sign(sub='stranger')}"
    reader, writer = await asyncio.open_connection("127.0.0.1", lane.port)
    try:
        answers = []
        for data in [request("GET", "/x", bearer)] * 3 + [request("GET", "/x", stranger)] * 2:
            writer.write(data)  # one at a time: pipelined ones are the application's
            answers.append(await read_response(reader))
    finally:
        writer.close()
    assert [a[0].split(" ")[1] for a in answers] == ["200"] * 3 + ["403"] * 2
    assert len(echo.requests) == 3
    metrics = lane.service.metrics
    assert metrics.decisions == {("mapped", ""): 3, ("denied", "unregistered_client"): 2}
    assert sum(metrics.check_seconds.counts) == 5
    assert (metrics.fast_lane, metrics.handovers) == (5, {})


async def test_a_connection_handed_over_keeps_serving(pair, bearer):
    # Fast, then one the application must answer, then fast again on the same connection:
    # from the hand-over on, the application answers them all.
    first = request("GET", "/one", bearer)
    second = request("GET", "/healthz")
    third = request("POST", "/three", bearer, body=b"{}")
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.lane_port)
    try:
        answers = []
        for data in (first, second, third, first):
            writer.write(data)
            answers.append(await read_response(reader))
    finally:
        writer.close()
    assert [a[0].split(" ")[1] for a in answers] == ["200", "200", "200", "200"]
    assert json.loads(answers[1][2]) == {"ok": True}
    assert [seen["path"] for seen in pair.echo.requests] == ["/one", "/three", "/one"]
    assert pair.lanes() == (1, {"resolver_path": 1})


async def test_a_request_sent_while_one_is_answered_waits_its_turn(pair, bearer):
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.lane_port)
    try:
        writer.write(request("GET", "/hold", bearer))
        await writer.drain()
        while pair.echo.held < 1:
            await asyncio.sleep(0.01)
        writer.write(request("GET", "/after", bearer))  # arrives while /hold is in flight
        await writer.drain()
        await asyncio.sleep(0.1)
        assert [seen["path"] for seen in pair.echo.requests] == ["/hold"]
        pair.echo.hold.set()
        held = await read_response(reader)
        after = await read_response(reader)
    finally:
        writer.close()
    assert held[2] == b"released"
    assert json.loads(after[2])["path"] == "/after"
    assert pair.lanes() == (2, {})


# Repeated heads (resolver/heads.py): a head the lane has parsed on a connection, sent
# again with another Content-Length, is not parsed again.


def completion(auth: str, body: bytes) -> bytes:
    return request("POST", "/v1/chat/completions", auth, "Content-Type: application/json",
                   body=body)  # fmt: skip


async def test_a_repeated_head_is_answered_as_the_application_answers_it(pair, bearer):
    sequence = [
        completion(bearer, b'{"model":"m"}'),
        completion(bearer, b'{"model":"m","messages":"' + b"x" * 5000 + b'"}'),  # longer
        completion(bearer, b'{"model":"m"}'),
        completion(bearer, b"{}")[:-2].replace(b"Length: 2", b"Length: 0"),  # empty
        request("GET", "/v1/models", bearer),  # another head: parsed, then known
        request("GET", "/v1/models", bearer),
        request("HEAD", "/v1/models", bearer),
    ]
    lane, app = await pair.both(sequence, one_by_one=True)
    assert lane == app
    assert [seen["body_length"] for seen in lane[1]] == [13, 5027, 13, 0, 0, 0, 0]
    assert pair.lanes() == (7, {})
    assert pair.counts.repeated_heads == 4  # the 2nd to 4th POST, the 2nd GET
    scraped = generate_latest(pair.counts.registry).decode()
    assert "jwtkeymap_fast_lane_repeated_heads_total 4.0" in scraped
    assert "jwtkeymap_fast_lane_requests_total 7.0" in scraped


async def test_a_repeated_heads_body_may_arrive_in_pieces(pair, bearer):
    data = completion(bearer, b'{"model": "m"}' * 50)
    end = data.index(b"\r\n\r\n") + 4
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.lane_port)
    try:
        writer.write(completion(bearer, b"{}"))
        assert (await read_response(reader))[0].startswith("HTTP/1.1 200")
        for piece in (data[:end], data[end : end + 100], data[end + 100 :]):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.05)  # each piece is its own read
        status, _, body = await read_response(reader)
    finally:
        writer.close()
    assert status.startswith("HTTP/1.1 200")
    assert json.loads(body)["body_length"] == len(b'{"model": "m"}' * 50)
    assert pair.lanes() == (2, {}) and pair.counts.repeated_heads == 1


async def test_a_repeated_head_pipelined_with_the_next_request_is_handed_over(pair, bearer):
    first = completion(bearer, b"{}")
    then = completion(bearer, b'{"n":1}') + request("GET", "/two", bearer)
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.lane_port)
    try:
        writer.write(first)
        answers = [await read_response(reader)]
        writer.write(then)  # a known head, its body, and another request in one write
        answers += [await read_response(reader), await read_response(reader)]
    finally:
        writer.close()
    assert [a[0].split(" ")[1] for a in answers] == ["200"] * 3
    seen = pair.echo.requests
    assert [(r["path"], r["body_length"]) for r in seen] == [
        ("/v1/chat/completions", 2),
        ("/v1/chat/completions", 7),
        ("/two", 0),
    ]
    assert pair.lanes() == (1, {"pipelined": 1}) and pair.counts.repeated_heads == 0


async def test_a_length_cannot_smuggle_a_request_past_a_known_head(pair, bearer):
    # The known head's length says 5: what follows those 5 bytes is another request, which
    # the lane does not take as a body; the upstream sees the two requests as sent.
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.lane_port)
    try:
        writer.write(completion(bearer, b"{}"))
        await read_response(reader)
        smuggled = request("GET", "/admin", "Authorization: Bearer stolen")
        writer.write(completion(bearer, b"{}")[:-2].replace(b"Length: 2", b"Length: 5")
                     + b'{"a"}' + smuggled)  # fmt: skip
        answers = [await read_response(reader), await read_response(reader)]
    finally:
        writer.close()
    assert [a[0].split(" ")[1] for a in answers] == ["200", "401"]
    assert pair.lanes() == (1, {"pipelined": 1})
    assert [(r["path"], r["body_length"]) for r in pair.echo.requests] == [
        ("/v1/chat/completions", 2),
        ("/v1/chat/completions", 5),
    ]


async def test_a_repeated_head_is_checked_again_each_time(
    make_settings, database_url, start_resolver, upstream, map_claim, signing_key, db, http
):
    # The token in a known head is the same: its answer is still looked up per request,
    # so a re-pointed or disabled mapping is seen by the next repeat as by any request.
    echo, port = upstream
    rita, other = await map_claim("rita"), await map_claim("other")
    r = await start_resolver(
        make_settings(
            database_url=database_url,
            upstream=f"http://127.0.0.1:{port}",
            unregistered_client_behavior="reject",
        )
    )
    await r.wait_ready(http)
    data = request("GET", "/x", f"Authorization: Bearer {signing_key.sign(sub='rita')}")
    received = r.service.bus.stats.received

    async def changed(sql: str, *args: object) -> None:
        before = received.get(("postgres", "identity"), 0)
        await db.execute(sql, *args)
        await wait_until(
            lambda: received.get(("postgres", "identity"), 0) > before, what="notification"
        )

    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    try:
        answers = []
        for change in (
            None,
            ('UPDATE "LiteLLM_JWTKeyMapping" SET token = $1 WHERE jwt_claim_value = $2',
             other.key.token_hash, "rita"),
            ("UPDATE \"LiteLLM_JWTKeyMapping\" SET is_active = false "
             "WHERE jwt_claim_value = 'rita'",),
        ):  # fmt: skip
            if change:
                await changed(*change)
            writer.write(data)
            answers.append(await read_response(reader))
    finally:
        writer.close()
    assert [a[0].split(" ")[1] for a in answers] == ["200", "200", "403"]
    assert json.loads(answers[2][2])["error"]["reason"] == "mapping_inactive"
    assert [echo.headers_of(i)["x-jwtkeymap-key-hash"] for i in (0, 1)] == [
        [rita.key.token_hash],
        [other.key.token_hash],
    ]
    assert r.service.metrics.repeated_heads == 2


# A raw upstream (its handler's bytes, as a test writes them), the lane in front of it, and
# a client connection to the lane.
RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
def lane_in_front_of(make_settings, database_url, start_resolver):
    @contextlib.asynccontextmanager
    async def start(answer: RawHandler) -> AsyncIterator[tuple[Any, Any, Any]]:
        upstream = await asyncio.start_server(answer, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{upstream.sockets[0].getsockname()[1]}"
        try:
            lane = await start_resolver(make_settings(database_url=database_url, upstream=url))
            reader, writer = await asyncio.open_connection("127.0.0.1", lane.port)
            try:
                yield lane, reader, writer
            finally:
                writer.close()
        finally:
            upstream.close()

    return start


# A response's head goes to the client as it came (rebuilt, "X-A:1" would read "X-A: 1")
# unless a header in it stays on its hop.
PLAIN = b"HTTP/1.1 200 OK\r\nx-litellm-b: 2\r\nContent-Type: application/json\r\nX-A:1\r\n"
HOP = b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"


@pytest.mark.parametrize(("head", "client_sees"), [
    (PLAIN, PLAIN),
    (HOP, b"HTTP/1.1 200 OK\r\n"),
], ids=["as_it_came", "rebuilt"])  # fmt: skip
async def test_a_response_head_reaches_the_client_as_it_came(
    lane_in_front_of, bearer, head, client_sees
):
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(head + b"Content-Length: 2\r\n\r\n")  # uvicorn: head, then body
            await writer.drain()
            writer.write(b"{}")

    async with lane_in_front_of(answer) as (_, reader, writer):
        writer.write(request("GET", "/x", bearer))
        got = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        body = await asyncio.wait_for(reader.readexactly(2), 10)
    assert body == b"{}"
    assert got.startswith(client_sees)
    assert got.endswith(b"Content-Length: 2\r\n\r\n")
    if head is HOP:
        assert b"keep-alive" not in got.lower() and b"x-hop" not in got.lower()


WHOLE = b"HTTP/1.1 200 OK\r\nX-A:1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


@pytest.mark.parametrize(("answer", "passed"), [
    (WHOLE, True),
    (WHOLE.replace(b"X-A:1", b"X-A: 1\r\nKeep-Alive: timeout=5"), False),
], ids=["may_pass", "stays_on_its_hop"])  # fmt: skip
async def test_a_response_whole_in_one_read_goes_to_the_client_as_it_came(
    lane_in_front_of, bearer, answer, passed
):
    async def answer_whole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(answer)

    got = []
    async with lane_in_front_of(answer_whole) as (lane, reader, writer):
        for _ in range(2):  # the connection goes on after a passed response
            writer.write(request("GET", "/x", bearer))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            got.append(head + await asyncio.wait_for(reader.readexactly(2), 10))
    metrics = lane.service.metrics
    assert metrics.passed_responses == (2 if passed else 0)
    if passed:
        assert got == [answer, answer]  # byte for byte: "X-A:1" is not rewritten
    else:
        assert all(b"keep-alive" not in g.lower() and g.endswith(b"{}") for g in got)


async def test_a_passed_response_the_parser_refuses_cuts_the_client_off(lane_in_front_of, bearer):
    # Told passable by its bytes, refused by aiohttp's parser (a NUL in a value): the client
    # has it already, so its connection is cut; no answer (a 502) follows those bytes.
    refused = WHOLE.replace(b"X-A:1", b"X-A: a\x00b")

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(refused)
        await reader.read()

    async with lane_in_front_of(answer) as (lane, reader, writer):
        writer.write(request("GET", "/x", bearer))
        got = await asyncio.wait_for(reader.read(), 10)  # until the resolver closes
    assert got == refused
    assert lane.service.metrics.upstream == {"error": 1}
