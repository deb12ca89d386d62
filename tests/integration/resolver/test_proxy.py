"""Reverse-proxy mode: check, strip, add identity, stream both ways."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import hashlib
import json
import random
from typing import Any

import aiohttp
import pytest

from jwtkeymap.demo.polling import wait_until
from jwtkeymap.demo.ports import free_port
from jwtkeymap.resolver import upstream as upstream_module
from jwtkeymap.resolver.upstream import BUFFERED_BODY_MAX
from support.servers import BOTH_ENGINES, EchoUpstream

SPOOFED = {
    "X-JWTKeyMap-Decision": "admin",
    "X-JWTKeyMap-Key-Hash": "f" * 64,
    "X-JWTKeyMap-Team-Id": "spoofed-team",
    "X-JWTKeyMap-User-Id": "spoofed-user",
    "X-JWTKeyMap-Org-Id": "spoofed-org",
    "X-JWTKeyMap-Anything": "spoofed",
}


async def proxy(make_settings, database_url, start_resolver, upstream_port, **extra):
    settings = make_settings(
        database_url=database_url, upstream=f"http://127.0.0.1:{upstream_port}", **extra
    )
    return await start_resolver(settings)


@dataclasses.dataclass
class Mapped:
    """A resolver in front of the echo upstream, and a token mapped through it."""

    url: str
    port: int
    echo: EchoUpstream
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def mapped_proxy(make_settings, database_url, start_resolver, upstream, map_claim, signing_key):
    """Start a resolver (settings ``extra``) in front of the echo upstream, alice mapped."""

    async def start(**extra: Any) -> Mapped:
        echo, port = upstream
        await map_claim("alice")
        r = await proxy(make_settings, database_url, start_resolver, port, **extra)
        return Mapped(r.url, r.port, echo, signing_key.sign(sub="alice"))

    return start


@BOTH_ENGINES
async def test_allowed_request_carries_identity_and_no_spoofed_headers(
    make_settings,
    database_url,
    start_resolver,
    http,
    upstream,
    map_claim,
    signing_key,
    proxy_engine,
):
    echo, port = upstream
    rows = await map_claim("alice", org_id=None)
    r = await proxy(make_settings, database_url, start_resolver, port)
    token = signing_key.sign(sub="alice")
    async with http.post(
        f"{r.url}/v1/chat/completions?stream=true&q=a%20b",
        headers={"Authorization": f"Bearer {token}", **SPOOFED},
        data=b'{"model": "m"}',
    ) as resp:
        assert resp.status == 200
        assert resp.headers["X-Upstream"] == "echo"
        seen = await resp.json()
    assert seen["method"] == "POST"
    assert seen["path"] == "/v1/chat/completions?stream=true&q=a%20b"
    assert seen["body_length"] == len(b'{"model": "m"}')
    # No org id for this key; the spoofed org id is gone.
    want = {
        "x-jwtkeymap-decision": ["mapped"],
        "x-jwtkeymap-key-hash": [rows.key.token_hash],
        "x-jwtkeymap-team-id": ["team-a"],
        "x-jwtkeymap-user-id": ["user-a"],
    }
    if proxy_engine == "nginx":
        # nginx replaces or removes every name the check sets, but cannot drop headers by
        # prefix: a name the resolver never sets passes, as through the nginx example.
        want["x-jwtkeymap-anything"] = ["spoofed"]
    assert echo.identity_of() == want
    headers = echo.headers_of()
    assert headers["authorization"] == [f"Bearer {token}"]
    assert headers["x-forwarded-for"] == ["127.0.0.1"]


@BOTH_ENGINES
async def test_strip_authorization(http, mapped_proxy):
    p = await mapped_proxy(strip_authorization=True)
    async with http.get(f"{p.url}/x", headers=p.auth) as resp:
        assert resp.status == 200
    assert "authorization" not in p.echo.headers_of()


@BOTH_ENGINES
async def test_denied_request_never_reaches_upstream(
    make_settings, database_url, start_resolver, http, upstream, signing_key
):
    echo, port = upstream
    r = await proxy(
        make_settings, database_url, start_resolver, port, unregistered_client_behavior="reject"
    )
    async with http.post(
        f"{r.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {signing_key.sign(sub='mallory')}", **SPOOFED},
        data=b"x" * 1000,
    ) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"]["reason"] == "unregistered_client"
    async with http.get(f"{r.url}/v1/models") as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert echo.requests == []


@BOTH_ENGINES
async def test_hop_by_hop_headers_stay_on_their_hop(http, mapped_proxy, proxy_engine):
    p = await mapped_proxy()
    async with http.get(
        f"{p.url}/x",
        headers={
            **p.auth,
            "Connection": "keep-alive, X-Private-Hop",
            "X-Private-Hop": "secret",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "X-Kept": "yes",
        },
    ) as resp:
        assert resp.status == 200
    headers = p.echo.headers_of()
    for gone in ("keep-alive", "te"):
        assert gone not in headers, gone
    # nginx drops its own hop's headers, not the names a Connection header lists.
    assert ("x-private-hop" in headers) is (proxy_engine == "nginx")
    assert headers["x-kept"] == ["yes"]


@BOTH_ENGINES
async def test_sse_chunks_reach_the_client_before_the_upstream_finishes(http, mapped_proxy):
    p = await mapped_proxy()
    echo = p.echo
    async with http.post(f"{p.url}/sse", headers=p.auth) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        received: list[str] = []
        for event in ("one", "two", "three"):
            await echo.sse_gate.put(event)
            line = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)
            received.append(line.decode().strip())
            # The upstream has sent exactly the events the client already holds:
            # the next one is only sent after this arrival.
            assert echo.sent == [e.removeprefix("data: ") for e in received]
        await echo.sse_gate.put(None)
        assert await resp.content.read() == b""
    assert received == ["data: one", "data: two", "data: three"]


@BOTH_ENGINES
async def test_large_bodies_stream_both_ways(http, mapped_proxy):
    p = await mapped_proxy()
    part = b"y" * (1 << 20)

    async def body():
        yield part
        # The upstream is reading before the client has finished sending.
        await wait_until(lambda: p.echo.upload_progress >= len(part), what="first MiB upstream")
        for _ in range(31):
            yield part

    async with http.post(f"{p.url}/upload", headers=p.auth, data=body()) as resp:
        assert resp.status == 200
        seen = await resp.json()
    assert seen["body_length"] == 32 << 20
    assert seen["sha256"] == hashlib.sha256(part * 32).hexdigest()

    size = 48 << 20
    digest = hashlib.sha256()
    async with http.get(f"{p.url}/download?bytes={size}", headers=p.auth) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(size)
        total = 0
        async for chunk in resp.content.iter_any():
            total += len(chunk)
            digest.update(chunk)
    assert total == size
    assert digest.hexdigest() == hashlib.sha256(b"x" * size).hexdigest()


@BOTH_ENGINES
@pytest.mark.parametrize("size", [200, BUFFERED_BODY_MAX * 2], ids=["small", "streamed"])
@pytest.mark.parametrize("path", ["/upload", "/up%6coad"], ids=["fast-lane", "application"])
async def test_a_compressed_request_body_reaches_the_upstream_as_sent(
    http, mapped_proxy, size, path
):
    # The proxy passes request bodies through byte for byte, as it does responses: a
    # gzip body is not inflated on the way (nor cut to its compressed length).
    p = await mapped_proxy()
    sent = gzip.compress(random.Random(size).randbytes(size))
    headers = {**p.auth, "Content-Encoding": "gzip", "Content-Type": "application/json"}
    async with http.post(f"{p.url}{path}", headers=headers, data=sent) as resp:
        assert resp.status == 200, await resp.text()
        seen = await resp.json()
    assert (seen["body_length"], seen["sha256"]) == (len(sent), hashlib.sha256(sent).hexdigest())


@BOTH_ENGINES
@pytest.mark.parametrize("size", [200, BUFFERED_BODY_MAX * 2], ids=["whole", "streamed"])
@pytest.mark.parametrize("path", ["/gzip", "/g%7Aip"], ids=["fast-lane", "application"])
async def test_a_compressed_response_reaches_the_client_as_sent(mapped_proxy, size, path):
    p = await mapped_proxy()
    sent = EchoUpstream.gzipped(size)
    async with (
        aiohttp.ClientSession(auto_decompress=False) as raw,
        raw.get(f"{p.url}{path}?bytes={size}", headers=p.auth) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Encoding"] == "gzip"
        assert resp.headers["Content-Length"] == str(len(sent))
        assert await resp.read() == sent


@BOTH_ENGINES
async def test_unreachable_upstream_is_502(
    make_settings, database_url, start_resolver, http, map_claim, signing_key, proxy_engine
):
    await map_claim("alice")
    metrics = f"127.0.0.1:{free_port()}"
    r = await proxy(
        make_settings, database_url, start_resolver, free_port(), metrics_listen=metrics
    )
    auth = {"Authorization": f"Bearer {signing_key.sign(sub='alice')}"}
    async with http.get(f"{r.url}/v1/models", headers=auth) as resp:
        assert resp.status == 502
        assert json.loads(await resp.read())["error"]["reason"] == "upstream_unavailable"
    if proxy_engine == "resolver":  # (nginx's upstream responses are nginx's to count)
        async with http.get(f"http://{metrics}/metrics") as resp:
            assert 'jwtkeymap_upstream_responses_total{status="error"} 1.0' in await resp.text()


@BOTH_ENGINES
async def test_a_database_outage_is_a_503_to_retry_and_nothing_is_forwarded(
    make_settings, start_resolver, http, upstream, signing_key
):
    echo, port = upstream
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    r = await proxy(
        make_settings, dead, start_resolver, port,
        db_timeout_seconds=0.3, unregistered_client_behavior="reject",
    )  # fmt: skip
    auth = {"Authorization": f"Bearer {signing_key.sign(sub='alice')}"}
    async with http.post(f"{r.url}/v1/chat/completions", headers=auth, data=b"{}") as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert resp.headers["jwtkeymap-denial-reason"] == "database_unavailable"
        assert (await resp.json())["error"]["reason"] == "database_unavailable"
    assert echo.requests == []


@BOTH_ENGINES
async def test_resolver_endpoints_are_not_proxied(
    make_settings, database_url, start_resolver, http, upstream
):
    echo, port = upstream
    r = await proxy(make_settings, database_url, start_resolver, port)
    for path in ("/healthz", "/readyz"):
        async with http.get(r.url + path) as resp:
            assert resp.status in (200, 503)
    assert echo.requests == []


@BOTH_ENGINES
@pytest.mark.parametrize("metrics_listen", [False, True], ids=["no-metrics-port", "metrics-port"])
async def test_a_proxy_serves_its_metrics_only_on_the_metrics_port(
    metrics_listen, mapped_proxy, http
):
    # The proxy's listener is the upstream's way in: /metrics there is a path like any
    # other (checked, then forwarded), and the resolver's own figures are on the metrics
    # port alone, which serves nothing else.
    address = f"127.0.0.1:{free_port()}"
    m = await mapped_proxy(**({"metrics_listen": address} if metrics_listen else {}))
    async with http.get(f"{m.url}/metrics") as resp:
        assert resp.status == 401
        assert "jwtkeymap_" not in await resp.text()
    async with http.get(f"{m.url}/metrics", headers=m.auth) as resp:
        assert resp.status == 200
        assert resp.headers["X-Upstream"] == "echo"
    assert [seen["path"] for seen in m.echo.requests] == ["/metrics"]
    if not metrics_listen:
        return
    async with http.get(f"http://{address}/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        text = await resp.text()
    assert 'jwtkeymap_decisions_total{decision="mapped",reason=""} 1.0' in text
    assert 'jwtkeymap_decisions_total{decision="denied",reason="invalid_token"} 1.0' in text
    for path in ("/healthz", "/v1/models", "/check"):
        async with http.get(f"http://{address}{path}", headers=m.auth) as resp:
            assert resp.status == 404
    assert len(m.echo.requests) == 1


async def _raw_get(port: int, target: str, token: str) -> tuple[asyncio.StreamReader, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    await writer.drain()
    return reader, writer


def _parse(raw: bytes) -> tuple[str, dict[str, list[str]], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return status, headers, body


async def test_small_response_reaches_the_client_whole_in_one_piece(
    mapped_proxy,
):
    # The upstream sends its headers, then (once released) its body, as uvicorn does; the
    # client gets nothing until the body is there, then all of it with the upstream's headers.
    p = await mapped_proxy()
    echo = p.echo
    reader, writer = await _raw_get(p.port, "/split?bytes=300", p.token)
    try:
        await asyncio.wait_for(echo.split_started.wait(), 10)
        # The upstream's headers are on their way: none of them reaches the client alone.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.5)
        echo.split_gate.set()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status, headers, body = _parse(raw)
    assert status == "HTTP/1.1 200 OK"
    assert body == b"x" * 300
    assert headers["content-length"] == ["300"]
    assert headers["content-type"] == ["application/json"]
    assert headers["x-upstream-cost"] == ["0.01"]
    assert headers["set-cookie"] == ["a=1", "b=2"]
    assert "keep-alive" not in headers
    assert "transfer-encoding" not in headers


@BOTH_ENGINES
async def test_response_over_the_buffered_size_still_streams(http, mapped_proxy):
    p = await mapped_proxy()
    size = BUFFERED_BODY_MAX + 1
    async with http.get(f"{p.url}/split?bytes={size}&first=1024", headers=p.auth) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(size)
        # The first KiB arrives while the upstream still holds the rest.
        first = await asyncio.wait_for(resp.content.readexactly(1024), 10)
        assert not p.echo.split_gate.is_set()
        p.echo.split_gate.set()
        rest = await asyncio.wait_for(resp.content.read(), 10)
    assert first + rest == b"x" * size


async def test_small_response_cut_short_by_the_upstream_is_502(http, mapped_proxy):
    p = await mapped_proxy()
    async with http.get(f"{p.url}/cut", headers=p.auth) as resp:
        assert resp.status == 502
        assert (await resp.json())["error"]["reason"] == "upstream_unavailable"
    assert len(p.echo.requests) == 1


@BOTH_ENGINES
async def test_head_passes_the_length_without_a_body(http, mapped_proxy):
    p = await mapped_proxy()
    async with http.head(f"{p.url}/download?bytes=100", headers=p.auth) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "100"
        assert await resp.read() == b""
    assert p.echo.requests[-1]["method"] == "HEAD"


async def test_an_idle_upstream_connection_is_not_reused(http, mapped_proxy, monkeypatch):
    # An upstream drops its idle connections after its keep-alive timeout (uvicorn: 5 s); a
    # request sent on one as it closes would fail, so the resolver lets them go first.
    monkeypatch.setattr(upstream_module, "UPSTREAM_IDLE_SECONDS", 0.2)
    p = await mapped_proxy()

    async def upstream_peer() -> list[Any]:
        async with http.get(f"{p.url}/x", headers=p.auth) as resp:
            assert resp.status == 200
        return p.echo.requests[-1]["peer"]

    first = await upstream_peer()
    assert await upstream_peer() == first  # back to back: the same connection
    await asyncio.sleep(0.5)  # idleness is what is under test: nothing to poll for
    assert await upstream_peer() != first
