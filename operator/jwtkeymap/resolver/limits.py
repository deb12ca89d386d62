"""The listener's limits: what a client can cost the resolver before it shows a token.

An attack pass (issue 14, F1) held 22 connections open with 126 header fields of
127,000 bytes each and took the resolver from 69 MiB to 741 MiB; 300 connections
sending one header line every 5 s stayed open, since aiohttp's only timer on a new
connection is the keep-alive. So every connection here is bounded in size and time:

* ``Authorization`` may be ``max_authorization_bytes`` long (a 16 KiB token gets the
  contract's 401, not the parser's 400); every other field ``max_header_field_bytes``
  (aiohttp's parser has one limit for all fields, so the smaller one is checked per
  request by ``oversized_field``).
* The request head is counted as it arrives: past ``max_request_head_bytes`` the
  connection is cut (the parser has buffered at most one more read), and after a head
  the parser refused nothing more is parsed. That, not the per-field limits, is what
  bounds memory: at most one head per connection, ``max_connections`` connections.
* A head must be complete within ``header_timeout_seconds`` of its first byte (of the
  opening, for a new connection); an idle connection is closed after the keep-alive.
* Over ``max_connections`` a new connection is answered 503 and closed at once.

The handler overrides ``RequestHandler.data_received`` and reads its ``_messages`` and
``_request_count``, private to aiohttp 3.x (pyproject.toml pins ``aiohttp<4``);
``tests/integration/hostile/test_exhaustion.py`` fails if they stop being honoured.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable
from typing import Any, Final, cast

from aiohttp import web
from aiohttp.http_parser import RawRequestMessage
from aiohttp.web_protocol import RequestHandler

from jwtkeymap.core.settings import Settings

# Check mode serves Envoy's and nginx's connection pools: longer than their idle timeouts
# (1 h, 60 s), so a pooled connection is never closed under a request being sent on it.
CHECK_KEEPALIVE_SECONDS: Final = 3630.0
# Reverse-proxy mode faces clients directly.
PROXY_KEEPALIVE_SECONDS: Final = 75.0

BUSY: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n"
    b"Connection: close\r\n\r\n"
)
_TOO_LARGE: Final = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n"
    b"Connection: close\r\n\r\n"
)
TIMED_OUT: Final = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """The bounds of one listener (see the module docstring)."""

    max_authorization_bytes: int
    max_field_bytes: int
    max_head_bytes: int
    header_timeout: float
    keepalive_timeout: float
    max_connections: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        """The limits ``settings`` ask for; the keep-alive defaults by mode."""
        keepalive = settings.keepalive_timeout_seconds or (
            PROXY_KEEPALIVE_SECONDS if settings.upstream else CHECK_KEEPALIVE_SECONDS
        )
        return cls(
            max_authorization_bytes=settings.max_authorization_bytes,
            max_field_bytes=settings.max_header_field_bytes,
            max_head_bytes=settings.max_request_head_bytes,
            header_timeout=settings.header_timeout_seconds,
            keepalive_timeout=keepalive,
            max_connections=settings.max_connections,
        )

    def handler_args(self) -> dict[str, Any]:
        """aiohttp's own limits to match (for any runner, guarded or not), and request
        bodies as they arrived: a proxy passes a compressed body on compressed."""
        return {
            "max_field_size": max(self.max_authorization_bytes, self.max_field_bytes),
            "keepalive_timeout": self.keepalive_timeout,
            "auto_decompress": False,
        }


def oversized_field(raw_headers: Iterable[tuple[bytes, bytes]], limits: Limits) -> bool:
    """Tell whether a header other than ``Authorization`` is longer than its limit.

    Only worth asking when the request's head is longer than the limit
    (``GuardedRequestHandler.large_head``).
    """
    for name, value in raw_headers:
        if len(name) + len(value) > limits.max_field_bytes and name.lower() != b"authorization":
            return True
    return False


def refused_when_full(server: web.Server, limits: Limits, transport: asyncio.BaseTransport) -> bool:
    """Answer 503 and close a new connection when the listener holds ``max_connections``."""
    if len(server.connections) < limits.max_connections:
        return False
    writer = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
    writer.write(BUSY)
    writer.close()
    return True


class GuardedRequestHandler(RequestHandler):
    """One connection, bounded in head size, head time and (with its server) in number."""

    __slots__ = (
        "_body",
        "_broken",
        "_head_bytes",
        "_head_timer",
        "_limits",
        "_refused",
        "large_head",
    )

    def __init__(self, manager: web.Server, limits: Limits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        # The body of the last request parsed: while it is arriving, bytes are not head.
        self._body: Any = None
        self._refused = False
        self._broken = False
        # Whether the last head was longer than one field may be (see oversized_field).
        self.large_head = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Take the connection, or answer 503 and close it when the listener is full."""
        assert self._manager is not None
        if refused_when_full(self._manager, self._limits, transport):
            self._refused = True
            return
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        """Stop the head timer; a refused connection was never registered."""
        self._disarm()
        if not self._refused:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Count the bytes of an unfinished head; cut the connection past the cap.

        The head timer is armed only for a head that a read did not complete: the
        common request, whose head arrives in one read, costs no timer.
        """
        if self._refused or self._broken:
            return
        in_head = self._body is None or self._body.is_eof()
        if in_head:
            self._head_bytes += len(data)
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed and self._messages:
            message, self._body = self._messages[-1]
            self._broken = not isinstance(message, RawRequestMessage)
            # No field can be longer than the whole head: most requests skip the field check.
            self.large_head = self._head_bytes > self._limits.max_field_bytes
            self._head_bytes = 0
            self._disarm()
        elif in_head and self._head_bytes > self._limits.max_head_bytes:
            # The parser holds at most the cap plus one read; it is freed with the connection.
            self._cut(_TOO_LARGE)
        elif in_head and self._head_timer is None:
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self._loop.call_later(self._limits.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _expire(self) -> None:
        self._head_timer = None
        self._cut(TIMED_OUT)

    def _cut(self, answer: bytes) -> None:
        # A status line only when no earlier request's response can be on the wire.
        if self._request_count == 0 and self.transport is not None:
            self.transport.write(answer)
        self._disarm()
        self.force_close()


class GuardedServer(web.Server):
    """An aiohttp ``Server`` whose connections are ``GuardedRequestHandler``s."""

    def __init__(self, handler: Any, *, limits: Limits, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.limits = limits

    def __call__(self) -> RequestHandler:
        """The protocol of one new connection."""
        return GuardedRequestHandler(self, self.limits, loop=self._loop, **self._kwargs)
