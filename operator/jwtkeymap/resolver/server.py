"""Serving the resolver: the runner that answers ``/check`` first, and the process's serve loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging

from aiohttp import web

from jwtkeymap.core.settings import Settings
from jwtkeymap.resolver.handlers import SERVICE, check_handler, create_app, is_check_path

log = logging.getLogger("jwtkeymap.resolver")


class ResolverRunner(web.AppRunner):
    """An ``AppRunner`` whose server hands ``/check`` straight to the check handler.

    Every other path goes through the application as usual. Skipping the
    router, match info and application dispatch for the one path that sees
    every request of the proxy saves about a fifth of a cache hit's CPU
    (bench/README.md); the check needs none of them.

    It overrides ``AppRunner._make_server``, an underscore hook of aiohttp 3.x
    (pyproject.toml pins ``aiohttp<4``). If it ever stops being called, the check
    still works through the routes, and
    ``test_runner_fast_path_and_router_agree_on_every_path`` fails, because it
    asserts that the router is not consulted.
    """

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        if self.app[SERVICE].settings.upstream:
            # Reverse-proxy mode serves no check on its listener (handlers.handle_no_check).
            return server
        routed = server.request_handler
        handle_check = check_handler(self.app[SERVICE])

        async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
            if is_check_path(request.rel_url.raw_path):
                return await handle_check(request)
            return await routed(request)

        server.request_handler = dispatch
        return server


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:8080`` for IPv6); raise ValueError when malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"listen address {listen!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - a sidecar's default


def _new_loop() -> asyncio.AbstractEventLoop:
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT, then finish in-flight requests within the grace bound."""
    host, port = parse_listen(settings.listen)
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    log.info(
        "resolver listening",
        extra={"listen": f"{host}:{port}", "upstream": bool(settings.upstream)},
    )
    app = create_app(settings)

    async def freeze(_app: web.Application) -> None:
        # Everything allocated at startup lives as long as the process: keep the
        # cyclic collector from rescanning it on every collection of the request path.
        gc.freeze()

    app.on_startup.append(freeze)
    runner = ResolverRunner(
        app,
        handle_signals=True,
        access_log=None,
        shutdown_timeout=settings.shutdown_grace_seconds,
    )

    async def serve() -> None:
        # What web.run_app does, with the resolver's runner.
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    main = loop.create_task(serve())
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
