"""Serving the resolver: the runner that answers ``/check`` first, and the process's serve loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator

from aiohttp import web

from jwtkeymap.core.clock import SYSTEM_CLOCK, Clock
from jwtkeymap.core.settings import Settings
from jwtkeymap.resolver.check import HEADER_TOO_LARGE
from jwtkeymap.resolver.checklane import CHECK_METHODS, CheckLane
from jwtkeymap.resolver.fastlane import FastLane, ProxyLane
from jwtkeymap.resolver.handlers import (
    SERVICE,
    check_handler,
    create_app,
    is_check_path,
    own_paths,
    parse_listen,
)
from jwtkeymap.resolver.lane import Lane, LaneServer
from jwtkeymap.resolver.limits import GuardedRequestHandler, Limits, oversized_field
from jwtkeymap.resolver.nginx import EngineExited, NginxEngine
from jwtkeymap.resolver.proxy import UPSTREAM

log = logging.getLogger("jwtkeymap.resolver")


class ResolverRunner(web.AppRunner):
    """An ``AppRunner`` whose connections start in a lane and are bounded, and whose server
    answers ``/check`` first.

    Each connection starts in the mode's lane (``resolver/lane.py``): in check mode the
    check's (``resolver/checklane.py``), in reverse-proxy mode the proxy's
    (``resolver/fastlane.py``). A connection the lane hands over is a
    ``limits.GuardedRequestHandler`` (head size, head time, connection count), and a
    request with an oversized header field other than ``Authorization`` is answered 431
    before anything else. There, in check mode, ``/check`` goes straight to the check
    handler; every other path goes through the application as usual. Skipping the
    router, match info and application dispatch for the one path that sees every
    request of the proxy saves about a fifth of a cache hit's CPU (bench/README.md); the
    check needs none of them. In reverse-proxy mode the router answers ``/check`` with
    404.

    It overrides ``AppRunner._make_server``, an underscore hook of aiohttp 3.x
    (pyproject.toml pins ``aiohttp<4``), and rebuilds the server from its ``_kwargs``.
    If it ever stops being called, the check still works through the routes, and
    ``test_runner_fast_path_and_router_agree_on_every_path`` fails, because it
    asserts that the router is not consulted.
    """

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        routed = server.request_handler
        service = self.app[SERVICE]
        limits = Limits.of(service.settings)
        handle_check = check_handler(service)
        # Reverse-proxy mode serves no check on its listener (handlers.handle_no_check).
        fast_check = not service.settings.upstream

        async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
            protocol = request.protocol
            large = not isinstance(protocol, GuardedRequestHandler) or protocol.large_head
            if large and oversized_field(request.raw_headers, limits):
                return web.Response(
                    status=HEADER_TOO_LARGE.status,
                    body=HEADER_TOO_LARGE.body,
                    headers=HEADER_TOO_LARGE.headers,
                )
            if fast_check and is_check_path(request.rel_url.raw_path):
                return await handle_check(request)
            return await routed(request)

        kwargs = {
            "request_factory": server.request_factory,
            "handler_cancellation": server.handler_cancellation,
            **server._kwargs,  # what the application built it with
        }
        if fast_check:
            # The check's own lane takes a kept-alive check first (resolver/checklane.py).
            lane = Lane(
                service=service, limits=limits, takes_path=is_check_path, methods=CHECK_METHODS
            )
            return LaneServer(dispatch, lane=lane, protocol=CheckLane, **kwargs)
        own = own_paths(service.settings)
        lane = ProxyLane(
            service=service,
            limits=limits,
            takes_path=lambda path: not own(path),
            upstream=self.app[UPSTREAM],
        )
        return LaneServer(dispatch, lane=lane, protocol=FastLane, **kwargs)


def _new_loop() -> asyncio.AbstractEventLoop:
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _freezing_app(settings: Settings) -> web.Application:
    app = create_app(settings)

    async def freeze(_app: web.Application) -> None:
        # Everything allocated at startup lives as long as the process: keep the
        # cyclic collector from rescanning it on every collection of the request path.
        gc.freeze()

    app.on_startup.append(freeze)
    return app


async def _serve(settings: Settings) -> None:
    """Serve on ``listen`` until SIGTERM/SIGINT (aiohttp's signal handling)."""
    host, port = parse_listen(settings.listen)
    runner = ResolverRunner(
        _freezing_app(settings),
        handle_signals=True,
        access_log=None,
        shutdown_timeout=settings.shutdown_grace_seconds,
    )
    # What web.run_app does, with the resolver's runner.
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def served_by_nginx(
    settings: Settings, *, clock: Clock = SYSTEM_CLOCK
) -> AsyncIterator[tuple[NginxEngine, web.Application]]:
    """Reverse-proxy mode with nginx as its engine (``resolver/nginx.py``), for the block:
    the resolver's check on a private Unix socket, nginx on ``listen``. Leaving kills
    nginx at once; stop it gracefully first (``NginxEngine.stop``) to drain it."""
    engine = NginxEngine(settings)
    # The resolver's own part is check mode's; the upstream is nginx's.
    own = settings.model_copy(update={"upstream": None, "proxy_engine": "resolver"})
    app = create_app(own, clock=clock)
    runner = ResolverRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=settings.shutdown_grace_seconds
    )
    await runner.setup()
    try:
        await web.UnixSite(runner, str(engine.check_socket)).start()
        await engine.start()
        yield engine, app
    finally:
        await engine.stop(0)
        await runner.cleanup()


async def _serve_with_nginx(settings: Settings) -> None:
    """Serve with nginx as the engine until SIGTERM/SIGINT, or fail when nginx exits."""
    async with served_by_nginx(settings) as (engine, app):
        gc.freeze()  # started: as _freezing_app does for the resolver's own engine
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        exited = asyncio.ensure_future(engine.wait())
        stop = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if exited.done():
            raise EngineExited(
                f"nginx, the proxy engine, exited with status {exited.result()}: "
                "stopping, since nothing is relayed without it"
            )
        # Not ready from now on; nginx finishes what is in flight, the check still answers.
        app[SERVICE].shutting_down = True
        await engine.stop(settings.shutdown_grace_seconds)


def run(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT, then finish in-flight requests within the grace bound."""
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    log.info(
        "resolver listening",
        extra={
            "listen": settings.listen,
            "upstream": bool(settings.upstream),
            "engine": settings.proxy_engine if settings.upstream else None,
        },
    )
    serve = _serve_with_nginx if settings.proxy_engine == "nginx" else _serve
    main = loop.create_task(serve(settings))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not main.done():
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
        leftover = asyncio.all_tasks(loop)
        for task in leftover:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
