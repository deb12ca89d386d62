"""The resolver's HTTP surface: the check, health, readiness and metrics handlers, and the app.

The handlers only translate HTTP; ``Service`` decides. The service is opened
when the application starts (``create_app``'s lifecycle) and is found under
``SERVICE``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from aiohttp import web
from multidict import CIMultiDictProxy

from jwtkeymap.core.clock import SYSTEM_CLOCK, Clock
from jwtkeymap.core.errors import ConfigError
from jwtkeymap.core.settings import Settings
from jwtkeymap.resolver import check
from jwtkeymap.resolver.check import Answer
from jwtkeymap.resolver.limits import Limits
from jwtkeymap.resolver.metrics import CONTENT_TYPE, Metrics
from jwtkeymap.resolver.proxy import add_proxy_routes
from jwtkeymap.resolver.service import Service, header_digest

SERVICE = web.AppKey("service", Service)

log = logging.getLogger("jwtkeymap.resolver")

CHECK_PATH = "/check"
JWKS_PATH = "/.well-known/jwks.json"
HEALTHZ_PATH = "/healthz"
READYZ_PATH = "/readyz"
METRICS_PATH = "/metrics"

# A request whose Authorization headers disagree must not be checked on one and
# forwarded with both (issue 14, F12).
TWO_AUTHORIZATIONS = check.refuse(
    400, "invalid_request", "JWT Key Mapping: the request has more than one Authorization header."
)


# What a path the resolver does not serve answers (``/check`` in reverse-proxy mode).
NOT_FOUND_BODY: Final = json.dumps(
    {"error": {"type": "not_found", "code": 404, "message": "not found"}}
).encode()


def is_check_path(path: str) -> bool:
    """Tell whether ``path`` is ``/check`` or below it (what the check routes match)."""
    n = len(CHECK_PATH)
    return path.startswith(CHECK_PATH) and (len(path) == n or path[n] == "/")


def serves_metrics(settings: Settings) -> bool:
    """Tell whether the main listener serves ``/metrics``: in check mode, unless
    ``metrics_listen`` moves it. A reverse proxy's listener is its upstream's way in:
    ``/metrics`` there is the upstream's path, and the resolver's own is only on
    ``metrics_listen``."""
    return not settings.upstream and not settings.metrics_listen


def own_paths(settings: Settings) -> Callable[[str], bool]:
    """Tell whether the application answers a path itself rather than forward it: the
    check's, and every other route ``create_app`` adds besides the proxy's."""
    own = {JWKS_PATH, HEALTHZ_PATH, READYZ_PATH}
    if serves_metrics(settings):
        own.add(METRICS_PATH)
    paths = frozenset(own)

    def is_own(path: str) -> bool:
        return path in paths or is_check_path(path)

    return is_own


def _response(result: Answer) -> web.Response:
    return web.Response(status=result.status, body=result.body, headers=result.headers)


def check_handler(service: Service) -> Callable[[web.BaseRequest], Awaitable[web.Response]]:
    """The ``ANY /check[/{tail}]`` handler of one service: the ext_authz / auth_request check.

    Reads only the ``Authorization`` header; the body is ignored. A busy client's
    repeated token is answered by ``Service.recall`` without a coroutine switch.
    """

    async def handle_check(request: web.BaseRequest) -> web.Response:
        headers = request.headers
        authorization = headers.get("Authorization")
        if authorization is not None and _repeated_authorization(headers):
            return _response(TWO_AUTHORIZATIONS)
        digest = header_digest(authorization)
        result = service.recall(digest) or await service.decide(authorization, digest)
        return _response(result)

    return handle_check


async def handle_check(request: web.Request) -> web.Response:
    """The routed check (``ResolverRunner`` answers it before the router instead)."""
    return await check_handler(request.app[SERVICE])(request)


def _repeated_authorization(headers: CIMultiDictProxy[str]) -> bool:
    return len(headers.getall("Authorization", ())) > 1


async def answer_request(request: web.Request) -> Answer:
    """The check's answer for a request to forward (reverse-proxy mode)."""
    headers = request.headers
    if _repeated_authorization(headers):
        return TWO_AUTHORIZATIONS
    return await request.app[SERVICE].answer(headers.get("Authorization"))


def is_loopback(remote: str | None) -> bool:
    """Tell whether a peer address is on this host's loopback (where details are shown)."""
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


async def handle_no_check(request: web.Request) -> web.Response:
    """``/check`` in reverse-proxy mode: 404, never forwarded.

    The check's 200 answer carries the key hash and the signed assertion, meant
    for the upstream only; a client reaching the proxy's listener must never
    obtain them.
    """
    return web.Response(status=404, body=NOT_FOUND_BODY, content_type="application/json")


async def handle_jwks(request: web.Request) -> web.Response:
    """``GET /.well-known/jwks.json``: the assertion keys' public halves (404 when off)."""
    signer = request.app[SERVICE].signer
    if signer is None:
        return await handle_no_check(request)
    return web.Response(
        body=signer.jwks_body,
        headers={"Content-Type": "application/json", "Cache-Control": "max-age=60"},
    )


async def handle_healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: the process is alive."""
    return web.json_response({"ok": True})


async def handle_readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: database, JWKS and invalidation channel.

    The details (issuer URLs, schema, channel state) only to a loopback peer; anyone
    else (a kubelet probe, a client in reverse-proxy mode) learns ready or not.
    """
    ready, checks = await request.app[SERVICE].readiness()
    body: dict[str, object] = {"ready": ready}
    if is_loopback(request.remote):
        body["checks"] = checks
    return web.json_response(body, status=200 if ready else 503)


async def handle_metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus exposition."""
    return _exposition(request.app[SERVICE].metrics)


def _exposition(metrics: Metrics) -> web.Response:
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})


def _metrics_listener(
    settings: Settings, metrics: Metrics
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The application's companion listener on ``metrics_listen``: ``GET /metrics``,
    nothing else, for as long as the application runs."""
    listen = settings.metrics_listen or ""
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise ConfigError(f"metrics_listen: {exc}") from None

    async def handle(_request: web.Request) -> web.Response:
        return _exposition(metrics)

    async def serve(_app: web.Application) -> AsyncIterator[None]:
        app = web.Application(handler_args=Limits.of(settings).handler_args())
        app.router.add_get(METRICS_PATH, handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"metrics_listen {listen}: {exc.strerror or exc}") from None
        log.info("metrics listening", extra={"listen": f"{host}:{port}"})
        yield
        await runner.cleanup()

    return serve


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:8080`` for IPv6); raise ValueError when malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"listen address {listen!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - a sidecar's default


def create_app(settings: Settings, *, clock: Clock = SYSTEM_CLOCK) -> web.Application:
    """Build the resolver application (reverse-proxy routes when ``settings.upstream``).

    In reverse-proxy mode ``/check`` answers 404 (``handle_no_check``) and is never
    forwarded. Serve it with ``server.ResolverRunner`` (``server.run`` does), which
    bounds every connection and answers the check before the router; the check
    routes are registered here as well, so any other runner serves the same
    contract, only slower and with aiohttp's own limits alone.
    """
    app = web.Application(handler_args=Limits.of(settings).handler_args())
    metrics = Metrics()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        service = await Service.open(settings, metrics=metrics, clock=clock)
        app[SERVICE] = service
        yield
        await service.close()

    async def on_shutdown(app: web.Application) -> None:
        app[SERVICE].shutting_down = True

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(on_shutdown)

    check_route = handle_no_check if settings.upstream else handle_check
    app.router.add_route("*", CHECK_PATH, check_route)
    app.router.add_route("*", CHECK_PATH + "/{tail:.*}", check_route)
    app.router.add_get(JWKS_PATH, handle_jwks)
    app.router.add_get(HEALTHZ_PATH, handle_healthz, allow_head=True)
    app.router.add_get(READYZ_PATH, handle_readyz, allow_head=True)
    if serves_metrics(settings):
        app.router.add_get(METRICS_PATH, handle_metrics)
    elif settings.metrics_listen:
        app.cleanup_ctx.append(_metrics_listener(settings, metrics))
    if settings.upstream:
        add_proxy_routes(app, settings, check_request=answer_request, metrics=metrics)
    return app
