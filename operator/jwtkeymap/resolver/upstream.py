"""Reverse-proxy mode's way to the upstream: keep-alive HTTP/1.1 connections to one origin.

Every request a resolver forwards goes to the one origin of ``--upstream``, so this needs
none of what aiohttp's ``ClientSession`` adds for a general client (cookies, redirects,
proxies, tracing, a timeout context per request, URL joining, default headers): that
machinery was most of the proxy hop's CPU (bench/README.md, "The fast lane (session 7)").
What a hop does need is kept, from aiohttp itself: its llhttp response parser and stream
reader (so framing, limits and flow control are aiohttp's), TCP_NODELAY, and its header
serializer (which refuses a CR or LF in a name or value).

* A request is written in one write when its body is bytes (head and body together);
  a streamed body is sent by a task beside the wait for the response, framed by its
  ``Content-Length`` or chunked.
* A response whose body is at most ``BUFFERED_BODY_MAX`` may be written to the client's
  connection as it came once it has all arrived, before it is parsed (``through``; which
  ones may: ``resolver/hops.py``). The parser still reads every byte of it; where it reads them
  otherwise than as that one response, the exchange fails ``midway``.
* A connection goes back to the pool when its response has been parsed to the end and
  neither side asked to close; one whose response was abandoned is closed.
* An idle connection is not reused after ``idle_seconds`` (see ``UPSTREAM_IDLE_SECONDS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterable, Callable
from typing import Final

from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpResponseParser, RawResponseMessage
from aiohttp.http_writer import _serialize_headers
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from jwtkeymap.resolver.hops import parsed_as_sent, passable_response

# An upstream closes its idle connections after its own keep-alive timeout (uvicorn's,
# hence LiteLLM's, is 5 s); a request sent on one as it closes fails (a 502 here: a POST
# is not retried), so the pool lets them go first.
UPSTREAM_IDLE_SECONDS: Final = 4.0
CONNECT_TIMEOUT_SECONDS: Final = 10.0
log = logging.getLogger("jwtkeymap.resolver.proxy")

READ_BUFFER_BYTES: Final = 2**16
# Bodies up to this size (with a Content-Length) are read whole before they are passed on,
# requests and responses alike (here: a response passed before it is parsed is held until
# it is whole); larger or chunked ones are streamed.
BUFFERED_BODY_MAX: Final = 64 * 1024
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
# A body sent in the head's write (a tuple: ``bytes | bytearray`` is built on each use).
_BYTES: Final = (bytes, bytearray)
_BYTES_OR_NONE: Final = (bytes, bytearray, type(None))


class UpstreamError(ConnectionError):
    """The upstream could not be reached, or its connection broke before the response ended;
    ``midway`` when part of the response had been written to the client by then."""

    def __init__(self, message: str, *, midway: bool = False) -> None:
        super().__init__(message)
        self.midway = midway


# What a request's sender is told: the response head (its body follows in its payload), or
# why none came.
Answered = Callable[["UpstreamResponse"], None]
Failed = Callable[[UpstreamError], None]


class UpstreamResponse:
    """A response head from the upstream and its body, as it arrives."""

    __slots__ = ("_connection", "message", "passed", "payload")

    def __init__(
        self,
        connection: Connection,
        message: RawResponseMessage,
        payload: StreamReader,
        *,
        passed: bool = False,
    ) -> None:
        self._connection = connection
        self.message = message
        self.payload = payload
        # Written to the client already (``Upstream.send_head``'s ``through``): the caller
        # is only told that it ended (``when_passed``).
        self.passed = passed

    @property
    def status(self) -> int:
        """The status code."""
        return self.message.code

    @property
    def reason(self) -> str:
        """The reason phrase."""
        return self.message.reason

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """The response headers, hop-by-hop ones included."""
        return self.message.headers

    @property
    def content_length(self) -> int | None:
        """The body's length, when the response gives it."""
        value = self.message.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    async def read(self) -> bytes:
        """The whole body; UpstreamError if the connection broke off first."""
        return await self.payload.read()

    def when_read(self, done: Callable[[bytes], None], broken: Failed) -> None:
        """Call ``done`` with the whole body once it has arrived (at once if it has), or
        ``broken`` if the connection breaks off first: ``read`` without a task, for a body
        small enough to hold, from the read that completes it."""
        payload = self.payload
        if payload.is_eof():
            done(payload.read_nowait())
            return
        self._connection.until_ended(broken)
        payload.on_eof(lambda: done(payload.read_nowait()))

    def when_passed(self, done: Callable[[], None], broken: Failed) -> None:
        """For a response written to the client already: call ``done`` once the parser has
        read it to its end, or ``broken`` if it read more than that response."""
        self._connection.until_parsed(done, broken)

    def close(self) -> None:
        """Give up on the rest of the body: the connection is closed unless it is complete
        (a complete one may already carry the next request)."""
        if not self.payload.is_eof():
            self._connection.abandon()


class Connection(BaseProtocol):
    """One connection to the upstream, carrying one exchange at a time."""

    __slots__ = (
        "_answered",
        "_body",
        "_broken",
        "_failed",
        "_head_bytes",
        "_held",
        "_passed",
        "_passed_on",
        "_pool",
        "_responses",
        "_sending",
        "_through",
        "_whole_bytes",
        "idle_since",
        "reusable",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: Upstream) -> None:
        super().__init__(loop)
        self._pool = pool
        self._answered: Answered | None = None
        self._failed: Failed | None = None
        self._body: StreamReader | None = None
        self._broken: Failed | None = None  # told if the body in flight is cut
        self._responses: HttpResponseParser | None = None
        self._sending: asyncio.Task[None] | None = None
        self._through: asyncio.WriteTransport | None = None  # the client's, if it may pass
        self._passed = 0  # bytes of the response in flight written to the client before
        self._head_bytes = self._whole_bytes = 0  # they were parsed; its sizes
        self._held = b""  # what came of it, held until it is whole (nothing parsed yet)
        self._passed_on: Callable[[], None] | None = None  # told when the parse has ended
        self.idle_since = 0.0
        self.reusable = True

    # -- one exchange --------------------------------------------------------------

    def begin(
        self,
        head: bool,
        answered: Answered,
        failed: Failed,
        through: asyncio.WriteTransport | None = None,
    ) -> None:
        """Expect one response (without a body after a HEAD): ``answered`` gets its head,
        or ``failed`` the error that stopped it first. With ``through`` (a client's
        transport), a response that may pass as it came is written there once it has all
        arrived, before it is parsed."""
        if head:
            self._parser = self._new_parser(with_body=False)
        else:
            # llhttp starts each message of a kept-alive connection afresh: one parser serves
            # every response but a HEAD's.
            if self._responses is None:
                self._responses = self._new_parser(with_body=True)
            self._parser = self._responses
        self._answered, self._failed = answered, failed
        self._through = None if head else through  # (a HEAD's length is not its body's)
        self._passed = 0
        self._held = b""

    def until_ended(self, broken: Failed) -> None:
        """Have ``broken`` told if the connection breaks before the body in flight ends."""
        self._broken = broken

    def until_parsed(self, done: Callable[[], None], broken: Failed) -> None:
        """For a response passed on before it was parsed: have ``done`` told once the parser
        has read it to its end, or ``broken`` if the parse ends elsewhere than the bytes
        passed on (or the connection breaks first)."""
        self._broken = broken
        self._passed_on = done

    def _new_parser(self, *, with_body: bool) -> HttpResponseParser:
        return HttpResponseParser(
            self,
            self._loop,
            READ_BUFFER_BYTES,
            payload_exception=UpstreamError,
            response_with_body=with_body,
            read_until_eof=True,
            auto_decompress=False,
        )

    def send_body(self, body: AsyncIterable[bytes], chunked: bool) -> None:
        """Stream the request body beside the wait for the response."""
        self._sending = self._loop.create_task(self._send(body, chunked))

    async def _send(self, body: AsyncIterable[bytes], chunked: bool) -> None:
        try:
            async for chunk in body:
                if not chunk:
                    continue
                self._write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                await self._drain_helper()
            if chunked:
                self._write(b"0\r\n\r\n")
        except Exception as exc:  # the client went away or the upstream did: nothing to reuse
            self.reusable = False
            self._fail(UpstreamError(f"sending the request body failed: {type(exc).__name__}"))
            if self.transport is not None:
                self.transport.abort()

    def _write(self, data: bytes) -> None:
        if self.transport is None:
            raise UpstreamError("the upstream closed the connection")
        self.transport.write(data)

    def _fail(self, exc: UpstreamError) -> None:
        if self._passed:
            exc.midway = True
        failed = self._failed
        self._answered = self._failed = None
        if failed is not None:
            failed(exc)

    def _ended(self) -> None:
        # The response has been read to its end (the parser fed the body's EOF).
        sending, self._sending = self._sending, None
        if sending is not None and not sending.done():
            self.reusable = False  # the upstream answered before taking the whole body
            sending.cancel()
        passed_on, broken = self._passed_on, self._broken
        body, self._body = self._body, None
        self._parser = self._through = self._passed_on = None
        self._answered = self._failed = self._broken = None
        # The parser read more than the response passed on: the client has those.
        overran = passed_on is not None and self._passed != self._head_bytes + (
            body.total_bytes if body else 0
        )
        if overran:
            self.abandon()
        # Back in the pool before the caller goes on: a request it sends at once reuses it.
        self._pool.release(self)
        if overran:
            if broken is not None:
                broken(UpstreamError("the upstream sent more than its response", midway=True))
        elif passed_on is not None:
            passed_on()

    def abandon(self) -> None:
        """The caller stopped reading a response before its end: close the connection."""
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol ------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Feed the response parser; anything the upstream sends unasked ends the connection."""
        parser = self._parser
        if parser is None:
            if data:
                self.reusable = False
                if self.transport is not None:
                    self.transport.close()
            return
        if data and self._through is not None:  # (the end of a body feeds nothing again)
            passing = self._pass(data)
            if passing is None:
                return  # held until the response is whole
            data = passing  # all of it, from its first byte
        try:
            messages, _, _ = parser.feed_data(data)
        except Exception as exc:
            self.reusable = False
            self._fail(UpstreamError(f"malformed response: {type(exc).__name__}"))
            if self.transport is not None:
                self.transport.close()
            return
        for message, payload in messages:
            if 100 <= message.code < 200 and message.code != 101:
                continue  # an interim response (103 Early Hints): the real one follows
            answered = self._answered
            if answered is None:  # a second response to one request: out of step
                self.reusable = False
                if self.transport is not None:
                    self.transport.close()
                continue
            # A passed response is the whole of ``data``: one message, parsed to its end.
            passed = self._passed > 0
            if passed and not (
                payload.is_eof() and parsed_as_sent(data, self._head_bytes, message)
            ):
                self.abandon()  # the client has a response the parser read otherwise
                self._fail(UpstreamError("the response is not what was passed on"))
                return
            self._answered = self._failed = None
            if message.should_close:
                self.reusable = False
            self._body = payload
            try:
                answered(UpstreamResponse(self, message, payload, passed=passed))
            except Exception:
                log.exception("upstream response handler failed")
                self.abandon()
            payload.on_eof(self._ended)

    def _pass(self, data: bytes) -> bytes | None:
        """Hold ``data`` while it is the start of a response that may pass as it came (None),
        and write that response to the client once it is whole; then, or as soon as the
        response is not one to pass, what is to be parsed: every byte since its start."""
        held = self._held
        if held:
            data = held + data
        else:  # the first read of the response
            self._head_bytes, self._whole_bytes = passable_response(data)
        head, whole = self._head_bytes, self._whole_bytes
        if head and len(data) < whole and whole - head <= BUFFERED_BODY_MAX:
            self._held = data
            return None
        through, self._through = self._through, None
        self._held = b""
        assert through is not None
        if head and len(data) == whole and not through.is_closing():
            through.write(data)
            self._passed = len(data)
        return data

    def connection_lost(self, exc: BaseException | None) -> None:
        """End the exchange in flight: its body is cut, or its response never comes."""
        self.reusable = False
        if self._held:  # the start of a response, not parsed yet: the parser tells the cut
            held, self._held, self._through = self._held, b"", None
            self.data_received(held)
        parser, body = self._parser, self._body
        if parser is not None:
            # A body delimited by the close ends here; a cut one raises: told to its reader.
            with contextlib.suppress(Exception):
                parser.feed_eof()
        broken = UpstreamError("the upstream closed the connection before the response ended")
        if body is not None and not body.is_eof():
            body.set_exception(broken)  # its eof callbacks are dropped: told here instead
            if self._broken is not None:
                told, self._broken = self._broken, None
                told(broken)
        self._fail(broken)
        super().connection_lost(exc)
        self._pool.forget(self)


class Upstream:
    """Keep-alive HTTP/1.1 connections to the origin of one URL (its path is a prefix)."""

    def __init__(
        self,
        url: str,
        *,
        idle_seconds: float | None = None,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    ) -> None:
        parsed = URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.raw_host:
            raise ValueError(f"upstream {url!r} is not an http:// or https:// URL")
        self._host = parsed.raw_host
        self._port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if parsed.scheme == "https" else None
        )
        self.host_header = parsed.host_port_subcomponent or parsed.raw_host
        self.prefix = parsed.raw_path.rstrip("/")
        self._idle: list[Connection] = []
        self._busy: set[Connection] = set()
        self._idle_seconds = UPSTREAM_IDLE_SECONDS if idle_seconds is None else idle_seconds
        self._connect_timeout = connect_timeout
        self._closed = False

    async def request(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterable[bytes] | None = None,
        *,
        content_length: int | None = None,
    ) -> UpstreamResponse:
        """Send one request (``target`` is the client's origin-form target) and wait for the
        response head. ``headers`` gets ``Host`` and the body's framing. UpstreamError when
        the upstream cannot be reached or answers nothing usable."""
        connection = self.pooled() or await self.connect()
        answer: asyncio.Future[UpstreamResponse] = asyncio.get_running_loop().create_future()

        def answered(response: UpstreamResponse) -> None:
            if answer.done():  # the caller is gone: nobody will read this body
                response.close()
            else:
                answer.set_result(response)

        def failed(exc: UpstreamError) -> None:
            if not answer.done():
                answer.set_exception(exc)

        self.send(connection, method, target, headers, body, content_length=content_length,
                  answered=answered, failed=failed)  # fmt: skip
        return await answer

    def send(
        self,
        connection: Connection,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterable[bytes] | None,
        *,
        content_length: int | None = None,
        answered: Answered,
        failed: Failed,
    ) -> None:
        """Write one request on ``connection`` (from ``pooled`` or ``connect``); its answer
        goes to ``answered`` as soon as its head is parsed, or its failure to ``failed``.
        Synchronous: a request whose check and connection are at hand goes out in the
        read that brought it."""
        head = self.request_head(method, target, headers, body, content_length=content_length)
        chunked = content_length is None and not isinstance(body, _BYTES_OR_NONE)
        self.send_head(connection, method, head, body, chunked=chunked, answered=answered,
                       failed=failed)  # fmt: skip

    def request_head(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterable[bytes] | None,
        *,
        content_length: int | None = None,
    ) -> bytes:
        """The head of a request for ``target`` with ``headers`` (its framing and ``Host``
        set here) and ``body``, as it goes on the wire."""
        if isinstance(body, _BYTES):
            headers["Content-Length"] = str(len(body))
        elif body is None and method in _BODY_METHODS:
            headers["Content-Length"] = "0"  # as aiohttp's client: some servers want one
        elif body is not None:
            if content_length is not None:
                headers["Content-Length"] = str(content_length)
            else:
                headers["Transfer-Encoding"] = "chunked"
        headers["Host"] = self.host_header
        return _serialize_headers(f"{method} {self.prefix}{target} HTTP/1.1", headers)

    def send_head(
        self,
        connection: Connection,
        method: str,
        head: bytes,
        body: bytes | AsyncIterable[bytes] | None,
        *,
        chunked: bool = False,
        answered: Answered,
        failed: Failed,
        through: asyncio.WriteTransport | None = None,
    ) -> None:
        """``send`` with the head made already (by ``request_head``); ``chunked`` when it
        says the body (an iterable) is sent in chunks; ``through``: see ``Connection.begin``."""
        transport = connection.transport
        if transport is None or transport.is_closing():
            self._busy.discard(connection)
            failed(UpstreamError("the upstream closed the connection"))
            return
        # Written first, then the parser readied: no answer can arrive before this returns.
        if isinstance(body, _BYTES):
            transport.write(head + body if body else head)
            connection.begin(method == "HEAD", answered, failed, through)
        else:
            transport.write(head)
            connection.begin(method == "HEAD", answered, failed, through)
            if body is not None:
                connection.send_body(body, chunked=chunked)

    def pooled(self) -> Connection | None:
        """An idle connection to send on, or None (then ``connect``)."""
        if self._closed:
            return None
        now = time.monotonic()  # not the loop's: asking for the running loop costs a getpid()
        idle = self._idle
        while idle:
            connection = idle.pop()
            transport = connection.transport
            if transport is None or transport.is_closing() or not connection.reusable:
                continue
            if now - connection.idle_since > self._idle_seconds:
                connection.reusable = False
                transport.close()
                continue
            self._busy.add(connection)
            return connection
        return None

    async def connect(self) -> Connection:
        """A new connection to send on; UpstreamError when the upstream cannot be reached."""
        if self._closed:
            raise UpstreamError("the resolver is shutting down")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: Connection(loop, self),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise UpstreamError(f"cannot connect: {type(exc).__name__}") from exc
        self._busy.add(connection)
        return connection

    def release(self, connection: Connection) -> None:
        """A connection whose exchange ended: keep it for the next request, or close it."""
        self._busy.discard(connection)
        transport = connection.transport
        if transport is None:
            return
        if not connection.reusable or self._closed or transport.is_closing():
            transport.close()
            return
        connection.idle_since = time.monotonic()
        self._idle.append(connection)

    def forget(self, connection: Connection) -> None:
        """A connection that closed."""
        self._busy.discard(connection)
        with contextlib.suppress(ValueError):
            self._idle.remove(connection)

    async def close(self) -> None:
        """Close every connection."""
        self._closed = True
        for connection in [*self._idle, *self._busy]:
            if connection.transport is not None:
                connection.transport.close()
        self._idle.clear()
