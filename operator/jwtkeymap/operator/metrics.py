"""The operator's Prometheus endpoint (``/metrics``), for the chart's ServiceMonitor.

Served by the operator's own event loop (aiohttp), started and stopped with kopf,
on the port named by ``$JWTKEYMAP_METRICS_PORT``; without it nothing is served.
"""

from __future__ import annotations

import os
from typing import Any, Final

import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

PORT_ENV: Final = "JWTKEYMAP_METRICS_PORT"


async def _metrics(_: web.Request) -> web.Response:
    body = generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def register(registry: kopf.OperatorRegistry, port: int | None = None) -> bool:
    """Serve /metrics on ``port`` (default $JWTKEYMAP_METRICS_PORT) while the operator runs."""
    if port is None:
        raw = os.environ.get(PORT_ENV)
        if not raw:
            return False
        port = int(raw)
    runner: list[web.AppRunner] = []

    @kopf.on.startup(registry=registry, id="metrics-endpoint")
    async def start(**_: Any) -> None:
        app = web.Application()
        app.router.add_get("/metrics", _metrics)
        served = web.AppRunner(app, access_log=None)
        await served.setup()
        await web.TCPSite(served, "0.0.0.0", port).start()  # noqa: S104 - inside a pod
        runner.append(served)

    @kopf.on.cleanup(registry=registry, id="metrics-endpoint")
    async def stop(**_: Any) -> None:
        while runner:
            await runner.pop().cleanup()

    return True
