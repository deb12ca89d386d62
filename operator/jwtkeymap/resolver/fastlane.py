"""Reverse-proxy mode's fast lane: the common request, forwarded below aiohttp's web server.

A request the lane takes (``resolver/lane.py``: HTTP/1.1 keep-alive, a body of at most
``LANE_BODY_MAX`` with a ``Content-Length``, a path the application does not serve itself)
is checked by the same ``Service`` call as the application's, forwarded with
``resolver.upstream`` and answered in one write when its response is small (a response
with nothing in its head to remove goes to the client as it came, before it is parsed:
``resolver/hops.py``); larger and chunked responses are streamed as they arrive.
Everything else goes to the application (``proxy``), which answers exactly as before.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import ClassVar

from aiohttp.http_parser import RawRequestMessage
from aiohttp.http_writer import _serialize_headers
from multidict import CIMultiDict

from jwtkeymap.resolver.check import Answer
from jwtkeymap.resolver.lane import Lane, LaneConnection, LaneServer, answer_bytes
from jwtkeymap.resolver.proxy import (
    BROKE_OFF,
    UNREACHABLE,
    downstream_response_headers,
    is_bodiless,
    is_small,
    upstream_request_headers,
)
from jwtkeymap.resolver.upstream import (
    Connection,
    Upstream,
    UpstreamError,
    UpstreamResponse,
)

log = logging.getLogger("jwtkeymap.resolver.proxy")


@dataclasses.dataclass(frozen=True, slots=True)
class ProxyLane(Lane):
    """What every connection of the proxy's lane shares: the lane's, and the upstream."""

    upstream: Upstream
    OTHER_PATH: ClassVar[str] = "resolver_path"


class FastLane(LaneConnection):
    """One client connection of the proxy's listener."""

    __slots__ = ("_method",)
    lane: ProxyLane

    def __init__(self, server: LaneServer, lane: ProxyLane, loop: asyncio.AbstractEventLoop):
        super().__init__(server, lane, loop)
        self._method = ""

    # -- one request -----------------------------------------------------------------
    # A request whose answer is remembered and whose upstream connection is idle goes out
    # in the read that brought it, and a small response goes back in the read that brought
    # it: no task, no wait for the loop. Anything else continues in a task.

    def _start(
        self,
        message: RawRequestMessage,
        body: bytes,
        authorization: str | None,
        digest: bytes | None,
    ) -> None:
        service = self.lane.service
        started = time.perf_counter()
        result = service.remembered(digest)
        if result is None:
            self._task = self._loop.create_task(
                self._start_later(message, body, authorization, digest, None)
            )
            return
        looked_up = time.perf_counter() - started
        if not result.allowed:
            self._write(answer_bytes(result))
            self._finish()
        elif (connection := self.lane.upstream.pooled()) is None:
            self._task = self._loop.create_task(
                self._start_later(message, body, authorization, digest, result)
            )
        else:
            self._send(connection, message, result, body)
        # Counted once the request is on its way: what a request waits for is its bytes.
        service.record(result, looked_up)

    async def _start_later(
        self,
        message: RawRequestMessage,
        body: bytes,
        authorization: str | None,
        digest: bytes | None,
        result: Answer | None,
    ) -> None:
        lane = self.lane
        try:
            if result is None:
                result = await lane.service.decide(authorization, digest)
            if not result.allowed:
                self._write(answer_bytes(result))
                self._finish()
                return
            connection = lane.upstream.pooled() or await lane.upstream.connect()
        except UpstreamError as exc:
            self._unanswered(exc)
            return
        except Exception:
            log.exception("fast lane: request failed")
            self._abort()
            return
        self._task = None
        self._send(connection, message, result, body)

    def _send(
        self, connection: Connection, message: RawRequestMessage, result: Answer, body: bytes
    ) -> None:
        self._method = method = message.method
        try:
            repeat = self._repeat if self._repeat and self._repeat.message is message else None
            head = repeat.upstream_head(result, len(body)) if repeat else None
            if head is None:
                head = self._upstream_head(message, result, body)
                if repeat:
                    repeat.keep_upstream_head(result, head, len(body))
            self.lane.upstream.send_head(
                connection, method, head, body or None,
                answered=self._answered, failed=self._unanswered, through=self.transport,
            )  # fmt: skip
        except Exception:
            log.exception("fast lane: request failed")
            connection.abandon()
            self._abort()

    def _upstream_head(self, message: RawRequestMessage, result: Answer, body: bytes) -> bytes:
        headers = upstream_request_headers(
            message.headers,
            result,
            strip_authorization=self.lane.service.settings.strip_authorization,
            client=self._client,
            scheme="http",
        )
        return self.lane.upstream.request_head(message.method, message.path, headers, body or None)

    def _unanswered(self, exc: UpstreamError) -> None:
        self.lane.metrics.count_upstream(None)
        if exc.midway:  # bytes of it are on their way to the client: no clean answer now
            self._broke_midway(exc)
            return
        log.warning("upstream unreachable", extra={"error": str(exc)})
        self._write(answer_bytes(UNREACHABLE))
        self._finish()

    def _answered(self, upstream: UpstreamResponse) -> None:
        """The upstream's response head (called as it is parsed)."""
        try:
            metrics = self.lane.metrics
            metrics.count_upstream(upstream.status)
            if upstream.passed:  # written to the client already, whole
                metrics.passed_responses += 1
                upstream.when_passed(self._finish, self._broke_midway)
            elif is_bodiless(upstream.status, self._method):
                self._whole(upstream, _response_head(upstream), b"")
            elif is_small(upstream.content_length):
                # Written whole once it is all here: now, or in the read that completes it
                # (uvicorn, LiteLLM's server, writes a response's head and body apart).
                head = _response_head(upstream)
                upstream.when_read(lambda body: self._whole(upstream, head, body), self._cut)
            else:
                headers = downstream_response_headers(upstream.headers)
                status_line = f"HTTP/1.1 {upstream.status} {upstream.reason}"
                self._task = self._loop.create_task(self._relay(upstream, headers, status_line))
        except Exception:
            log.exception("fast lane: response failed")
            upstream.close()
            self._abort()

    def _whole(self, upstream: UpstreamResponse, head: bytes, body: bytes) -> None:
        """A small response, all of it here: one write."""
        try:
            self._write(head + body)
        except Exception:  # called back from the upstream's parser: nothing may escape
            log.exception("fast lane: response failed")
            upstream.close()
            self._abort()
            return
        upstream.close()
        self._finish()

    def _broke_midway(self, exc: UpstreamError) -> None:
        """What was written to the client is not the response the parser read: cut."""
        log.warning(
            "upstream failed mid-response: client connection cut", extra={"error": str(exc)}
        )
        self._abort()

    def _cut(self, exc: UpstreamError) -> None:
        """The upstream broke off before a small response's end."""
        # Nothing is sent yet, so the client gets a clean 502, not a cut response.
        log.warning(
            "upstream broke off before the response ended: answered 502", extra={"error": str(exc)}
        )
        self._write(answer_bytes(BROKE_OFF))
        self._finish()

    async def _relay(
        self, upstream: UpstreamResponse, headers: CIMultiDict[str], status_line: str
    ) -> None:
        """A response too large to hold, or without a length: passed on as it arrives."""
        try:
            await self._stream(upstream, headers, status_line)
        except Exception:
            log.exception("fast lane: response failed")
            self._abort()
        finally:
            upstream.close()
            self._finish()

    async def _stream(
        self, upstream: UpstreamResponse, headers: CIMultiDict[str], status_line: str
    ) -> None:
        chunked = upstream.content_length is None
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
        self._write(_serialize_headers(status_line, headers))
        try:
            # iter_any yields whatever has arrived: an SSE event is passed on at once.
            async for chunk in upstream.payload.iter_any():
                if self.transport is None:
                    log.debug("client went away while streaming")
                    return
                self._write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                await self._drain_helper()
            if chunked:
                self._write(b"0\r\n\r\n")
        except UpstreamError as exc:
            # The upstream broke mid-response: the status is sent, so cut the connection.
            log.warning(
                "upstream failed mid-response: client connection cut", extra={"error": str(exc)}
            )
            if self.transport is not None:
                self.transport.close()
        except ConnectionError:
            log.debug("client went away while streaming")


def _response_head(upstream: UpstreamResponse) -> bytes:
    """The head of a response that did not pass as it came (``resolver/hops.py``), as it
    goes to the client: without the headers that stay on the upstream's hop."""
    headers = downstream_response_headers(upstream.headers)
    return _serialize_headers(f"HTTP/1.1 {upstream.status} {upstream.reason}", headers)
