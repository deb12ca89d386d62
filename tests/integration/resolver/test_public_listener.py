"""The reverse proxy's public listener: what a client may reach and what it learns (issue 14).

Raw sockets where an HTTP client would tidy the request up (two Authorization headers,
an absolute-form target, Expect: 100-continue).
"""

from __future__ import annotations

import asyncio

import pytest

from support.servers import BOTH_ENGINES


async def exchange(port: int, head: bytes, *, body: bytes | None = None) -> tuple[bytes, bytes]:
    """Send ``head``; return (first status line, everything read).

    With ``body``, send it after the first answer and read to the end (the heads say
    ``Connection: close``); without, read what the first answer came with.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        first = await asyncio.wait_for(reader.readline(), 10)
        if body is None:
            return first.rstrip(), first + await asyncio.wait_for(reader.read(65536), 10)
        writer.write(body)
        await writer.drain()
        return first.rstrip(), first + await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def proxy(make_settings, database_url, start_resolver, upstream_port, **extra):
    settings = make_settings(
        database_url=database_url, upstream=f"http://127.0.0.1:{upstream_port}", **extra
    )
    return await start_resolver(settings)


@BOTH_ENGINES
@pytest.mark.parametrize("path", ["/check", "/check/", "/check/v1/models"])
async def test_check_is_not_served_to_clients_nor_forwarded(
    make_settings, database_url, start_resolver, http, upstream, map_claim, signing_key, path
):
    echo, port = upstream
    await map_claim("alice")
    r = await proxy(make_settings, database_url, start_resolver, port)
    auth = {"Authorization": f"Bearer {signing_key.sign(sub='alice')}"}
    async with http.get(r.url + path, headers=auth) as resp:
        assert resp.status == 404
        assert not [h for h in resp.headers if h.lower().startswith("x-jwtkeymap-")]
    assert echo.requests == []


@BOTH_ENGINES
async def test_two_authorization_headers_are_refused(
    make_settings, database_url, start_resolver, upstream, map_claim, signing_key
):
    echo, port = upstream
    await map_claim("alice")
    good = signing_key.sign(sub="alice")
    r = await proxy(make_settings, database_url, start_resolver, port)
    check_mode = await start_resolver(make_settings(database_url=database_url))
    for target, path in ((r, "/v1/models"), (check_mode, "/check")):
        head = (
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {good}\r\n"
            "Authorization: Bearer someone-else\r\nConnection: close\r\n\r\n"
        ).encode()
        status, raw = await exchange(target.port, head)
        assert status.startswith(b"HTTP/1.1 400"), raw[:200]
        assert b"invalid_request" in raw
    assert echo.requests == []


async def test_absolute_form_target_is_a_clean_400(
    make_settings, database_url, start_resolver, upstream, map_claim, signing_key
):
    echo, port = upstream
    await map_claim("alice")
    r = await proxy(make_settings, database_url, start_resolver, port)
    head = (
        f"GET http://elsewhere.example/x HTTP/1.1\r\nHost: elsewhere.example\r\n"
        f"Authorization: Bearer {signing_key.sign(sub='alice')}\r\nConnection: close\r\n\r\n"
    ).encode()
    status, raw = await exchange(r.port, head)
    assert status.startswith(b"HTTP/1.1 400"), raw[:200]
    assert echo.requests == []


@BOTH_ENGINES
async def test_expect_100_continue_is_answered_after_the_check(
    make_settings, database_url, start_resolver, upstream, map_claim, signing_key, proxy_engine
):
    echo, port = upstream
    await map_claim("alice")
    r = await proxy(make_settings, database_url, start_resolver, port)

    def head(auth: str) -> bytes:
        return (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
            f"Expect: 100-continue\r\n{auth}Connection: close\r\n\r\n"
        ).encode()

    # No token: the refusal comes first, never a 100 inviting the body. (nginx invites it
    # as it refuses, and discards it: the refusal follows at once, nothing goes upstream.)
    for auth in ("", "Authorization: Bearer not-a-jwt\r\n"):
        status, raw = await exchange(r.port, head(auth))
        if proxy_engine == "nginx" and status == b"HTTP/1.1 100 Continue":
            status = raw.split(b"\r\n\r\n", 1)[1].split(b"\r\n", 1)[0]
        assert status.startswith(b"HTTP/1.1 401"), status
    # A valid token: 100, then the body goes through once.
    token = signing_key.sign(sub="alice")
    status, raw = await exchange(r.port, head(f"Authorization: Bearer {token}\r\n"), body=b"{}")
    assert status == b"HTTP/1.1 100 Continue"
    assert b"HTTP/1.1 200" in raw
    assert len(echo.requests) == 1
