"""The operator's Prometheus endpoint (``/metrics``), for the chart's ServiceMonitor.

Served by the operator's own event loop (aiohttp), started and stopped with kopf,
on the port named by ``$JWTKEYMAP_METRICS_PORT``; without it nothing is served.
The running server is kept in kopf's operator memo between startup and cleanup.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Final

import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

PORT_ENV: Final = "JWTKEYMAP_METRICS_PORT"
HANDLER_ID: Final = "metrics-endpoint"
_MEMO_KEY: Final = "jwtkeymap.metrics"


async def _metrics(_: web.Request) -> web.Response:
    body = generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def start(memo: kopf.Memo, *, port: int, **_: Any) -> None:
    """Startup: serve /metrics on ``port``."""
    app = web.Application()
    app.router.add_get("/metrics", _metrics)
    served = web.AppRunner(app, access_log=None)
    await served.setup()
    await web.TCPSite(served, "0.0.0.0", port).start()  # noqa: S104 - inside a pod
    memo[_MEMO_KEY] = served


async def stop(memo: kopf.Memo, **_: Any) -> None:
    """Cleanup: stop serving /metrics."""
    served: web.AppRunner | None = memo.pop(_MEMO_KEY, None)
    if served is not None:
        await served.cleanup()


def register_metrics(registry: kopf.OperatorRegistry, port: int | None = None) -> bool:
    """Serve /metrics on ``port`` (default $JWTKEYMAP_METRICS_PORT) while the operator runs."""
    if port is None:
        raw = os.environ.get(PORT_ENV)
        if not raw:
            return False
        port = int(raw)
    kopf.on.startup(registry=registry, id=HANDLER_ID)(functools.partial(start, port=port))
    kopf.on.cleanup(registry=registry, id=HANDLER_ID)(stop)
    return True
