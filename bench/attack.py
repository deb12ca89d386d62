"""An attack pass against a real resolver in reverse-proxy mode, all on loopback (issue 14).

    .venv/bin/python -P bench/attack.py            # prints one markdown table

A `jwtkeymap resolver` process with its default listener settings sits in front of an
echo upstream; a second one trusts an issuer whose JWKS is broken. Each row is one
attack by a client without a valid token (or with one, where the finding was about
what a token holder could learn), what a hardened resolver must do, and what this one
did. Memory is read from /proc. The bounds in tests/integration/hostile/test_exhaustion.py
come from the same attacks (tests/support/attacks.py).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from jwtkeymap.demo.resolver import ResolverProcess  # noqa: E402
from jwtkeymap.demo.signing import SigningKey  # noqa: E402
from support.attacks import big_heads, memory_kib, slow_heads  # noqa: E402
from support.servers import EchoUpstream, serve  # noqa: E402
from support.tokens import b64url  # noqa: E402

ISSUER = "https://attack.idp.example"
BROKEN = "https://broken.idp.example"

Row = tuple[str, str, str, bool]


async def first_line(port: int, raw: bytes) -> bytes:
    """Send raw bytes; return the first line of the answer (b"" if the connection closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), 10)).rstrip()
    except (OSError, TimeoutError):
        return b""
    finally:
        writer.close()


async def memory_rows(proc: ResolverProcess) -> list[Row]:
    assert proc.proc is not None
    pid = proc.proc.pid
    rows: list[Row] = []
    for field_bytes in (127_000, 8_000):
        before = memory_kib(pid)["VmRSS"]
        out = await big_heads(proc.port, connections=22, fields=126, field_bytes=field_bytes)
        grown = (memory_kib(pid)["VmHWM"] - before) / 1024
        rows.append(
            (
                f"22 connections x 126 fields of {field_bytes:,} B, never finished",
                "peak RSS +64 MiB at most; all cut",
                f"+{grown:.0f} MiB peak; {out.closed}/22 cut in {out.seconds:.1f} s",
                grown < 64 and out.closed == 22,
            )
        )
    out = await big_heads(proc.port, connections=1, fields=118, field_bytes=127_000, finish=True)
    rows.append(
        (
            "a complete 15 MB request head",
            "refused (431 or cut), never 200",
            b", ".join(out.statuses).decode()
            or ("cut" if out.closed else "read whole, connection kept open"),
            out.closed == 1 and not any(b" 200 " in s for s in out.statuses),
        )
    )
    slow = await slow_heads(proc.port, connections=300, interval=5, within=30)
    rows.append(
        (
            "300 connections, one header line every 5 s",
            "all closed within the header timeout (10 s)",
            f"{slow.closed}/300 closed after {slow.seconds:.0f} s",
            slow.closed == 300 and slow.seconds < 20,
        )
    )
    return rows


async def protocol_rows(proc: ResolverProcess, key: SigningKey, echo: EchoUpstream) -> list[Row]:
    token = key.sign({"sub": "alice"})
    rows: list[Row] = []
    async with aiohttp.ClientSession() as http:
        seen = len(echo.requests)
        async with http.get(f"{proc.url}/check", headers={"Authorization": f"Bearer {token}"}) as r:
            shown = [h for h in r.headers if h.lower().startswith("x-jwtkeymap-")]
            rows.append(
                (
                    "GET /check with a valid token (proxy mode)",
                    "404, no identity header, not forwarded",
                    f"{r.status}, headers {shown or 'none'}, forwarded {len(echo.requests) - seen}",
                    r.status == 404 and not shown and len(echo.requests) == seen,
                )
            )
        async with http.get(f"{proc.url}/readyz") as r:
            body = await r.json()
            rows.append(
                (
                    "GET /readyz from loopback",
                    "details (loopback only; other peers get ready/not ready)",
                    f"{r.status}, keys {sorted(body)}",
                    "checks" in body,
                )
            )
        nested = f"{b64url({'alg': 'RS256'})}.{b64url(b'[' * 3000 + b']' * 3000)}.c2ln"
        async with http.get(
            f"{proc.url}/v1/models", headers={"Authorization": f"Bearer {nested}"}
        ) as r:
            rows.append(("token payload [x3000 ]x3000", "401", str(r.status), r.status == 401))
    line = await first_line(
        proc.port,
        f"GET http://elsewhere/x HTTP/1.1\r\nHost: elsewhere\r\nAuthorization: Bearer {token}"
        "\r\nConnection: close\r\n\r\n".encode(),
    )
    rows.append(("absolute-form target", "400", line.decode(), line.startswith(b"HTTP/1.1 400")))
    line = await first_line(
        proc.port,
        b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    rows.append(
        ("Expect: 100-continue without a token", "401 first", line.decode(), b" 401 " in line)
    )
    line = await first_line(
        proc.port,
        f"GET /v1/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Authorization: Bearer other\r\nConnection: close\r\n\r\n".encode(),
    )
    rows.append(("two Authorization headers", "400", line.decode(), b" 400 " in line))
    return rows


async def broken_jwks_rows(key: SigningKey) -> list[Row]:
    bad = web.Application()

    async def empty(request: web.Request) -> web.Response:
        return web.json_response({"keys": []})

    bad.router.add_get("/jwks.json", empty)
    async with serve(bad) as bad_url:
        proc = ResolverProcess(
            {
                "issuers": [
                    {"issuer": ISSUER, "public_keys": [key.public_pem], "audience": "litellm"},
                    {"issuer": BROKEN, "jwks_url": f"{bad_url}/jwks.json", "audience": "litellm"},
                ]
            }
        )
        try:
            await proc.start()
            await asyncio.sleep(1)
            statuses = []
            async with aiohttp.ClientSession() as http:
                for signer in (key, SigningKey(BROKEN)):
                    auth = {"Authorization": f"Bearer {signer.sign({'sub': 'a'})}"}
                    async with http.get(f"{proc.url}/check", headers=auth) as r:
                        statuses.append(r.status)
            alive = proc.alive()
        except RuntimeError:
            alive, statuses = False, []
        finally:
            proc.stop()
    return [
        (
            'one issuer serves {"keys": []}',
            "starts; other issuer 200, this one 503",
            f"alive {alive}, statuses {statuses}",
            alive and statuses == [200, 503],
        )
    ]


async def main() -> None:
    key = SigningKey(ISSUER)
    echo = EchoUpstream()
    async with serve(echo.app) as upstream:
        proc = ResolverProcess(
            {
                "issuers": [
                    {"issuer": ISSUER, "public_keys": [key.public_pem], "audience": "litellm"}
                ]
            },
            upstream=upstream,
        )
        await proc.start()
        try:
            steps: list[Callable[[], Awaitable[list[Row]]]] = [
                lambda: protocol_rows(proc, key, echo),
                lambda: memory_rows(proc),
            ]
            rows = [row for step in steps for row in await step()]
            rows.append(("resolver still alive", "yes", str(proc.alive()), proc.alive()))
        finally:
            proc.stop()
    rows += await broken_jwks_rows(key)
    print("| attack | expected | observed | |")
    print("|---|---|---|---|")
    for attack, expected, observed, ok in rows:
        print(f"| {attack} | {expected} | {observed} | {'ok' if ok else 'FOUND'} |")


if __name__ == "__main__":
    asyncio.run(main())
