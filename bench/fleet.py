"""Fleet benchmarks: the resolver against its ceiling, a flood of unmapped clients,
invalidation across resolver processes, CR → eviction through the control plane, memory.

Run: `make bench` or `.venv/bin/python -P bench/fleet.py [--only NAME ...]`. Figures,
not pass/fail: each section prints a Markdown table with the target it is held to.
Every resolver is a real `jwtkeymap resolver` process over a throwaway PostgreSQL.

* ceiling:      bench/check.py's wrk run (trivial aiohttp handler, cache hit, cache miss)
* flood:        1,000 distinct unmapped claims x 10 requests each (distinct tokens),
                concurrently; database lookups counted by the resolver and by PostgreSQL
* invalidation: a mapping flipped in the database; time until each of 4 resolver
                processes answers differently (pollers start before the change)
* controlplane: the same, the change being a JWTKeyMapping patched through the
                apiserver and reconciled by a `jwtkeymap operator` process
* memory:       resolver RSS before and after caching 100k mappings
* fleet:        --fleet-resolvers (100) lean resolver processes: a database flip until all
                answer differently, LISTENing each, then behind PgBouncer (transaction
                mode) on Redis with one relay; PostgreSQL connections; the relay killed
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import ssl
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from jwtkeymap.core.db import schema
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.core.db.store import Store
from jwtkeymap.demo.polling import wait_until
from jwtkeymap.demo.ports import free_port
from jwtkeymap.demo.postgres import ThrowawayPostgres, throwaway_postgres
from jwtkeymap.demo.resolver import ResolverProcess, check_token
from jwtkeymap.demo.signing import SigningKey

REPO = Path(__file__).resolve().parents[1]
# The tests' helpers (the package `support` in tests/), as pytest finds them; the only
# benchmark that needs more than the demo's pieces (jwtkeymap.demo).
sys.path.insert(0, str(REPO / "tests"))

from support.modules import load_by_path  # noqa: E402
from support.servers import (  # noqa: E402
    OperatorProcess,
    PgBouncer,
    RedisServer,
    resolver_metric,
    trusting_resolver,
    wait_ready,
)

ISS = "https://idp.fleet.bench"
CHANNEL = "jwtkeymap_invalidate"


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def rss_kib(pid: int) -> int:
    """Resident set size of a process, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def migrated(pg: ThrowawayPostgres) -> str:
    """Migrate the server's ``postgres`` database; return its URL."""
    conn = await asyncpg.connect(pg.url)
    try:
        await schema.migrate(conn, channel=CHANNEL)
    finally:
        await conn.close()
    return pg.url


async def map_many(url: str, values: list[str]) -> str:
    """One key, and a mapping of claim ``sub`` = each value to it; return the key hash."""
    store = await Store.open(url, min_size=1, max_size=1)
    try:
        _, key = await store.create_key(NewKey(team_id="bench", user_id="u"), actor="bench")
    finally:
        await store.close()
    conn = await asyncpg.connect(url)
    try:
        await conn.copy_records_to_table(
            "LiteLLM_JWTKeyMapping",
            records=[(f"m-{v}", "sub", v, key.token_hash) for v in values],
            columns=["id", "jwt_claim_name", "jwt_claim_value", "token"],
        )
    finally:
        await conn.close()
    return key.token_hash


def resolver(key: SigningKey, url: str, **extra: Any) -> ResolverProcess:
    """A resolver process trusting ``key`` (its algorithm only), logging warnings only."""
    base = {"log_level": "warning", "issuers": [
        {"issuer": key.issuer, "public_keys": [key.public_pem], "audience": "litellm",
         "algorithms": [key.alg]}]}  # fmt: skip
    return trusting_resolver(key, url, **base, **extra)


async def run_all(coros: list[Awaitable[Any]], limit: int) -> list[Any]:
    """Await ``coros`` with at most ``limit`` in flight."""
    gate = asyncio.Semaphore(limit)

    async def one(c: Awaitable[Any]) -> Any:
        async with gate:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


# -- ceiling -------------------------------------------------------------------------------


def ceiling(args: argparse.Namespace) -> str:
    """bench/check.py's run, shortened: cache hit vs the trivial handler, cache-miss p50."""
    check = load_by_path(REPO / "bench" / "check.py", "bench_check")
    results = check.run(args.seconds, 2, args.rounds)
    by = {name: (loaded, unloaded) for name, loaded, unloaded in results}
    hit, miss = by["cache hit"], by["cache miss (PostgreSQL)"]
    ratio, cpu = hit[0]["x_rps"], hit[0]["x_cpu"]
    return "\n".join(
        [
            check.table(results),
            "",
            "| figure | measured | target |",
            "|---|---:|---|",
            f"| cache hit / trivial handler (req/s, c=64; by server CPU {cpu:.2f}x) "
            f"| {ratio:.2f}x | >= 0.9x {'met' if ratio >= 0.9 else 'missed'} |",
            f"| cache miss p50, unloaded (c=1) | {miss[1]['p50'] / 1000:.3f} ms | <= 0.4 ms "
            f"{'met' if miss[1]['p50'] <= 400 else 'missed'} |",
        ]
    )


# -- flood ---------------------------------------------------------------------------------


async def flood(args: argparse.Namespace) -> str:
    """1,000 unmapped claims x 10 distinct tokens, all at once: how many lookups?"""
    key = SigningKey(ISS, alg="ES256")
    claims, per_claim = 1000, 10
    with throwaway_postgres() as pg:
        url = await migrated(pg)
        proc = resolver(key, url, unregistered_client_behavior="reject", db_pool_max_size=4)
        tokens = [
            key.sign({"sub": f"stranger-{c}", "jti": str(r)})
            for c in range(claims)
            for r in range(per_claim)
        ]
        random.shuffle(tokens)
        conn = await asyncpg.connect(url)
        try:
            await proc.start()
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                await wait_ready(http, [proc])
                lookups = 'jwtkeymap_db_query_duration_seconds_count{operation="lookup"}'
                before = await resolver_metric(proc, http, lookups)
                started = time.perf_counter()
                answers = await run_all(
                    [check_token(http, proc.url, t) for t in tokens], args.concurrency
                )
                elapsed = time.perf_counter() - started
                counted = await resolver_metric(proc, http, lookups) - before
        finally:
            await conn.close()
            proc.stop()
    denied = sum(a.reason == "unregistered_client" for a in answers)
    return "\n".join(
        [
            "| figure | measured | target |",
            "|---|---:|---|",
            f"| requests (all 403 unregistered_client) | {len(answers):,} ({denied:,} 403) | |",
            f"| wall time, {args.concurrency} in flight | {elapsed:.1f} s "
            f"({len(answers) / elapsed:,.0f} req/s) | |",
            f"| mapping lookups (resolver's count) | {counted:,.0f} | <= {claims:,} "
            f"{'met' if counted <= claims else 'missed'} |",
        ]
    )


# -- invalidation --------------------------------------------------------------------------


class Poller:
    """A keep-alive connection sending one pre-encoded /check: a few µs of client work per
    request (an HTTP client library would cost more than the answer being timed)."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.request = (
            f"GET /check HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def status(self) -> int:
        """Send the check once; return the answer's status."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length:
            await self.reader.readexactly(length)
        return int(head[9:12])

    def close(self) -> None:
        """Close the connection."""
        if self.writer is not None:
            self.writer.close()


async def flip_latencies(
    http: aiohttp.ClientSession,
    procs: list[ResolverProcess],
    token: str,
    flip: Callable[[bool], Awaitable[None]],
    samples: int,
    starts: list[float],
) -> tuple[list[float], list[float]]:
    """Flip the mapping ``samples`` times; return per-resolver and all-resolver latencies (s).

    ``starts`` receives the time each change was issued. A latency is the time from
    issuing the change to the first answer that reflects it
    (so it includes the change's own round trip and the lookup that follows the eviction).
    """
    each: list[float] = []
    fleet: list[float] = []
    starts.clear()
    active = True
    polls = [Poller(p.port, token) for p in procs]
    for _ in range(samples):
        want = 403 if active else 200

        async def poll(poller: Poller, want: int = want) -> float:
            while await poller.status() != want:
                pass
            return time.perf_counter()

        t0 = time.perf_counter()
        starts.append(t0)
        await flip(not active)
        # Polled from when the change is acknowledged: polling all along would keep every
        # resolver busy and, on a small machine, time CPU contention instead.
        seen = await asyncio.wait_for(asyncio.gather(*(poll(p) for p in polls)), timeout=30)
        each.extend(t - t0 for t in seen)
        fleet.append(max(seen) - t0)
        active = not active
    for p in polls:
        p.close()
    return each, fleet


async def invalidation(args: argparse.Namespace) -> str:
    """A mapping flipped by SQL, seen by 4 resolver processes."""
    key = SigningKey(ISS, alg="ES256")
    with throwaway_postgres() as pg:
        url = await migrated(pg)
        await map_many(url, ["alice"])
        procs = [
            resolver(key, url, unregistered_client_behavior="reject") for _ in range(args.resolvers)
        ]
        conn = await asyncpg.connect(url)
        try:
            await asyncio.gather(*(p.start() for p in procs))
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                await wait_ready(http, procs)
                token = key.sign({"sub": "alice"}, ttl=7200)

                async def flip(active: bool) -> None:
                    await conn.execute(
                        'UPDATE "LiteLLM_JWTKeyMapping" SET is_active = $1 WHERE id = $2',
                        active,
                        "m-alice",
                    )

                # A plain LISTEN next to the resolvers: how much of it is PostgreSQL's part.
                heard: list[float] = []
                listener = await asyncpg.connect(url)
                await listener.add_listener(CHANNEL, lambda *_: heard.append(time.perf_counter()))
                starts: list[float] = []
                each, fleet = await flip_latencies(http, procs, token, flip, args.samples, starts)
                await listener.close()
        finally:
            await conn.close()
            for p in procs:
                p.stop()
    notify = [next(h for h in heard if h >= t0) - t0 for t0 in starts]
    return latency_table(each, fleet, len(procs), target_ms=5, notify=notify)


def latency_table(
    each: list[float],
    fleet: list[float],
    n: int,
    *,
    target_ms: float,
    notify: list[float] | None = None,
    floor: list[float] | None = None,
) -> str:
    """Per-resolver and whole-fleet latency quantiles as a Markdown table."""
    ms = [x * 1000 for x in each]
    all_ms = [x * 1000 for x in fleet]
    p99 = pct(all_ms, 0.99)
    extra = []
    if notify:
        nms = [x * 1000 for x in notify]
        extra.append(
            f"| NOTIFY at a plain LISTEN (PostgreSQL's part) | {statistics.median(nms):.2f} "
            f"| {pct(nms, 0.99):.2f} | {max(nms):.2f} | |"
        )
    if floor:
        fms = [x * 1000 for x in floor]
        extra.append(
            f"| all {n} answer once, nothing changed (the polling's own cost) "
            f"| {statistics.median(fms):.2f} | {pct(fms, 0.99):.2f} | {max(fms):.2f} | |"
        )
    return "\n".join(
        [
            f"| {len(fleet)} changes x {n} resolvers | p50 ms | p99 ms | max ms | target |",
            "|---|---:|---:|---:|---|",
            *extra,
            f"| each resolver | {statistics.median(ms):.2f} | {pct(ms, 0.99):.2f} "
            f"| {max(ms):.2f} | |",
            f"| all {n} resolvers (slowest of each change) | {statistics.median(all_ms):.2f} "
            f"| {p99:.2f} | {max(all_ms):.2f} | p99 <= {target_ms:g} ms "
            f"{'met' if p99 <= target_ms else 'missed'} |",
        ]
    )


# -- control plane -------------------------------------------------------------------------


async def controlplane(args: argparse.Namespace) -> str:
    """A JWTKeyMapping patched through the apiserver → evicted in 4 resolver processes."""
    sys.path.insert(0, str(REPO / "tests" / "controlplane"))
    from harness import ControlPlane

    key = SigningKey(ISS, alg="ES256")
    with throwaway_postgres() as pg, ControlPlane() as plane:
        url = await migrated(pg)
        plane.kubectl("apply", "-f", str(REPO / "crds" / "jwtkeymappings.jwtkeymap.io.yaml"),
                      check=True)  # fmt: skip
        plane.kubectl("wait", "--for=condition=Established",
                      "crd/jwtkeymappings.jwtkeymap.io", check=True)  # fmt: skip
        namespace = f"bench-{uuid.uuid4().hex[:6]}"
        plane.kubectl("create", "namespace", namespace, check=True)
        resume = load_by_path(REPO / "bench" / "operator_resume.py", "bench_operator_resume")
        resume.install_tenancy(plane, namespace, "sub")
        store = await Store.open(url, min_size=1, max_size=1)
        _, k = await store.create_key(NewKey(team_id="bench"), actor="bench")
        await store.close()
        operator = OperatorProcess(
            [namespace], {"database_url": url, "log_level": "warning"}, env=plane.client_env()
        )
        procs = [resolver(key, url, unregistered_client_behavior="reject") for _ in range(4)]
        api = f"{plane.server}/apis/jwtkeymap.io/v1alpha1/namespaces/{namespace}/jwtkeymappings"
        tls = ssl.create_default_context(cafile=str(plane.ca_file))
        auth = {"Authorization": f"Bearer {plane.token}"}
        try:
            operator.start()
            await asyncio.gather(*(p.start() for p in procs))
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                body = {"apiVersion": "jwtkeymap.io/v1alpha1", "kind": "JWTKeyMapping",
                        "metadata": {"name": "alice"},
                        "spec": {"issuer": "*", "claim": {"name": "sub", "value": "alice"},
                                 "key": {"hash": k.token_hash}}}  # fmt: skip
                async with http.post(api, json=body, headers=auth, ssl=tls) as resp:
                    assert resp.status == 201, await resp.text()
                await wait_ready(http, procs)
                token = key.sign({"sub": "alice"}, ttl=7200)

                async def mapped() -> bool:
                    return (await check_token(http, procs[0].url, token)).status == 200

                await wait_until(mapped, timeout=60, what="the CR reconciled")

                async def flip(active: bool) -> None:
                    async with http.patch(
                        f"{api}/alice",
                        data=json.dumps({"spec": {"active": active}}),
                        headers={**auth, "Content-Type": "application/merge-patch+json"},
                        ssl=tls,
                    ) as resp:
                        assert resp.status == 200, await resp.text()

                each, fleet = await flip_latencies(http, procs, token, flip, args.cr_samples, [])
        finally:
            operator.stop()
            for p in procs:
                p.stop()
    return latency_table(each, fleet, len(procs), target_ms=1000)


# -- memory --------------------------------------------------------------------------------


async def memory(args: argparse.Namespace) -> str:
    """RSS of one resolver before and after caching ``--entries`` mappings."""
    key = SigningKey(ISS, alg="ES256")
    n = args.entries
    values = [f"user-{i}" for i in range(n)]
    tokens = [key.sign({"sub": v}, ttl=7200) for v in values]
    rows = ["| caches | assertions | entries cached (mapping / token / answer) | RSS before "
            "| RSS after | delta | per cached mapping |",
            "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    with throwaway_postgres() as pg:
        url = await migrated(pg)
        await map_many(url, values)
        for label, extra in (
            ("default (100k)", {}),
            ("default (100k)", {"assertion": {"enabled": True}}),
            ("token cache 1,000 (mapping cache alone)", {"token_cache_max_entries": 1000}),
        ):
            # A memory figure, not a latency one: a lookup queued behind 64 others on a busy
            # machine must not turn into a 503 (the tests' resolvers give up after 1 s).
            proc = resolver(key, url, cache_max_entries=n, db_timeout_seconds=10, **extra)
            try:
                await proc.start()
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                    await wait_ready(http, [proc])
                    # Warm every code path first, so the delta is the caches.
                    for t in tokens[:200]:
                        await check_token(http, proc.url, t)
                    assert proc.proc is not None
                    before = rss_kib(proc.proc.pid)
                    answers = await run_all(
                        [check_token(http, proc.url, t) for t in tokens], args.concurrency
                    )
                    statuses = {a.status for a in answers}
                    assert statuses == {200}, f"{label}: answered {sorted(statuses)}"
                    after = rss_kib(proc.proc.pid)
                    entries = [
                        await resolver_metric(
                            proc, http, f'jwtkeymap_cache_entries{{cache="{name}"}}'
                        )
                        for name in ("mapping", "token", "answer")
                    ]
            finally:
                proc.stop()
            delta = after - before
            signed = "on" if "assertion" in extra else "off"
            cached = " / ".join(f"{e:,.0f}" for e in entries)
            rows.append(
                f"| {label} | {signed} | {cached} | {before / 1024:.0f} MiB "
                f"| {after / 1024:.0f} MiB | {delta / 1024:.0f} MiB "
                f"| {delta * 1024 / max(entries[0], 1):,.0f} B |"
            )
    return "\n".join(rows)


# -- fleet ---------------------------------------------------------------------------------

# What each fleet resolver holds: a pool of one (no lookup lane), opened on first use,
# small caches, the default liveness interval (5 s: a LISTEN ping or Redis ping, and the
# relay's heartbeat). Their invalidation path is the one under test, not their capacity.
LEAN = {
    "unregistered_client_behavior": "reject",
    "db_pool_min_size": 0,
    "db_pool_max_size": 1,
    "cache_max_entries": 1000,
    "token_cache_max_entries": 1000,
    "invalidation_liveness_seconds": 5,
}


async def start_fleet(procs: list[ResolverProcess], http: aiohttp.ClientSession) -> None:
    """Start resolver processes ten at a time (two cores: a whole fleet at once thrashes).

    A port picked free can be taken, by the time its process binds it, by another
    process's outgoing connection: such a resolver exits, and is started on another port.
    """
    for i in range(0, len(procs), 10):
        batch = procs[i : i + 10]
        await asyncio.gather(*(p.start(timeout=180) for p in batch))
        for _ in range(3):

            async def settled(batch: list[ResolverProcess] = batch) -> bool:
                for p in batch:
                    if p.alive() and (await p.readiness(http))["ready"] is not True:
                        return False
                return True

            with contextlib.suppress(aiohttp.ClientError):
                await wait_until(settled, timeout=180, what="a batch of resolvers settled")
            lost = [p for p in batch if not p.alive() and "already in use" in p.output()]
            for p in lost:
                p.port = free_port()
            await asyncio.gather(*(p.start(timeout=180) for p in lost))
    await wait_ready(http, procs, timeout=180)


async def connections(conn: asyncpg.Connection) -> dict[str, int]:
    """The server's client backends by application_name (this benchmark's own left out)."""
    rows = await conn.fetch(
        "SELECT application_name, count(*) AS n FROM pg_stat_activity "
        "WHERE backend_type = 'client backend' AND application_name <> 'bench' "
        "GROUP BY 1 ORDER BY 1"
    )
    return {r["application_name"] or "(none)": r["n"] for r in rows}


async def observation_floor(procs: list[ResolverProcess], token: str, rounds: int) -> list[float]:
    """Time for every resolver to answer one check when nothing changed: the polling's own
    cost, which every latency below includes (on 2 cores, N answers are served in turn)."""
    polls = [Poller(p.port, token) for p in procs]
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        await asyncio.gather(*(p.status() for p in polls))
        out.append(time.perf_counter() - t0)
    for p in polls:
        p.close()
    return out


async def fleet(args: argparse.Namespace) -> str:
    """N resolver processes on one PostgreSQL, each LISTENing; then the same N behind
    PgBouncer (transaction mode) on the Redis channel fed by one relay; then the relay dies."""
    key = SigningKey(ISS, alg="ES256")
    n = args.fleet_resolvers
    token = key.sign({"sub": "alice"}, ttl=7200)
    out: list[str] = []
    with throwaway_postgres(max_connections=2 * n + 50) as pg:
        url = await migrated(pg)
        await map_many(url, ["alice"])
        conn = await asyncpg.connect(url, server_settings={"application_name": "bench"})

        async def flip(active: bool) -> None:
            await conn.execute(
                'UPDATE "LiteLLM_JWTKeyMapping" SET is_active = $1 WHERE id = $2',
                active,
                "m-alice",
            )

        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                # 1. Every resolver LISTENs on PostgreSQL itself.
                procs = [resolver(key, url, **LEAN) for _ in range(n)]
                try:
                    await start_fleet(procs, http)
                    answers = await asyncio.gather(
                        *(check_token(http, p.url, token) for p in procs)
                    )
                    assert all(a.status == 200 for a in answers)
                    rss = [rss_kib(p.proc.pid) for p in procs if p.proc is not None]
                    floor = await observation_floor(procs, token, 20)
                    # A plain LISTEN next to the fleet: PostgreSQL's part of the fan-out.
                    heard: list[float] = []
                    listener = await asyncpg.connect(
                        url, server_settings={"application_name": "bench"}
                    )
                    await listener.add_listener(
                        CHANNEL, lambda *_: heard.append(time.perf_counter())
                    )
                    starts: list[float] = []
                    each, whole = await flip_latencies(
                        http, procs, token, flip, args.fleet_samples, starts
                    )
                    await listener.close()
                    notify = [next(h for h in heard if h >= t0) - t0 for t0 in starts]
                    direct = await connections(conn)
                    await flip(False)
                    ev_each, ev_whole = await eviction_latencies(
                        http, procs, flip, args.fleet_samples
                    )
                finally:
                    for p in procs:
                        p.stop()
                out += [
                    f"{n} resolver processes, each LISTENing on PostgreSQL "
                    f"(RSS median {statistics.median(rss) / 1024:.0f} MiB, "
                    f"total {sum(rss) / 1024 / 1024:.1f} GiB):",
                    "",
                    "Database change → message applied (evicted) in every resolver:",
                    "",
                    latency_table(ev_each, ev_whole, n, target_ms=50),
                    "",
                    "Database change → every resolver answers differently (the "
                    "`--only invalidation` method: includes the lookup after the eviction, "
                    f"and {n} answers served on 2 cores):",
                    "",
                    latency_table(each, whole, n, target_ms=50, notify=notify, floor=floor),
                    "",
                    "PostgreSQL connections (pg_stat_activity, client backends): "
                    + ", ".join(f"`{k}` {v}" for k, v in direct.items())
                    + f"; {sum(direct.values())} in all, "
                    f"{sum(direct.values()) / n:.2f} per resolver",
                    "",
                ]
                await flip(True)

                # 2. Behind PgBouncer: Redis alone, fed by one relay that LISTENs directly.
                async with PgBouncer(pg.port, pool_size=args.pool) as bouncer, RedisServer() as rd:
                    relay = resolver(key, url, redis_url=rd.url, invalidation_relay=True, **LEAN)
                    pooled = bouncer.url_for("postgres")
                    behind = {**LEAN, "db_statement_cache_size": 0, "invalidation_listen": False,
                              "redis_url": rd.url}  # fmt: skip
                    procs = [resolver(key, pooled, **behind) for _ in range(n)]
                    try:
                        await relay.start()
                        await wait_ready(http, [relay])
                        await start_fleet(procs, http)
                        answers = await asyncio.gather(
                            *(check_token(http, p.url, token) for p in procs)
                        )
                        assert all(a.status == 200 for a in answers)
                        floor = await observation_floor(procs, token, 20)
                        async with redis_listener(rd.url) as heard:
                            each, whole = await flip_latencies(
                                http, procs, token, flip, args.fleet_samples, starts
                            )
                        relayed = [next(h for h in heard if h >= t0) - t0 for t0 in starts]
                        server = await connections(conn)
                        await flip(False)
                        ev_each, ev_whole = await eviction_latencies(
                            http, procs, flip, args.fleet_samples
                        )
                        pools = [p for p in bouncer.show("POOLS") if p["database"] == "postgres"]
                        clients = sum(int(p["cl_active"]) + int(p["cl_waiting"]) for p in pools)
                        servers = sum(
                            int(p[c]) for p in pools for c in ("sv_active", "sv_idle", "sv_used")
                        )
                        # 3. The relay dies (Redis stays up); then a mapping is revoked.
                        # Every resolver must have applied the activation before caching
                        # the allow: a late message would evict it, and the next check would
                        # read the revocation from the database, not wait for the timeout.
                        counts = await asyncio.gather(*(applied(http, p) for p in procs))
                        await flip(True)
                        for p, (count, _) in zip(procs, counts, strict=True):

                            async def landed(p: ResolverProcess = p, count: float = count) -> bool:
                                return (await applied(http, p))[0] > count

                            await wait_until(landed, timeout=30, what="the activation applied")
                        warm = await asyncio.gather(
                            *(check_token(http, p.url, token) for p in procs)
                        )
                        assert all(a.status == 200 for a in warm)
                        relay.kill()
                        killed = time.perf_counter()
                        await flip(False)
                        stale = await refused_after(procs, token, killed)
                        reasons = await asyncio.gather(
                            *(check_token(http, p.url, token) for p in procs)
                        )
                        assert {a.reason for a in reasons} == {"database_unavailable"}
                    finally:
                        relay.stop()
                        for p in procs:
                            p.stop()
                out += [
                    f"The same {n} behind PgBouncer {bouncer_version()} (transaction mode, "
                    f"default_pool_size {args.pool}), `invalidation_listen: false`, "
                    "`db_statement_cache_size: 0`, Redis channel fed by one relay process.",
                    "",
                    "Database change → message applied (evicted) in every resolver:",
                    "",
                    latency_table(ev_each, ev_whole, n, target_ms=50),
                    "",
                    "Database change → every resolver answers differently:",
                    "",
                    latency_table(
                        each, whole, n, target_ms=50, notify=relayed, floor=floor
                    ).replace(
                        "NOTIFY at a plain LISTEN (PostgreSQL's part)",
                        "message at a plain Redis subscriber (PostgreSQL + relay)",
                    ),
                    "",
                    "PostgreSQL connections (pg_stat_activity, client backends): "
                    + ", ".join(f"`{k}` {v}" for k, v in server.items())
                    + f"; {sum(server.values())} in all (the relay's two included). PgBouncer: "
                    f"{clients} client connections, {servers} server connections.",
                    "",
                    f"Relay killed (SIGKILL), then the mapping revoked: all {n} resolvers refused "
                    f"the revoked mapping (503 `database_unavailable`, suspended) "
                    f"{min(stale):.2f} s (first) / {statistics.median(stale):.2f} s (median) / "
                    f"{max(stale):.2f} s (last) "
                    "after the kill; bound: `invalidation_relay_timeout_seconds` (15 s) after "
                    "the last heartbeat (one every `invalidation_liveness_seconds`, 5 s), "
                    "plus one poll.",
                ]
        finally:
            await conn.close()
    return "\n".join(out)


APPLIED = "jwtkeymap_invalidation_last_applied_timestamp_seconds"
RECEIVED = "jwtkeymap_invalidations_received_total"


async def applied(http: aiohttp.ClientSession, proc: ResolverProcess) -> tuple[float, float]:
    """(messages received, Unix time the last was applied), from one /metrics scrape."""
    async with http.get(f"{proc.url}/metrics") as resp:
        text = await resp.text()
    count, at = 0.0, 0.0
    for line in text.splitlines():
        if line.startswith(RECEIVED):
            count += float(line.rsplit(" ", 1)[1])
        elif line.startswith(APPLIED):
            at = float(line.rsplit(" ", 1)[1])
    return count, at


async def eviction_latencies(
    http: aiohttp.ClientSession,
    procs: list[ResolverProcess],
    flip: Callable[[bool], Awaitable[None]],
    samples: int,
) -> tuple[list[float], list[float]]:
    """Flip the mapping ``samples`` times; per change, the time from issuing it to each
    resolver having applied its message (the resolver's own timestamp, read afterwards
    from /metrics, so observing costs the fleet nothing while the message travels).
    The mapping must be inactive when called (the first change activates it)."""
    each: list[float] = []
    fleet: list[float] = []
    await asyncio.sleep(0.5)  # a change made just before has landed everywhere
    before = [c for c, _ in await asyncio.gather(*(applied(http, p) for p in procs))]
    for i in range(samples):
        t0 = time.time()
        await flip(i % 2 == 0)
        await asyncio.sleep(0.25)  # let the message land before scraping 100 processes
        seen: list[float] = []
        for j, p in enumerate(procs):

            async def landed(p: ResolverProcess = p, j: int = j) -> tuple[float, float] | None:
                count, at = await applied(http, p)
                return (count, at) if count > before[j] else None

            count, at = await wait_until(landed, timeout=30, what="the message applied")
            before[j] = count
            seen.append(at - t0)
        each.extend(seen)
        fleet.append(max(seen))
    return each, fleet


@contextlib.asynccontextmanager
async def redis_listener(url: str) -> AsyncIterator[list[float]]:
    """A plain subscriber to the invalidation channel: the times its messages arrive."""
    import redis.asyncio as aioredis

    heard: list[float] = []
    client = aioredis.Redis.from_url(url)
    pubsub = client.pubsub()
    await pubsub.subscribe(CHANNEL)

    async def receive() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                heard.append(time.perf_counter())

    task = asyncio.create_task(receive())
    try:
        yield heard
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pubsub.aclose()
        await client.aclose()


async def refused_after(procs: list[ResolverProcess], token: str, since: float) -> list[float]:
    """Seconds from ``since`` until each resolver stops allowing ``token`` (polled every 0.1 s)."""
    polls = [Poller(p.port, token) for p in procs]

    async def refused(poller: Poller) -> float:
        async def now_refused() -> bool:
            return await poller.status() != 200

        await wait_until(now_refused, timeout=60, interval=0.1, what="a refusal")
        return time.perf_counter() - since

    try:
        return list(await asyncio.gather(*(refused(p) for p in polls)))
    finally:
        for p in polls:
            p.close()


def bouncer_version() -> str:
    """The installed PgBouncer's version number."""
    import shutil
    import subprocess

    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    first = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return first.split()[1] if first else "?"


SECTIONS: dict[str, Callable[[argparse.Namespace], Any]] = {
    "ceiling": ceiling,
    "flood": flood,
    "invalidation": invalidation,
    "controlplane": controlplane,
    "memory": memory,
    "fleet": fleet,
}


def main() -> None:
    """Run the chosen sections and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--seconds", type=float, default=2, help="per wrk run (ceiling)")
    parser.add_argument("--rounds", type=int, default=12, help="wrk rounds (ceiling)")
    parser.add_argument("--samples", type=int, default=200, help="database flips")
    parser.add_argument("--cr-samples", type=int, default=50, help="CR flips")
    parser.add_argument("--entries", type=int, default=100_000, help="memory: cached mappings")
    parser.add_argument("--resolvers", type=int, default=4, help="invalidation: processes")
    parser.add_argument("--fleet-resolvers", type=int, default=100, help="fleet: processes")
    parser.add_argument("--fleet-samples", type=int, default=100, help="fleet: database flips")
    parser.add_argument("--pool", type=int, default=10, help="fleet: PgBouncer pool size")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    args = parser.parse_args()
    for name in args.only:
        print(f"\n### {name}\n", flush=True)
        section = SECTIONS[name]
        out = section(args)
        if asyncio.iscoroutine(out):
            out = asyncio.run(out)
        print(out, flush=True)


if __name__ == "__main__":
    main()
