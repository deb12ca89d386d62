"""The proxy's connections to its upstream (resolver/upstream.py) against scripted servers.

Each server reads one request at a time and writes the bytes a test gives it, so framing,
interim responses and early closes are exactly what the test says.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from multidict import CIMultiDict

from jwtkeymap.demo.ports import free_port
from jwtkeymap.resolver import upstream as upstream_module
from jwtkeymap.resolver.upstream import (
    BUFFERED_BODY_MAX,
    Upstream,
    UpstreamError,
    UpstreamResponse,
)

# What the scripted server answers to the n-th request it reads on any connection.
Script = Callable[[int, bytes], bytes | None]


class Scripted:
    """A raw HTTP/1.1 server: per request, ``script(n, request)`` bytes (None: close). An
    answer that says ``Connection: close`` is followed by the close."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                answer = self.script(len(self.requests), request)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if b"\r\nconnection: close\r\n" in answer.lower():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], Awaitable[tuple[Scripted, Upstream]]]]:
    servers = []

    async def start(script: Script) -> tuple[Scripted, Upstream]:
        server = Scripted(script)
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        servers.append(listener)
        port = listener.sockets[0].getsockname()[1]
        return server, Upstream(f"http://127.0.0.1:{port}/prefix/")

    yield start
    for listener in servers:
        listener.close()


def ok(body: bytes = b"hello", *extra: bytes) -> bytes:
    head = [b"HTTP/1.1 200 OK", b"Content-Length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


async def get(upstream: Upstream, target: str = "/x", method: str = "GET") -> tuple[int, bytes]:
    response = await upstream.request(method, target, CIMultiDict({"Accept": "*/*"}))
    try:
        return response.status, await response.read()
    finally:
        response.close()


async def test_requests_share_a_kept_alive_connection_and_carry_host_and_prefix(scripted):
    server, upstream = await scripted(lambda n, _: ok(b"%d" % n))
    assert [await get(upstream) for _ in range(3)] == [(200, b"1"), (200, b"2"), (200, b"3")]
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"GET /prefix/x HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{upstream.host_header.split(':')[1]}".encode() in first
    await upstream.close()


async def test_an_interim_response_is_skipped(scripted):
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    server, upstream = await scripted(lambda n, _: early + ok(b"final"))
    assert await get(upstream) == (200, b"final")
    assert await get(upstream) == (200, b"final")  # and the connection is still in step
    assert server.connections == 1
    await upstream.close()


async def test_connection_close_is_not_reused(scripted):
    server, upstream = await scripted(lambda n, _: ok(b"x", b"Connection: close"))
    assert await get(upstream) == (200, b"x")
    assert await get(upstream) == (200, b"x")
    assert server.connections == 2
    await upstream.close()


async def test_a_body_delimited_by_the_close_ends_there(scripted):
    _, upstream = await scripted(
        lambda n, _: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end"
    )
    response = await upstream.request("GET", "/x", CIMultiDict())
    assert await asyncio.wait_for(response.read(), 5) == b"to the end"
    await upstream.close()


async def test_a_body_cut_short_is_an_error_not_a_short_body(scripted):
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nonly this"
    _, upstream = await scripted(lambda n, _: cut)
    response = await upstream.request("GET", "/x", CIMultiDict())
    with pytest.raises(UpstreamError):
        await asyncio.wait_for(response.read(), 5)
    await upstream.close()


async def test_bytes_nobody_asked_for_end_the_connection(scripted):
    # One answer too many: the connection is out of step and must not carry a request.
    server, upstream = await scripted(lambda n, _: ok(b"one") + ok(b"unasked"))
    assert await get(upstream) == (200, b"one")
    await asyncio.sleep(0.05)  # let the stray answer arrive on the idle connection
    assert await get(upstream) == (200, b"one")
    assert server.connections == 2
    await upstream.close()


async def test_an_abandoned_response_closes_its_connection(scripted):
    big = b"x" * 1_000_000
    server, upstream = await scripted(lambda n, _: ok(big))
    response = await upstream.request("GET", "/x", CIMultiDict())
    assert await response.payload.readany()  # some of it, not all
    response.close()
    assert await get(upstream) == (200, big)
    assert server.connections == 2
    await upstream.close()


async def test_head_answers_carry_a_length_but_no_body(scripted):
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    server, upstream = await scripted(lambda n, req: head if req.startswith(b"HEAD") else ok())
    assert await get(upstream, method="HEAD") == (200, b"")
    assert await get(upstream) == (200, b"hello")  # the next answer is read in step
    assert server.connections == 1
    await upstream.close()


async def test_a_post_without_a_body_says_so(scripted):
    server, upstream = await scripted(lambda n, _: ok())
    assert await get(upstream, method="POST") == (200, b"hello")
    assert b"\r\nContent-Length: 0\r\n" in server.requests[0]
    await upstream.close()


async def test_a_streamed_body_without_a_length_is_chunked():
    async def body() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"defg"

    got: list[bytes] = []

    async def read_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        got.append(head)
        got.append(await reader.readuntil(b"0\r\n\r\n"))
        writer.write(ok())
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(read_chunked, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    chunked = Upstream(f"http://127.0.0.1:{port}")
    response = await chunked.request("POST", "/up", CIMultiDict(), body())
    assert await response.read() == b"hello"
    assert b"Transfer-Encoding: chunked" in got[0]
    assert got[1] == b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    await chunked.close()
    listener.close()


async def test_an_unreachable_upstream_is_an_upstream_error():
    upstream = Upstream(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UpstreamError):
        await upstream.request("GET", "/x", CIMultiDict())
    await upstream.close()


def test_only_http_and_https_urls_are_upstreams():
    with pytest.raises(ValueError, match="not an http"):
        Upstream("ftp://example.test/")


@pytest.mark.parametrize("ending", ["completed", "cut"])
async def test_when_read_answers_from_the_read_that_completes_the_body(ending):
    # The head and the start of the body first, the rest later (uvicorn writes them
    # apart): the whole body is handed over when it is all here, or the break when not.
    gate = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello")
        await writer.drain()
        await gate.wait()
        if ending == "completed":
            writer.write(b" world")
            await writer.drain()
            await reader.read()  # until the client closes
        writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    upstream = Upstream(f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}")
    try:
        response = await upstream.request("GET", "/x", CIMultiDict())
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        response.when_read(got.set_result, got.set_exception)
        await asyncio.sleep(0.05)
        assert not got.done()  # five bytes of eleven are not the body
        gate.set()
        if ending == "completed":
            assert await asyncio.wait_for(got, 5) == b"hello world"
        else:
            with pytest.raises(UpstreamError, match="before the response ended"):
                await asyncio.wait_for(got, 5)
    finally:
        await upstream.close()
        listener.close()


async def passed_through(
    upstream: Upstream, *, wait: float = 5, then: Callable[[], object] | None = None
) -> tuple[str, bytes]:
    """Send a GET with a client's transport as ``through``: how the exchange ended
    ("passed", followed by what ``then`` returns when it is called as the caller is told;
    "parsed" when it was not passed and its body was read, as the fast lane reads a small
    one, then writes it; "cut", "failed" or "broken", with ``midway``), and every byte the
    client was sent on the way."""
    loop = asyncio.get_running_loop()
    client_side, proxy_side = socket.socketpair()
    client, client_writer = await asyncio.open_connection(sock=client_side)
    _, sink = await asyncio.open_connection(sock=proxy_side)
    outcome: asyncio.Future[str] = loop.create_future()

    def answered(response: UpstreamResponse) -> None:
        if not response.passed:
            response.when_read(
                lambda _: outcome.set_result("parsed"),
                lambda exc: outcome.set_result(f"cut midway={exc.midway}"),
            )
            return
        response.when_passed(
            lambda: outcome.set_result("passed" if then is None else f"passed {then()}"),
            lambda exc: outcome.set_result(f"broken midway={exc.midway}"),
        )

    def failed(exc: UpstreamError) -> None:
        if not outcome.done():
            outcome.set_result(f"failed midway={exc.midway}")

    connection = upstream.pooled() or await upstream.connect()
    head = upstream.request_head("GET", "/x", CIMultiDict(), None)
    upstream.send_head(connection, "GET", head, None, answered=answered, failed=failed,
                       through=sink.transport)  # fmt: skip
    ended = await asyncio.wait_for(outcome, wait)
    sink.close()
    try:
        return ended, await asyncio.wait_for(client.read(), wait)
    finally:
        client_writer.close()


@pytest.mark.parametrize(
    ("answer", "ended"),
    [
        (ok(b"hi", b"X-B: 2", b"x-a:1"), "passed"),  # as it came: order and spelling
        (ok(b"hi", b"Keep-Alive: timeout=5"), "parsed"),  # stays on its hop: rebuilt
        (ok(b"hi").replace(b"\r\n", b"\n"), "parsed"),
        (ok(b"hi") + ok(b"again"), "parsed"),  # more than one response in the read
        # Told passable by its bytes, refused by the parser (a NUL in a value): the client
        # has those bytes, so the exchange ends midway, never answered.
        (ok(b"hi", b"X-A: a\x00b"), "failed midway=True"),
        # Not a name: not passed, so refused before the client has any of it.
        (ok(b"hi", b"X A: 1"), "failed midway=False"),
    ],
    ids=["whole", "hop_by_hop", "bare_lf", "two_responses", "nul", "blank_in_name"],
)
async def test_a_response_whole_in_one_read_is_written_to_the_client_before_it_is_parsed(
    scripted, answer, ended
):
    _, upstream = await scripted(lambda n, _: answer)
    try:
        got = await passed_through(upstream)
    finally:
        await upstream.close()
    assert got[0] == ended
    # What the client was sent by the connection: the read as it came, or nothing.
    assert got[1] == (answer if ended in ("passed", "failed midway=True") else b"")


async def test_a_parse_that_ends_before_what_was_passed_cuts_the_client_off(scripted, monkeypatch):
    # Defence in depth: were the check of the bytes ever to count a response longer than
    # aiohttp's parser reads it, the client has bytes of a response that is not the one
    # parsed. Here the check is made to count the start of a second response as part of
    # the first, which the parser reads to its end without error.
    second = b"HTTP/1.1 2"
    real = upstream_module.passable_response

    def miscounted(data: bytes) -> tuple[int, int]:
        head, whole = real(data)
        return head, whole + len(second)

    monkeypatch.setattr(upstream_module, "passable_response", miscounted)
    _, upstream = await scripted(lambda n, _: ok(b"hi") + second)
    try:
        got = await passed_through(upstream)
    finally:
        await upstream.close()
    assert got == ("broken midway=True", ok(b"hi") + second)


def in_pieces(*pieces: bytes, close: bool = False) -> Callable[..., Awaitable[None]]:
    """A server answering each request with ``pieces``, written apart (as uvicorn, LiteLLM's
    server, writes a head and its body), then closing if ``close``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.05)
        if not close:
            await reader.read()
        writer.close()

    return handle


BIG = BUFFERED_BODY_MAX + 1
HELD = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BUFFERED_BODY_MAX


@pytest.mark.parametrize(
    ("pieces", "close", "ended", "client_sees"),
    [
        ((b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"he", b"llo"), False, "passed",
         b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
        # Cut short: nothing was passed, so the parser tells the cut (a clean 502 there).
        ((b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"he"), True, "cut midway=False",
         b""),
        # The longest body that is held, in two pieces (its head makes the whole longer).
        ((HELD, b"x" * 10, b"x" * (BUFFERED_BODY_MAX - 10)), False, "passed",
         HELD + b"x" * BUFFERED_BODY_MAX),
        # Longer than is held: parsed as it comes, and streamed by the caller.
        ((b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG, b"x" * BIG), False, "parsed",
         b""),
    ],
    ids=["whole_at_last", "cut_short", "longest_held", "longer_than_held"],
)  # fmt: skip
async def test_a_response_in_pieces_is_passed_once_it_is_whole(pieces, close, ended, client_sees):
    listener = await asyncio.start_server(in_pieces(*pieces, close=close), "127.0.0.1", 0)
    upstream = Upstream(f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}")
    try:
        assert await passed_through(upstream) == (ended, client_sees)
    finally:
        await upstream.close()
        listener.close()


async def test_a_passed_response_leaves_its_connection_ready_for_the_next(scripted):
    server, upstream = await scripted(lambda n, _: ok(b"%d" % n))
    try:
        first = await passed_through(upstream)
        second = await passed_through(upstream)
    finally:
        await upstream.close()
    assert first == ("passed", ok(b"1")) and second == ("passed", ok(b"2"))
    assert server.connections == 1


async def test_a_passed_response_s_connection_is_pooled_before_its_caller_goes_on(scripted):
    # A caller told that a passed response ended may send its next request at once (a
    # client's next request already read): it gets the same connection, not a new one.
    _, upstream = await scripted(lambda n, _: ok(b"%d" % n))
    try:
        got = await passed_through(upstream, then=lambda: upstream.pooled() is not None)
    finally:
        await upstream.close()
    assert got == ("passed True", ok(b"1"))
