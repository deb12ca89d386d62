"""What /readyz and /healthz tell a peer: details on loopback only (issue 14, F2)."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from jwtkeymap.resolver.handlers import SERVICE, handle_healthz, handle_readyz


class NotReady:
    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        return False, {"jwks": {"https://idp.internal.example": False}, "database": {"ok": True}}


def request_from(peer: str, path: str) -> web.Request:
    app = web.Application()
    app[SERVICE] = NotReady()  # type: ignore[assignment]
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 40000) if name == "peername" else default
    )
    return make_mocked_request("GET", path, app=app, transport=transport)


@pytest.mark.parametrize("peer", ["10.0.0.7", "192.0.2.1", "2001:db8::1"])
async def test_readyz_tells_other_peers_only_ready_or_not(peer: str) -> None:
    resp = await handle_readyz(request_from(peer, "/readyz"))
    assert resp.status == 503
    assert json.loads(resp.body) == {"ready": False}  # type: ignore[arg-type]
    health = await handle_healthz(request_from(peer, "/healthz"))
    assert json.loads(health.body) == {"ok": True}  # type: ignore[arg-type]


@pytest.mark.parametrize("peer", ["127.0.0.1", "::1"])
async def test_readyz_details_on_loopback(peer: str) -> None:
    resp = await handle_readyz(request_from(peer, "/readyz"))
    body = json.loads(resp.body)  # type: ignore[arg-type]
    assert body["checks"]["jwks"] == {"https://idp.internal.example": False}
