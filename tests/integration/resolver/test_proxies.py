"""The examples/ configurations, run by the real proxies: nginx auth_request and Envoy ext_authz.

Each proxy is started from the example file users copy (only ports rewritten),
with the resolver in check mode and an upstream that echoes what it received.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from jwtkeymap.demo.ports import free_port
from support.servers import FRONT_PROXIES, Envoy, Nginx

SPOOFED = {
    "X-JWTKeyMap-Decision": "admin",
    "X-JWTKeyMap-Key-Hash": "f" * 64,
    "X-JWTKeyMap-Team-Id": "spoofed-team",
    "X-JWTKeyMap-User-Id": "spoofed-user",
    "X-JWTKeyMap-Org-Id": "spoofed-org",
}


@pytest.fixture(params=["nginx", "envoy"])
async def gateway(request, make_settings, database_url, start_resolver, upstream) -> AsyncIterator:
    """(proxy, resolver, echo upstream) for each proxy."""
    echo, upstream_port = upstream
    r = await start_resolver(
        make_settings(
            database_url=database_url,
            unregistered_client_behavior="reject",
            admin={"claim": "scope", "value": "litellm_proxy_admin"},
        )
    )
    kind = FRONT_PROXIES[request.param]
    proxy = kind(resolver_port=r.port, upstream_port=upstream_port)
    try:
        await proxy.start()
        yield proxy, r, echo
    finally:
        await asyncio.to_thread(proxy.stop)


async def test_mapped_request_reaches_upstream_with_identity(gateway, http, map_claim, signing_key):
    proxy, _, echo = gateway
    rows = await map_claim("alice", org_id=None)
    token = signing_key.sign(sub="alice")
    async with http.post(
        f"{proxy.url}/v1/chat/completions?x=1",
        headers={"Authorization": f"Bearer {token}", **SPOOFED},
        data=b'{"model": "m"}',
    ) as resp:
        assert resp.status == 200, await resp.text()
        seen = await resp.json()
    assert seen["path"] == "/v1/chat/completions?x=1"
    assert seen["body_length"] == len(b'{"model": "m"}')
    # No org id for this key: the client's spoofed copy must not get through either.
    assert echo.identity_of() == {
        "x-jwtkeymap-decision": ["mapped"],
        "x-jwtkeymap-key-hash": [rows.key.token_hash],
        "x-jwtkeymap-team-id": ["team-a"],
        "x-jwtkeymap-user-id": ["user-a"],
    }
    assert echo.headers_of()["authorization"] == [f"Bearer {token}"]


async def test_admin_request_carries_no_spoofed_key(gateway, http, signing_key):
    proxy, _, echo = gateway
    token = signing_key.sign(sub="root", scope="litellm_proxy_admin")
    async with http.get(
        f"{proxy.url}/v1/models", headers={"Authorization": f"Bearer {token}", **SPOOFED}
    ) as resp:
        assert resp.status == 200
    assert echo.identity_of() == {"x-jwtkeymap-decision": ["admin"]}


async def test_denied_requests_never_reach_upstream(gateway, http, signing_key):
    proxy, _, echo = gateway
    async with http.post(
        f"{proxy.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {signing_key.sign(sub='mallory')}", **SPOOFED},
        data=b"{}",
    ) as resp:
        assert resp.status == 403
        # Envoy relays the resolver's answer; the nginx example answers in the same form.
        assert resp.content_type == "application/json"
        error = (await resp.json())["error"]
        assert (error["code"], error["reason"]) == (403, "unregistered_client")
        assert "WWW-Authenticate" not in resp.headers
    async with http.get(f"{proxy.url}/v1/models", headers=SPOOFED) as resp:
        assert resp.status == 401
        assert resp.headers.getall("WWW-Authenticate") == ['Bearer error="invalid_token"']
        error = (await resp.json())["error"]
        assert (error["code"], error["reason"]) == (401, "invalid_token")
    assert echo.requests == []


async def test_database_outage_is_503_with_retry_after(
    make_settings, start_resolver, upstream, http, signing_key
):
    echo, upstream_port = upstream
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    r = await start_resolver(
        make_settings(
            database_url=dead, db_timeout_seconds=0.3, unregistered_client_behavior="reject"
        )
    )
    token = signing_key.sign(sub="alice")
    for kind in (Nginx, Envoy):
        proxy = kind(resolver_port=r.port, upstream_port=upstream_port)
        try:
            await proxy.start()
            async with http.get(
                f"{proxy.url}/v1/models", headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                assert resp.status == 503, kind.name
                if isinstance(proxy, Nginx):  # the example's error_page adds it
                    assert resp.headers["Retry-After"] == "1"
        finally:
            await asyncio.to_thread(proxy.stop)
    assert echo.requests == []


async def test_sse_passes_through_unbuffered(gateway, http, map_claim, signing_key):
    proxy, _, echo = gateway
    await map_claim("alice")
    token = signing_key.sign(sub="alice")
    async with http.post(f"{proxy.url}/sse", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200
        for event in ("one", "two"):
            await echo.sse_gate.put(event)
            line = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)
            assert line == f"data: {event}\n\n".encode()
            assert echo.sent[-1] == event and len(echo.sent) == ["one", "two"].index(event) + 1
        await echo.sse_gate.put(None)


@pytest.mark.parametrize("kind", [Nginx, Envoy], ids=["nginx", "envoy"])
async def test_assertion_reaches_upstream_and_a_forged_one_never(
    kind, make_settings, database_url, start_resolver, upstream, http, map_claim, signing_key
):
    from jwtkeymap.core.assertion import verify, verifying_keys

    echo, upstream_port = upstream
    rows = await map_claim("alice")
    r = await start_resolver(make_settings(database_url=database_url, assertion={"enabled": True}))
    proxy = kind(resolver_port=r.port, upstream_port=upstream_port)
    await proxy.start()
    try:
        token = signing_key.sign(sub="alice")
        forged = {"X-JWTKeyMap-Assertion": "forged.assertion.value"}
        async with http.get(
            f"{proxy.url}/v1/models", headers={"Authorization": f"Bearer {token}", **forged}
        ) as resp:
            assert resp.status == 200
            assert "x-jwtkeymap-assertion" not in resp.headers  # never to the client
        (sent,) = echo.identity_of()["x-jwtkeymap-assertion"]
        async with http.get(f"{r.url}/.well-known/jwks.json") as resp:
            keys = verifying_keys(await resp.read())
        said = verify(sent, keys, audience="litellm", issuer="jwtkeymap", now=time.time())
        assert said.key_hash == rows.key.token_hash
        # Without assertions the forged one is dropped, not forwarded.
        r2 = await start_resolver(make_settings(database_url=database_url))
        proxy2 = kind(resolver_port=r2.port, upstream_port=upstream_port)
        await proxy2.start()
        try:
            async with http.get(
                f"{proxy2.url}/v1/models", headers={"Authorization": f"Bearer {token}", **forged}
            ) as resp:
                assert resp.status == 200
            assert "x-jwtkeymap-assertion" not in echo.identity_of()
        finally:
            await asyncio.to_thread(proxy2.stop)
    finally:
        await asyncio.to_thread(proxy.stop)
