"""A client without a token cannot exhaust the resolver (issue 14, F1): a real resolver
process in reverse-proxy mode, its memory read from /proc, raw-socket attackers.

The bounds are generous (a loaded 2-core machine); bench/attack.py prints the figures.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from jwtkeymap.demo.ports import free_port
from jwtkeymap.demo.resolver import ResolverProcess
from jwtkeymap.demo.signing import SigningKey
from support.attacks import big_heads, idle_connections, memory_kib, slow_heads

MEMORY_BOUND_MIB = 64


def proxy_process(key: SigningKey, **extra: Any) -> Iterator[ResolverProcess]:
    settings = {
        "issuers": [{"issuer": key.issuer, "public_keys": [key.public_pem], "audience": "litellm"}],
        "log_level": "warning",
        **extra,
    }
    # Nothing listens upstream: no request here is ever allowed through.
    proc = ResolverProcess(settings, upstream=f"http://127.0.0.1:{free_port()}")
    asyncio.run(proc.start())
    try:
        yield proc
        assert proc.alive(), proc.output()
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def resolver(signing_key: SigningKey) -> Iterator[ResolverProcess]:
    """Short timers, so the slow attacks end in seconds."""
    yield from proxy_process(
        signing_key, header_timeout_seconds=2, keepalive_timeout_seconds=1, max_connections=400
    )


async def status_of(url: str, headers: dict[str, str]) -> tuple[int, str | None]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        body = await resp.read()
        reason = json.loads(body)["error"]["reason"] if body.startswith(b"{") else None
        return resp.status, reason


async def test_large_heads_without_a_token_stay_under_a_memory_bound(resolver) -> None:
    # Warm up (first requests allocate), then measure against the peak.
    for _ in range(3):
        await status_of(f"{resolver.url}/v1/models", {})
    assert resolver.proc is not None
    before = memory_kib(resolver.proc.pid)["VmRSS"]
    # The attack pass: 22 connections x 126 fields of 127,000 bytes, never finished.
    outcome = await big_heads(resolver.port, connections=22, fields=126, field_bytes=127_000)
    assert outcome.closed == 22, outcome
    # A complete 15 MB head is refused, never answered 200.
    fifteen = await big_heads(
        resolver.port, connections=1, fields=118, field_bytes=127_000, finish=True
    )
    assert not [s for s in fifteen.statuses if not s.startswith(b"HTTP/1.1 431")], fifteen
    grown = (memory_kib(resolver.proc.pid)["VmHWM"] - before) / 1024
    assert grown < MEMORY_BOUND_MIB, f"peak RSS grew {grown:.0f} MiB"


async def test_slow_heads_are_closed_within_the_header_timeout(resolver) -> None:
    # 300 connections, one header line a second; the header timeout is 2 s.
    outcome = await slow_heads(resolver.port, connections=300, interval=1, within=15)
    assert outcome.closed == 300, outcome
    assert outcome.seconds < 10, outcome
    assert set(outcome.statuses) <= {b"HTTP/1.1 408 Request Timeout"}


async def test_only_authorization_may_be_long(resolver, signing_key) -> None:
    url = f"{resolver.url}/v1/models"
    # A token just over core's 16 KiB still reaches the check: the contract's 401.
    assert await status_of(url, {"Authorization": "Bearer " + "x" * (16 * 1024 + 1)}) == (
        401,
        "invalid_token",
    )
    # Any other field over 8 KiB: 431, before any check.
    token = signing_key.sign(sub="alice")
    assert await status_of(url, {"Authorization": f"Bearer {token}", "X-Big": "y" * 9000}) == (
        431,
        "header_too_large",
    )
    # Authorization past its own limit: the parser's 400.
    status, _ = await status_of(url, {"Authorization": "Bearer " + "x" * (40 * 1024)})
    assert status == 400


async def test_idle_keepalive_connections_are_closed(resolver) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", resolver.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        # Keep-alive 1 s (the setting), checked at aiohttp's one-second resolution.
        await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


@pytest.fixture
def capped(signing_key: SigningKey) -> Iterator[ResolverProcess]:
    """At most 20 connections, and a header timeout long enough to hold them."""
    yield from proxy_process(signing_key, max_connections=20, header_timeout_seconds=30)


async def test_connections_over_the_cap_are_refused_at_once(capped) -> None:
    held = await idle_connections(capped.port, 20)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", capped.port)
        answer = await asyncio.wait_for(reader.read(), 2)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer
    finally:
        for _, w in held:
            w.close()
