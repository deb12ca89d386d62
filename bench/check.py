"""Resolver benchmark: /check under wrk, against a trivial aiohttp handler in the same run.

Run: `make bench` or `.venv/bin/python -P bench/check.py [--seconds N]`. Needs wrk (Debian).

Every server is its own process with the same event loop (uvloop when installed)
and no access log; wrk sends the same Authorization header to each, so the only
difference is the work behind the handler. On a machine with two or more cores
the server is pinned to CPU 0 and wrk to CPU 1, so the load generator is not the
bottleneck. Scenarios:

Each figure is the median of ``--rounds`` interleaved runs; each ratio is the median of
the per-round ratios (a scenario against the trivial handler measured moments apart), which
a noisy neighbour on a shared machine disturbs far less than a ratio of medians.

* trivial:       an aiohttp handler that returns 200 (the ceiling)
* cache hit:     one mapped token, every cache warm
* cache hit, a request id per request: the same, each request with an ``X-Request-Id`` of
                 its own (as Envoy's check requests carry), so no head repeats the last
                 one and each is parsed (resolver/heads.py)
* cache miss:    1,000 mapped tokens in rotation, mapping cache disabled (TTL 0):
                 one PostgreSQL round trip per request
* verify always: verified-token cache disabled: an RS256 verification per request
* cache hit, assertion: the cache hit with the signed identity assertion on (issue 12):
                 the 200 answer carries an Ed25519-signed x-jwtkeymap-assertion
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from jwtkeymap.demo.ports import free_port
from jwtkeymap.demo.postgres import throwaway_postgres
from jwtkeymap.demo.signing import SigningKey

ISS = "https://idp.bench"
TOKENS = 1000


def serve_trivial(port: int) -> None:
    """The ceiling: the cheapest aiohttp handler, served like the resolver."""
    from aiohttp import web

    async def ok(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_route("*", "/check/{tail:.*}", ok)
    loop = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop = uvloop.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop)


def pinned(argv: list[str], cpu: int) -> list[str]:
    """Prefix ``argv`` with taskset when there are enough cores to separate the processes."""
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu), *argv]
    return argv


@contextlib.contextmanager
def server(
    argv: list[str], port: int, env: dict[str, str] | None = None, *, cpu: int | None = 0
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server process (pinned to ``cpu`` unless None) until the block ends; wait for
    /check to answer."""
    proc = subprocess.Popen(
        argv if cpu is None else pinned(argv, cpu),
        env={**os.environ, **(env or {})},
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except urllib.error.HTTPError:
                break  # the trivial server has no /healthz: it is up
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("server did not start") from None
                time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    assert match, text
    return float(match.group(1)) * _UNITS[match.group(2)]


def proc_stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state, ppid, …)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """User + system CPU time a process has used so far (with ``reaped``, plus that of the
    children it has waited for)."""
    fields = proc_stat(pid)
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and every process below it (a resolver and the
    nginx it runs as its engine), so far."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            total += cpu_seconds(current)
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return total


def wrk(url: str, *, seconds: float, connections: int, script: Path, pid: int) -> dict[str, float]:
    """Run wrk; return req/s, p50 and p99 in µs, and the server's CPU µs per request."""
    before = cpu_seconds(pid)
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(pinned(argv, 1), capture_output=True, text=True, check=True).stdout
    rps, p50, p99 = (
        re.search(r"Requests/sec:\s+([\d.]+)", out),
        re.search(r"^\s+50%\s+(\S+)\s*$", out, re.M),
        re.search(r"^\s+99%\s+(\S+)\s*$", out, re.M),
    )
    if rps is None or p50 is None or p99 is None:
        raise RuntimeError(f"cannot read wrk's output for {url}:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} non-2xx responses\n{out}")
    count = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    cpu = (cpu_seconds(pid) - before) / count * 1e6
    return {
        "rps": float(rps.group(1)),
        "p50": _seconds(p50.group(1)) * 1e6,
        "p99": _seconds(p99.group(1)) * 1e6,
        "cpu": cpu,
    }


def lua_script(path: Path, tokens: list[str], *, request_ids: bool = False) -> Path:
    """A wrk script sending the tokens in rotation (with ``request_ids``, each request with
    an ``X-Request-Id`` of its own, as a proxy adds: no head repeats the last one)."""
    request_id = ', ["X-Request-Id"] = tostring(n)' if request_ids else ""
    lines = ["local tokens = {"]
    lines += [f'  "Bearer {t}",' for t in tokens]
    lines += [
        "}",
        "local i = 0",
        "local n = 0",
        "request = function()",
        "  i = i % #tokens + 1",
        "  n = n + 1",
        '  return wrk.format("GET", "/check/v1/chat/completions", '
        f'{{["Authorization"] = tokens[i]{request_id}}})',
        "end",
    ]
    path.write_text("\n".join(lines))
    return path


async def seed(url: str, key: SigningKey) -> list[str]:
    """Migrate, create one key, map TOKENS subjects to it; return their tokens."""
    import asyncpg

    from jwtkeymap.core.db import schema
    from jwtkeymap.core.db.keys import NewKey
    from jwtkeymap.core.db.store import Store

    conn = await asyncpg.connect(url)
    await schema.migrate(conn, channel="jwtkeymap_invalidate")
    await conn.close()
    store = await Store.open(url, min_size=1, max_size=1)
    _, k = await store.create_key(NewKey(team_id="bench-team", user_id="u"), actor="bench")
    async with store.connection("seed") as c:
        await c.executemany(
            'INSERT INTO "LiteLLM_JWTKeyMapping"(id, jwt_claim_name, jwt_claim_value, token) '
            "VALUES ($1, 'sub', $1, $2)",
            [(f"user-{i}", k.token_hash) for i in range(10_000)],
        )
    await store.close()
    return [key.sign(sub=f"user-{i}", ttl=7200) for i in range(TOKENS)]


def run(
    seconds: float, warmup: float, rounds: int
) -> list[tuple[str, dict[str, float], dict[str, float]]]:
    """Every scenario: (name, loaded c=64 figures, unloaded c=1 figures), medians of rounds.

    All servers run at once and the rounds interleave them (A B C D, A B C D, ...), so
    drift in the machine's background load hits every scenario alike.
    """
    key = SigningKey(ISS)
    work = Path(tempfile.mkdtemp(prefix="jwtkeymap-bench-"))
    with throwaway_postgres() as pg, contextlib.ExitStack() as stack:
        pg.psql("CREATE DATABASE bench")
        url = pg.url_for("bench")
        tokens = asyncio.run(seed(url, key))
        one = lua_script(work / "one.lua", tokens[:1])
        many = lua_script(work / "many.lua", tokens)
        varied = lua_script(work / "varied.lua", tokens[:1], request_ids=True)
        base: dict[str, Any] = {
            "database_url": url,
            "unregistered_client_behavior": "reject",
            "issuers": [{"issuer": ISS, "public_keys": [key.public_pem], "audience": "litellm"}],
            "log_level": "warning",
        }
        scenarios = [
            ("trivial aiohttp handler", None, one),
            ("cache hit", {}, one),
            ("cache hit, a request id per request", {}, varied),
            ("cache miss (PostgreSQL)", {"positive_ttl_seconds": 0}, many),
            ("verify every request (RS256)", {"token_cache_ttl_seconds": 0}, one),
            ("cache hit, assertion signed", {"assertion": {"enabled": True}}, one),
        ]
        targets = []
        for i, (name, overrides, script) in enumerate(scenarios):
            port = free_port()
            if overrides is None:
                argv = [sys.executable, "-P", __file__, "--serve-trivial", str(port)]
            else:
                config = work / f"config{i}.yaml"
                config.write_text(yaml.safe_dump({**base, **overrides}))
                jwtkeymap = str(Path(sys.executable).parent / "jwtkeymap")
                argv = [jwtkeymap, "--config", str(config), "resolver", "--listen",
                        f"127.0.0.1:{port}"]  # fmt: skip
            pid = stack.enter_context(server(argv, port)).pid
            target = f"http://127.0.0.1:{port}/check/v1/chat/completions"
            wrk(target, seconds=warmup, connections=64, script=script, pid=pid)
            targets.append((name, target, script, pid))
        loaded: dict[str, list[dict[str, float]]] = {t[0]: [] for t in targets}
        unloaded: dict[str, list[dict[str, float]]] = {t[0]: [] for t in targets}
        for r in range(rounds):
            for name, target, script, pid in targets:
                run = functools.partial(wrk, target, seconds=seconds, script=script, pid=pid)
                loaded[name].append(run(connections=64))
                unloaded[name].append(run(connections=1))
                print(f"  round {r + 1}: {name}: {loaded[name][-1]['rps']:,.0f} req/s",
                      file=sys.stderr)  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    ceiling = targets[0][0]
    return [
        (
            t[0],
            _median(loaded[t[0]], loaded[ceiling], higher_is_better=("rps",)),
            _median(unloaded[t[0]], unloaded[ceiling], higher_is_better=()),
        )
        for t in targets
    ]


def _median(
    runs: list[dict[str, float]], ceiling: list[dict[str, float]], higher_is_better: tuple[str, ...]
) -> dict[str, float]:
    """Medians of each figure, and of each figure's per-round ratio to the ceiling's
    (``x_<figure>``, oriented so that 1.0 is the ceiling and lower is worse)."""
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    for k in runs[0]:
        ratios = [
            (r[k] / c[k]) if k in higher_is_better else (c[k] / r[k])
            for r, c in zip(runs, ceiling, strict=True)
        ]
        out[f"x_{k}"] = statistics.median(ratios)
    return out


def table(results: list[tuple[str, dict[str, float], dict[str, float]]]) -> str:
    """A Markdown table with ratios to the trivial handler (medians of per-round ratios)."""
    rows = [
        "| scenario | c=64 req/s | x trivial | server CPU µs/req | x trivial (CPU) "
        "| c=64 p50 / p99 µs | c=1 p50 / p99 µs | c=1 p50 x trivial |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, loaded, unloaded in results:
        rows.append(
            f"| {name} | {loaded['rps']:,.0f} | {loaded['x_rps']:.2f} "
            f"| {loaded['cpu']:.1f} | {loaded['x_cpu']:.2f} "
            f"| {loaded['p50']:,.0f} / {loaded['p99']:,.0f} "
            f"| {unloaded['p50']:,.0f} / {unloaded['p99']:,.0f} "
            f"| {1 / unloaded['x_p50']:.2f} |"
        )
    return "\n".join(rows)


def main() -> None:
    """Parse arguments and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--serve-trivial", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_trivial:
        serve_trivial(args.serve_trivial)
        return
    if not shutil.which("wrk"):
        sys.exit("wrk not found: run `make deps` (Debian package wrk)")
    results = run(args.seconds, args.warmup, args.rounds)
    print(table(results))
    named = {name: (loaded, unloaded) for name, loaded, unloaded in results}
    hit, varied = named["cache hit"], named["cache hit, a request id per request"]
    miss, signed = named["cache miss (PostgreSQL)"], named["cache hit, assertion signed"]
    print(
        f"\ncache hit: {hit[0]['x_rps']:.2f}x the trivial handler's throughput (target >= 0.9; "
        f"each head parsed {varied[0]['x_rps']:.2f}x; "
        f"with assertions on {signed[0]['x_rps']:.2f}x, target >= 0.9; "
        f"by server CPU per request {hit[0]['x_cpu']:.2f}x), unloaded p50 "
        f"{1 / hit[1]['x_p50']:.2f}x its round trip (target <= 1.3); "
        f"cache miss: unloaded p50 {miss[1]['p50'] / 1000:.3f} ms (target <= 0.4)"
    )


if __name__ == "__main__":
    main()
