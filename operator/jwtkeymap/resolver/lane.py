"""A lane below aiohttp's web server for the one request a listener sees most.

Nearly every request a resolver's listener sees is alike: HTTP/1.1 on a kept-alive
connection, a Bearer token the resolver has answered before, and (in front of an LLM
gateway) a JSON body of a few KiB with a ``Content-Length``. For that request aiohttp's
web server (a request object, a response object, a stream writer, a handler task, the
router) costs more CPU than the check itself, and on a machine shared with the gateway
that CPU is the latency the resolver adds (bench/README.md, "The fast lane (session 7)").

So each connection of the listener starts here. The request is read with aiohttp's own
request parser (llhttp, the listener's line and field limits), or not parsed at all when
its head repeats the connection's last one but for its length (``resolver/heads.py``);
what is done with it is the lane's: the proxy's forwards it (``resolver/fastlane.py``),
the check's answers it (``resolver/checklane.py``). Anything else is handed, with every
byte received since the last answered request, to the handler the listener would
otherwise have used (``limits.GuardedRequestHandler``, then the application), which keeps
the connection from then on and answers exactly as before. Handed over: a request that is
not HTTP/1.1 keep-alive, is chunked, has an ``Expect`` or ``Upgrade`` header, a body over
``LANE_BODY_MAX``, or one over ``BUFFERED_BODY_MAX`` that does not fit in
``LANE_BODIES_BYTES`` or arrives slower than a head must, two ``Authorization`` headers, a
head longer than one field may be, a path that is not the lane's or not a plain
origin-form path (percent-escapes, dot segments, ``//``), pipelined requests, a parse
error, and a head or body past the listener's caps.

The lane keeps the listener's bounds: a head must be complete within the head timeout, an
idle connection closes after the keep-alive, connections count against
``max_connections``, and shutdown lets a request in flight finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any, ClassVar, Final

from aiohttp.base_protocol import BaseProtocol
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http_parser import HttpRequestParser, RawRequestMessage
from aiohttp.http_writer import HttpVersion11
from aiohttp.web_protocol import RequestHandler

from jwtkeymap.resolver.check import Answer
from jwtkeymap.resolver.heads import RepeatedHead
from jwtkeymap.resolver.limits import TIMED_OUT, GuardedServer, Limits, refused_when_full
from jwtkeymap.resolver.metrics import Metrics
from jwtkeymap.resolver.service import Service, header_digest
from jwtkeymap.resolver.upstream import BUFFERED_BODY_MAX

# A path the router cannot read otherwise than as written: no percent-escape, no dot
# segment, no empty segment (aiohttp normalizes those before it routes).
_PLAIN_PATH: Final = re.compile(r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9\-._~!$&'()*+,;=:@]+)*/?")
# A body is read whole here before the request goes on: up to 1 MiB (a long prompt) ...
LANE_BODY_MAX: Final = 2**20
# ... and those over BUFFERED_BODY_MAX, at most this much of them at once across the lane's
# connections (read at startup): the check comes after the body, so what a client without
# a token can make the lane hold is bounded; a body that does not fit goes to the
# application, which checks first and streams.
LANE_BODIES_BYTES = 16 * 2**20


class Budget:
    """Bytes the lane may hold for large request bodies at once."""

    __slots__ = ("free",)

    def __init__(self, total: int) -> None:
        self.free = total

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes, or tell that they are not there."""
        if size > self.free:
            return False
        self.free -= size
        return True

    def give(self, size: int) -> None:
        """Return ``size`` bytes taken before."""
        self.free += size


# The Date line of the second (aiohttp's own clock string, made once a second).
_date: tuple[str, bytes] = ("", b"")


def answer_bytes(result: Answer) -> bytes:
    """The resolver's own answer (a check's, a refusal, a 502) as it goes on the wire, with
    the ``Date`` an origin server sends."""
    global _date
    now = rfc822_formatted_time()
    if now is not _date[0]:
        _date = (now, b"Date: %s\r\n" % now.encode())
    return result.head_lines() + _date[1] + b"\r\n" + result.body


@dataclasses.dataclass(frozen=True, slots=True)
class Lane:
    """What every connection of a lane shares."""

    service: Service
    limits: Limits
    # Whether a path is the lane's to take (the proxy's: any the application does not
    # serve itself; the check's: the check's own).
    takes_path: Callable[[str], bool]
    # The methods the lane takes (None: any).
    methods: frozenset[str] | None = dataclasses.field(default=None, kw_only=True)
    bodies: Budget = dataclasses.field(
        default_factory=lambda: Budget(LANE_BODIES_BYTES), kw_only=True
    )
    # Why a plain path that is not the lane's is handed over (a handover's label).
    OTHER_PATH: ClassVar[str] = "other_path"

    @property
    def metrics(self) -> Metrics:
        """The service's metrics (the lane counts into them)."""
        return self.service.metrics

    def passes_on(self, message: RawRequestMessage, head_bytes: int) -> str | None:
        """Why the lane leaves this request to the application, or None when it takes it."""
        headers = message.headers
        if message.version != HttpVersion11 or message.should_close:
            return "not_keepalive"
        if message.upgrade or message.chunked or "Transfer-Encoding" in headers:
            return "framing"
        if "Expect" in headers:
            return "expect"
        if head_bytes > self.limits.max_field_bytes:
            return "head_size"
        if len(headers.getall("Authorization", ())) > 1:
            return "authorizations"
        length = headers.get("Content-Length")
        if length is not None and not (length.isdigit() and int(length) <= LANE_BODY_MAX):
            return "body_size"
        path = message.path.partition("?")[0]
        if _PLAIN_PATH.fullmatch(path) is None:
            return "path"
        if not self.takes_path(path):
            return self.OTHER_PATH
        if self.methods is not None and message.method not in self.methods:
            return "method"
        return None


class LaneServer(GuardedServer):
    """A listener's server whose connections each start in a lane (``protocol``)."""

    def __init__(
        self,
        handler: Any,
        *,
        lane: Lane,
        protocol: Callable[[LaneServer, Any, asyncio.AbstractEventLoop], LaneConnection],
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, limits=lane.limits, **kwargs)
        self.lane = lane
        self._protocol = protocol

    def __call__(self) -> LaneConnection:  # type: ignore[override]
        """The protocol of one new connection."""
        return self._protocol(self, self.lane, self._loop)

    def application_handler(self) -> RequestHandler:
        """The handler a connection is handed to: aiohttp's, bounded."""
        return super().__call__()


class LaneConnection(BaseProtocol):
    """One client connection, answered by its lane until a request needs the application.

    A subclass answers the requests the lane takes (``_start``) and calls ``_finish`` once
    the answer is written.
    """

    __slots__ = (
        "_busy",
        "_client",
        "_closing",
        "_deadline",
        "_drained",
        "_expected",
        "_expired",
        "_held",
        "_later",
        "_message",
        "_received",
        "_repeat",
        "_served",
        "_server",
        "_task",
        "_task_handler",
        "_timer",
        "lane",
    )

    def __init__(self, server: LaneServer, lane: Lane, loop: asyncio.AbstractEventLoop):
        super().__init__(loop)
        limits = lane.limits
        args = limits.handler_args()
        self._parser = HttpRequestParser(
            self,
            loop,
            LANE_BODY_MAX,  # the body's buffer never asks to pause reading: it is read whole
            max_field_size=args["max_field_size"],
            auto_decompress=args["auto_decompress"],
        )
        self._server = server
        self.lane = lane
        self._received = bytearray()  # every byte since the last answered request
        self._message: tuple[RawRequestMessage, Any] | None = None
        self._later: list[bytes] = []  # what arrives while a request is answered
        self._task: asyncio.Task[None] | None = None
        self._busy = False  # a request is being answered
        self._drained: asyncio.Future[None] | None = None  # shutdown waits on it
        self._task_handler = None  # what aiohttp's Server asks of a connection it tracks
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = math.inf
        self._expired: Callable[[], None] = self._idle_expired
        self._closing = False
        self._served = 0
        self._client: str | None = None
        self._held = 0  # bytes of the lane's body budget this connection holds
        self._repeat: RepeatedHead | None = None  # the last head the parser read
        self._expected: tuple[int, int] | None = None  # sizes of a repeated head, its body

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Take the connection, or answer 503 and close it when the listener is full."""
        if refused_when_full(self._server, self.lane.limits, transport):
            return
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self._client = peer[0] if isinstance(peer, tuple | list) and peer else None
        self._server.connection_made(self, transport)  # type: ignore[arg-type]
        self._arm_head()

    def connection_lost(self, exc: BaseException | None) -> None:
        """Forget the connection; a request in flight finishes without writing."""
        self._stop_timer()
        self._release()
        if self.transport is not None:
            self._server.connection_lost(self, exc)  # type: ignore[arg-type]
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Collect one request; answer it here, or hand the connection to the application."""
        if not data:
            return  # aiohttp's stream reader resuming a parser that has nothing held back
        if self._busy:
            self._later.append(data)  # the next request, after this answer
            if sum(map(len, self._later)) > self.lane.limits.max_head_bytes:
                self._pause_transport_reading()
            return
        parser = self._parser
        if parser is None:
            return  # handed over: the transport reads into the application's handler now
        if self._expected is None and not self._received and self._message is None:
            repeat = self._repeat
            if repeat is not None and (expected := repeat.sizes(data)) is not None:
                self._expected = expected  # the last head again: its body may follow
                self._disarm()
        if self._expected is not None:
            self._repeated(data)
            return
        self._received += data
        try:
            messages, upgraded, _ = parser.feed_data(data)
        except Exception:
            self._hand_over("malformed")  # the application's parser answers it (400, ...)
            return
        if upgraded or len(messages) > 1 or (messages and self._message is not None):
            self._hand_over("pipelined")
            return
        if messages:
            message, payload = messages[0]
            reason = self.lane.passes_on(message, self._received.find(b"\r\n\r\n") + 4)
            if reason is not None:
                self._hand_over(reason)
                return
            self._message = (message, payload)
            self._disarm()
            length = int(message.headers.get("Content-Length") or 0)  # digits: passes_on
            if length > BUFFERED_BODY_MAX:
                if not self.lane.bodies.take(length):
                    self._hand_over("body_budget")
                    return
                self._held = length
                # A large body arrives as fast as a head must, or the application reads it.
                self._set_deadline(self.lane.limits.header_timeout, self._body_expired)
        elif self._message is None:
            if len(self._received) > self.lane.limits.max_head_bytes:
                self._hand_over("head_size")  # the application cuts it (431)
            elif not self._head_timed():
                self._arm_head()
            return
        message, payload = self._message
        if not payload.is_eof():
            return  # the body is still arriving (it is at most LANE_BODY_MAX)
        body = payload.read_nowait()
        head_end = self._received.find(b"\r\n\r\n") + 4
        if head_end + len(body) != len(self._received):
            # More than this request arrived: the application reads them all from the start.
            self._hand_over("pipelined")
            return
        if self._received.count(b"\n", 0, head_end) != self._received.count(b"\r\n", 0, head_end):
            self._hand_over("line_endings")  # a head line not ended by CRLF
            return
        authorization = message.headers.get("Authorization")
        digest = header_digest(authorization)
        self._repeat = RepeatedHead.of(
            bytes(self._received[:head_end]),
            message,
            authorization=authorization,
            digest=digest,
            max_bytes=self.lane.limits.max_field_bytes,
            max_length=BUFFERED_BODY_MAX,
        )
        self._received = bytearray()
        self._message = None
        if self._held:
            self._disarm()
            self._release()
        self.lane.metrics.fast_lane += 1
        self._busy = True
        self._start(message, body, authorization, digest)

    def _repeated(self, data: bytes) -> None:
        """Bytes of a request whose head is the last one again (``_expected`` its sizes)."""
        assert self._expected is not None and self._repeat is not None
        head, length = self._expected
        if self._received:  # the head came in an earlier read
            self._received += data
            data = bytes(self._received)
        if len(data) != head + length:
            if len(data) > head + length:
                self._received[:] = data
                self._hand_over("pipelined")  # the application reads them all from the start
            elif not self._received:
                self._received += data  # the body is still arriving (at most 64 KiB)
            return
        self._received = bytearray()
        self._expected = None
        metrics = self.lane.metrics
        metrics.fast_lane += 1
        metrics.repeated_heads += 1
        self._busy = True
        repeat = self._repeat
        self._start(repeat.message, data[head:], repeat.authorization, repeat.digest)

    # -- one request -----------------------------------------------------------------

    def _start(
        self,
        message: RawRequestMessage,
        body: bytes,
        authorization: str | None,
        digest: bytes | None,
    ) -> None:
        """Answer one request the lane took (``body`` whole), then ``_finish``."""
        raise NotImplementedError

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._finish()

    def _finish(self) -> None:
        """The answer is written (or the connection is gone): on to the next request."""
        self._task = None
        self._busy = False
        self._served += 1
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)
        self._next()

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _next(self) -> None:
        """After an answer: the next request if it has arrived, else wait for it."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._closing:
            transport.close()
            return
        if self._later:
            data = b"".join(self._later)
            self._later.clear()
            self._resume_transport_reading()
            self.data_received(data)
            return
        self._set_deadline(self.lane.limits.keepalive_timeout, self._idle_expired)

    # -- handing over ----------------------------------------------------------------

    def _hand_over(self, reason: str) -> None:
        """Give the connection, and the bytes of the request it holds, to the application."""
        self._stop_timer()
        transport = self.transport
        if transport is None:
            return
        self.lane.metrics.count_handover(reason)
        self._release()
        received = bytes(self._received)
        self._received = bytearray()
        self._parser = None
        self._server.connection_lost(self, None)  # type: ignore[arg-type]
        self.transport = None
        handler = self._server.application_handler()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if received and not transport.is_closing():
            handler.data_received(received)

    # -- timers and shutdown ---------------------------------------------------------
    # One timer per connection, moved lazily: an answered request only sets the next
    # deadline, and the timer, when it fires early, sleeps again until that deadline.

    def _set_deadline(self, delay: float, expired: Callable[[], None]) -> None:
        self._deadline = deadline = self._loop.time() + delay
        self._expired = expired
        timer = self._timer
        if timer is None or deadline < timer.when():
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(deadline, self._tick)

    def _arm_head(self) -> None:
        self._set_deadline(self.lane.limits.header_timeout, self._head_expired)

    def _head_timed(self) -> bool:
        return self._deadline != math.inf and self._expired == self._head_expired

    def _disarm(self) -> None:
        self._deadline = math.inf

    def _stop_timer(self) -> None:
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline == math.inf or self.transport is None:
            return
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._tick)
            return
        self._disarm()
        self._expired()

    def _head_expired(self) -> None:
        if self.transport is not None:
            if self._served == 0:
                self.transport.write(TIMED_OUT)  # no earlier answer can be on the wire
            self.transport.close()

    def _body_expired(self) -> None:
        self._hand_over("body_time")  # the application reads the rest, without a bound

    def _release(self) -> None:
        if self._held:
            self.lane.bodies.give(self._held)
            self._held = 0

    def _idle_expired(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        """Stop taking requests (shutdown): close now when idle, else after the answer."""
        self._closing = True
        if not self._busy and self.transport is not None:
            self.transport.close()

    async def shutdown(self, timeout: float | None) -> None:
        """Let the request in flight finish within ``timeout``, then close."""
        self._closing = True
        if self._busy:
            self._drained = drained = self._loop.create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drained, timeout)
        if self._task is not None:
            self._task.cancel()
        if self.transport is not None:
            self.transport.close()
