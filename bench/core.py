"""Core benchmark: resolve() on a cache hit and a miss (real PostgreSQL), and token verification.

Run: `make bench` or `.venv/bin/python bench/core.py [--seconds N]`. Prints one table;
figures are machine-dependent, so compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db import schema
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.core.db.store import Store
from jwtkeymap.core.policy import PolicyEngine, Verdict
from jwtkeymap.core.settings import load_settings
from jwtkeymap.core.tokens import TokenVerifier
from jwtkeymap.demo.postgres import throwaway_postgres
from jwtkeymap.demo.signing import SigningKey

ISS = "https://idp.bench"


async def measure(op: Callable[[], Awaitable[Any]], seconds: float) -> tuple[float, float, float]:
    """Run ``op`` sequentially for ``seconds``; return (ops/s, p50 µs, p99 µs)."""
    for _ in range(200):
        await op()
    samples: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        await op()
        samples.append(time.perf_counter() - t0)
    total = sum(samples)
    q = statistics.quantiles(samples, n=100)
    return len(samples) / total, q[49] * 1e6, q[98] * 1e6


async def concurrent(op: Callable[[int], Awaitable[Any]], seconds: float, workers: int) -> float:
    """Throughput of ``workers`` concurrent loops of ``op(worker)``."""
    done = 0
    end = time.perf_counter() + seconds

    async def loop(worker: int) -> None:
        nonlocal done
        while time.perf_counter() < end:
            await op(worker)
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(loop(w) for w in range(workers)))
    return done / (time.perf_counter() - t0)


async def main(url: str, seconds: float) -> list[tuple[str, float, float, float]]:
    conn = await asyncpg.connect(url)
    await schema.migrate(conn, channel="jwtkeymap_invalidate")
    await conn.close()
    key = SigningKey(ISS)
    base = {"issuers": [{"issuer": ISS, "public_keys": [key.public_pem], "audience": "litellm"}]}
    store = await Store.open(url, min_size=2, max_size=2)
    _, k = await store.create_key(NewKey(team_id="t"), actor="bench")
    # 10k mappings so the index is realistic.
    async with store.connection("seed") as c:
        await c.executemany(
            'INSERT INTO "LiteLLM_JWTKeyMapping"(id, jwt_claim_name, jwt_claim_value, token) '
            "VALUES ($1, 'sub', $1, $2)",
            [(f"user-{i}", k.token_hash) for i in range(10_000)],
        )
    claims = {"sub": "user-42"}
    hit = PolicyEngine(load_settings(None, **base), store=store)
    miss = PolicyEngine(load_settings(None, positive_ttl_seconds=0, **base), store=store)
    assert (await hit.resolve(claims, ISS)).outcome is Verdict.MAPPED
    assert (await miss.resolve(claims, ISS)).outcome is Verdict.MAPPED

    token = key.sign({"sub": "user-42"})
    verifier = TokenVerifier(load_settings(None, **base))
    nocache = TokenVerifier(load_settings(None, token_cache_ttl_seconds=0, **base))
    await verifier.verify(token)

    rows = []
    rows.append(("resolve, cache hit", *(await measure(lambda: hit.resolve(claims, ISS), seconds))))
    rows.append(
        (
            "resolve, cache miss (PostgreSQL)",
            *(await measure(lambda: miss.resolve(claims, ISS), seconds)),
        )
    )
    # Distinct subjects per worker: identical concurrent misses would share one query.
    c16 = await concurrent(lambda w: miss.resolve({"sub": f"user-{w}"}, ISS), seconds, 16)
    rows.append(("resolve, cache miss, 16 concurrent clients", c16, float("nan"), float("nan")))
    rows.append(
        (
            "store.lookup (raw query)",
            *(await measure(lambda: store.lookup(MappingIdentity(ISS, "sub", "user-42")), seconds)),
        )
    )
    rows.append(
        ("verify RS256 (no token cache)", *(await measure(lambda: nocache.verify(token), seconds)))
    )
    rows.append(
        (
            "verify, verified-token cache hit",
            *(await measure(lambda: verifier.verify(token), seconds)),
        )
    )
    await store.close()
    return rows


def report(rows: list[tuple[str, float, float, float]]) -> str:
    by = {r[0]: r[1] for r in rows}
    lines = ["| operation | ops/s | p50 µs | p99 µs |", "|---|---:|---:|---:|"]
    for name, ops, p50, p99 in rows:
        fmt = lambda v: "-" if v != v else f"{v:,.1f}"  # noqa: E731
        lines.append(f"| {name} | {ops:,.0f} | {fmt(p50)} | {fmt(p99)} |")
    lines.append("")
    hit_miss = by["resolve, cache hit"] / by["resolve, cache miss (PostgreSQL)"]
    tok = by["verify, verified-token cache hit"] / by["verify RS256 (no token cache)"]
    lines.append(
        f"cache hit / cache miss: {hit_miss:.0f}x; token cache hit / RS256 verify: {tok:.0f}x"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each measurement")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"
    with throwaway_postgres() as pg:
        result = asyncio.run(main(pg.url, args.seconds))
    print(f"# core benchmark ({loop_name}, PostgreSQL over 127.0.0.1, 10k mappings)\n")
    print(report(result))
