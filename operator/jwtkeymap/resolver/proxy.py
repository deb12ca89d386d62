"""Reverse-proxy mode: check every request, then stream it to the upstream.

The rules below hold for every request; this module is where the application applies
them, to what the fast lane (``resolver/fastlane.py``) hands over, and holds the header
rules both share. Requests go upstream through ``resolver/upstream.py``.

* A denied request never reaches the upstream: the client gets the check's answer.
  ``Expect: 100-continue`` is answered only after the check allowed the request,
  so a client without a valid token never gets to send its body.
* Only origin-form targets (``/path``) are forwarded; any other is a 400.
* Client-sent ``x-jwtkeymap-*`` headers (also spelt with ``_``) are dropped and
  the identity headers added; ``Authorization`` is forwarded unless ``strip_authorization``.
* Hop-by-hop headers (and any the ``Connection`` header names) stay on their hop.
* Bodies are streamed both ways, chunk by chunk: an LLM's Server-Sent Events
  reach the client as the upstream sends them. Requests and responses are passed
  through byte for byte (a compressed body is not inflated: ``Limits.handler_args``),
  so ``Content-Length`` stays true.
* A small body with a ``Content-Length`` (a chat completion, either way) is read
  whole and sent with its headers in one write instead: streamed, each piece
  costs a write on this hop and a wake-up of the peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from jwtkeymap.core.settings import Settings
from jwtkeymap.resolver import check
from jwtkeymap.resolver.check import HEADER_PREFIX, Answer
from jwtkeymap.resolver.hops import HOP_BY_HOP, carries_hop_by_hop
from jwtkeymap.resolver.metrics import Metrics
from jwtkeymap.resolver.upstream import (
    BUFFERED_BODY_MAX,
    Upstream,
    UpstreamError,
    UpstreamResponse,
)

# The check for one request: the answer to its Authorization header.
Checker = Callable[[web.Request], Awaitable[Answer]]

log = logging.getLogger("jwtkeymap.resolver.proxy")

# Set by us (Host from the upstream URL) or meaningless on the next hop.
_REQUEST_DROP: Final = HOP_BY_HOP | {"host", "expect"}
_NO_BODY_STATUSES: Final = frozenset({204, 304})

UPSTREAM: web.AppKey[Upstream] = web.AppKey("upstream", Upstream)
UNREACHABLE: Final = check.refuse(502, "upstream_unavailable", "the upstream is unreachable")
BROKE_OFF: Final = check.refuse(502, "upstream_unavailable", "the upstream response broke off")


def is_bodiless(status: int, method: str) -> bool:
    """Tell whether a response has no body whatever its headers say (HEAD, 204, 304)."""
    return status in _NO_BODY_STATUSES or method == "HEAD"


def is_small(content_length: int | None) -> bool:
    """Tell whether a body of this length is read whole before it is passed on."""
    return content_length is not None and content_length <= BUFFERED_BODY_MAX


def _connection_listed(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    listed: set[str] = set()
    for value in headers.getall("Connection", ()):
        listed.update(t.strip().lower() for t in value.split(",") if t.strip())
    return listed


def upstream_request_headers(
    incoming: CIMultiDictProxy[str] | CIMultiDict[str],
    result: Answer,
    *,
    strip_authorization: bool,
    client: str | None,
    scheme: str,
) -> CIMultiDict[str]:
    """The headers to send upstream: the client's, cleaned, plus the identity headers."""
    drop = _REQUEST_DROP | _connection_listed(incoming)
    if strip_authorization:
        drop = drop | {"authorization"}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        low = name.lower()
        # "_" too: many upstream servers (every WSGI one) read x_jwtkeymap_… as x-jwtkeymap-….
        if low in drop or (low[:1] == "x" and low[:12].replace("_", "-") == HEADER_PREFIX):
            continue
        out.add(name, value)
    for name, value in result.identity.items():
        out[name] = value
    if client:
        prior = incoming.get("X-Forwarded-For")
        out["X-Forwarded-For"] = f"{prior}, {client}" if prior else client
    out["X-Forwarded-Proto"] = scheme
    host = incoming.get("Host")
    if host:
        out["X-Forwarded-Host"] = host
    return out


def downstream_response_headers(incoming: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The upstream's response headers without the hop-by-hop ones."""
    if not carries_hop_by_hop(incoming):
        return CIMultiDict(incoming)  # the common response: copied in C, nothing to drop
    drop = HOP_BY_HOP | _connection_listed(incoming)
    return CIMultiDict((k, v) for k, v in incoming.items() if k.lower() not in drop)


def add_proxy_routes(
    app: web.Application, settings: Settings, *, check_request: Checker, metrics: Metrics
) -> None:
    """Route every other path through ``check_request`` to ``settings.upstream``."""
    assert settings.upstream
    # LLM streams last minutes: the connect is bounded, the response is not.
    app[UPSTREAM] = upstream = Upstream(settings.upstream)

    async def upstream_ctx(_app: web.Application) -> AsyncIterator[None]:
        yield
        await upstream.close()

    app.cleanup_ctx.append(upstream_ctx)

    async def checked(request: web.Request) -> Answer:
        if not request.raw_path.startswith("/"):
            # Absolute form (GET http://host/x) or asterisk form: this is not a forward proxy.
            return _NOT_ORIGIN_FORM
        known = request.get(_ANSWER)
        return known if isinstance(known, Answer) else await check_request(request)

    async def expect_checked(request: web.Request) -> web.StreamResponse | None:
        # aiohttp's own handler sends 100 Continue before any check: check first.
        result = await checked(request)
        if not result.allowed:
            return _response(result)
        if request.headers.get("Expect", "").lower() != "100-continue":
            return _response(check.refuse(417, "expectation_failed", "Unknown Expect header."))
        request[_ANSWER] = result
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the 100 is not part of the response
        return None

    async def handle_proxy(request: web.Request) -> web.StreamResponse:
        result = await checked(request)
        if not result.allowed:
            return _response(result)
        return await forward(request, result, upstream, settings, metrics)

    app.router.add_route("*", "/{tail:.*}", handle_proxy, expect_handler=expect_checked)


_ANSWER: Final = web.RequestKey("jwtkeymap.answer", Answer)
BODY_ENDED_EARLY: Final = check.refuse(400, "invalid_request", "the request body ended early")
_NOT_ORIGIN_FORM: Final = check.refuse(
    400, "invalid_request", "JWT Key Mapping: the request target must be a path."
)


def _response(result: Answer) -> web.Response:
    return web.Response(status=result.status, body=result.body, headers=result.headers)


async def forward(
    request: web.Request,
    result: Answer,
    pool: Upstream,
    settings: Settings,
    metrics: Metrics,
) -> web.StreamResponse:
    """Send the allowed request upstream and stream the response back."""
    headers = upstream_request_headers(
        request.headers,
        result,
        strip_authorization=settings.strip_authorization,
        client=request.remote,
        scheme=request.scheme,
    )
    body: bytes | AsyncIterator[bytes] | None = None
    if request.body_exists:
        length = request.content_length
        if length is not None and length <= BUFFERED_BODY_MAX:
            # A small body (a chat completion) goes out with its headers in one write;
            # streamed, it costs a write per piece and more than doubles the hop's CPU.
            try:
                body = await request.content.readexactly(length)
            except asyncio.IncompleteReadError:
                return _response(BODY_ENDED_EARLY)
        else:
            body = request.content.iter_any()
    try:
        upstream = await pool.request(
            request.method, request.raw_path, headers, body, content_length=request.content_length
        )
    except UpstreamError as exc:
        log.warning("upstream unreachable", extra={"error": str(exc)})
        metrics.count_upstream(None)
        return _response(UNREACHABLE)
    try:
        metrics.count_upstream(upstream.status)
        headers = downstream_response_headers(upstream.headers)
        bodiless = is_bodiless(upstream.status, request.method)
        if not bodiless and is_small(upstream.content_length):
            return await _whole_response(upstream, headers)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(headers)
        await response.prepare(request)
        if bodiless:
            await response.write_eof()
            return response
        try:
            # iter_any yields whatever has arrived: an SSE event is passed on at once.
            async for chunk in upstream.payload.iter_any():
                await response.write(chunk)
            await response.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            log.debug("client went away while streaming")
        except UpstreamError as exc:
            # The upstream broke mid-response: the status is sent, so cut the connection.
            log.warning(
                "upstream failed mid-response: client connection cut", extra={"error": str(exc)}
            )
            with contextlib.suppress(Exception):
                if request.transport is not None:
                    request.transport.close()
        return response
    finally:
        upstream.close()


async def _whole_response(upstream: UpstreamResponse, headers: CIMultiDict[str]) -> web.Response:
    """The upstream's small response, read whole: the client gets its headers and body in
    one write. A StreamResponse sends the headers as soon as they are known and each piece
    of the body after them; an upstream such as uvicorn writes its headers and its body
    separately, so that would cost a write here and a wake-up of the client per piece."""
    try:
        body = await upstream.read()
    except UpstreamError as exc:
        # Nothing is sent yet, so the client gets a clean 502 rather than a cut response.
        log.warning(
            "upstream broke off before the response ended: answered 502", extra={"error": str(exc)}
        )
        return _response(BROKE_OFF)
    return web.Response(status=upstream.status, reason=upstream.reason, body=body, headers=headers)
