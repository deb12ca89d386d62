"""Spoofed identity headers, in the forms the resolver tests do not try: underscores (which
WSGI servers and some frameworks fold into dashes), repeated copies and odd casing, on
allowed and on fallback answers, through nginx, Envoy and the reverse-proxy mode.
(The plain `X-JWTKeyMap-*` spoof is tested in tests/integration/resolver.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.demo.ports import free_port
from support.servers import FRONT_PROXIES, EchoUpstream, Envoy, Nginx, serve, trusting_resolver

pytestmark = pytest.mark.slow

# Sent as a list: repeated names are separate header lines.
SPOOFED = [
    ("X_JWTKeyMap_Key_Hash", "f" * 64),
    ("x_jwtkeymap_team_id", "spoofed-team"),
    ("X-JWTKEYMAP-TEAM-ID", "spoofed-team"),
    ("x-jwtkeymap-team-id", "spoofed-team-2"),
    ("X-JwtKeyMap-Org-Id", "spoofed-org"),
    ("X-JWTKeyMap-Org_Id", "spoofed-org"),
    ("X-JWTKeyMap-Decision", "admin"),
]


def normalized(name: str) -> str:
    return name.lower().replace("_", "-")


@pytest.fixture(params=["reverse-proxy", "nginx", "envoy"])
async def gateway(request, database_url, store, signing_key) -> AsyncIterator[Any]:
    """(base URL, echo upstream, key hash of the mapped client) for each way of deploying."""
    _, key = await store.create_key(NewKey(team_id="team-a", user_id="user-a"), actor="t")
    await store.add_mapping(MappingIdentity("", "sub", "alice"), key.token_hash, actor="t")
    echo = EchoUpstream()
    upstream_port = free_port()
    async with serve(echo.app, port=upstream_port):
        upstream = f"http://127.0.0.1:{upstream_port}" if request.param == "reverse-proxy" else None
        resolver = trusting_resolver(signing_key, database_url)
        resolver.upstream = upstream
        proxy: Nginx | Envoy | None = None
        try:
            await resolver.start()
            if request.param == "reverse-proxy":
                url = resolver.url
            else:
                kind = FRONT_PROXIES[request.param]
                proxy = kind(resolver_port=resolver.port, upstream_port=upstream_port)
                await proxy.start()
                url = proxy.url
            yield url, echo, key.token_hash
        finally:
            if proxy is not None:
                await asyncio.to_thread(proxy.stop)
            await asyncio.to_thread(resolver.stop)
        echo.hold.set()


async def test_spoofed_variants_never_reach_the_upstream(gateway, signing_key) -> None:
    url, echo, key_hash = gateway
    expected = {  # a mapped client, and one that falls back (no key of its own)
        "alice": {
            "x-jwtkeymap-decision": ["mapped"],
            "x-jwtkeymap-key-hash": [key_hash],
            "x-jwtkeymap-team-id": ["team-a"],
            "x-jwtkeymap-user-id": ["user-a"],
        },
        "stranger": {"x-jwtkeymap-decision": ["fallback"]},
    }
    for sub, identity in expected.items():
        headers = [("Authorization", f"Bearer {signing_key.sign({'sub': sub})}"), *SPOOFED]
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{url}/v1/models", headers=CIMultiDict(headers)) as resp,
        ):
            assert resp.status == 200, await resp.text()
        seen: dict[str, list[str]] = {}
        for name, value in echo.requests[-1]["headers"]:
            seen.setdefault(normalized(name), []).append(value)
        assert {k: v for k, v in seen.items() if k.startswith("x-jwtkeymap-")} == identity, sub
