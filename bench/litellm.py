"""The last hop's cost: client → resolver → LiteLLM against client → LiteLLM, in one run.

Run: `.venv/bin/python -P bench/litellm.py [--seconds N] [--rounds N]` (after `make
litellm`). Needs wrk (Debian).

One real LiteLLM proxy (the pinned `litellm[proxy]` that the tests run, mock model, one
worker, jwtkeymap's hook configured) on a throwaway PostgreSQL, and one resolver process in
reverse-proxy mode in front of it with assertions on. wrk posts the same chat completion
at the same concurrency:

* direct:   to LiteLLM with the virtual key as `Authorization: Bearer sk-…`
* resolver: to the resolver with a JWT mapped to that key; the resolver verifies the JWT,
            maps it, signs an assertion and forwards; LiteLLM's hook verifies the
            assertion and serves the request as that key (the same key checks, the same
            spend writes).
* hook:     to LiteLLM directly with the JWT and an assertion the benchmark signed with the
            resolver's key (re-signed every round): LiteLLM's side of the last hop without
            the resolver's, so the added latency splits into the hook's and the resolver's.

At c=1 two more paths are interleaved with those three, a control for the resolver's hop:

* trivial:           an aiohttp handler answering LiteLLM's completion (its body and
                     headers, no work behind them), straight
* resolver-trivial:  the same handler through a second resolver process, configured as
                     the first

so the hop's cost in front of LiteLLM can be told from its cost on this machine at the
same moment: the requests are as far apart (LiteLLM's ~30 ms) and the CPUs as busy.

``--front envoy`` and ``--front nginx`` add the other data path the resolver serves: a
front proxy in front of LiteLLM (the repository's ``examples/envoy`` or ``examples/nginx``,
ports rewritten, one worker) that asks a resolver in check mode (its own process, the same
signing key) for each request and passes the assertion of the answer upstream:

* envoy, nginx:      client → front proxy → (check → resolver) → LiteLLM

``--engine nginx`` adds the resolver in reverse-proxy mode with nginx as its engine
(``proxy_engine: nginx``: the resolver runs nginx, which asks its check over a Unix
socket), in front of LiteLLM and, at c=1, in front of the trivial upstream too:

* resolver-nginx:        client → resolver's nginx → (check) → LiteLLM
* resolver-nginx-trivial: the same in front of the trivial handler (its control pair)

Its CPU per request is the resolver's and its nginx's together.

No server process is pinned to a CPU: LiteLLM's main thread keeps one vCPU busy at c=1,
and a resolver pinned beside it waits for it (bench/README.md).

Throughput: wrk at ``--connections`` in rounds that interleave the paths (in a new order
each round); the ratio is the median of per-round ratios, and the CPU each process spent
per request is read from /proc. Latency: one client at a time (c=1), the paths interleaved
request by request in a shuffled order for ``--pairs`` rounds, so LiteLLM's own drift (its
p50 moves by several ms from one second to the next) falls on every path alike; the added
p50 is the difference of the paths' medians, given with a 95% bootstrap interval (rounds
resampled whole): LiteLLM's own spread from one request to the next makes that interval
wide, the control pair's narrow. At c=8 on two cores LiteLLM is saturated, and
any added latency there is the throughput cost times the queue (Little's law), so the p50
target is read at c=1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg
import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519

from jwtkeymap.core.assertion import (
    HEADER,
    MAX_TTL_SECONDS,
    AssertionSigner,
    jwks,
    read_signing_keys,
)
from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.core.db.store import Store
from jwtkeymap.core.keys import KeyIdentity
from jwtkeymap.demo.ports import free_port
from jwtkeymap.demo.postgres import throwaway_postgres
from jwtkeymap.demo.signing import SigningKey

REPO = Path(__file__).resolve().parents[1]
# A LiteLLM chat completion as the mock model answers it, with the headers LiteLLM sends.
COMPLETION = json.dumps(
    {
        "id": "chatcmpl-6bdac4e9-18cf-4bf5-89b5-d273bfd1e870",
        "created": 1796025365,
        "model": "fake",
        "object": "chat.completion",
        "choices": [
            {
                "finish_reason": "stop",
                "index": 0,
                "message": {"content": "hello from fake", "role": "assistant"},
            }
        ],
        "usage": {"completion_tokens": 20, "prompt_tokens": 10, "total_tokens": 30},
    }
).encode()
COMPLETION_HEADERS = {"Content-Type": "application/json"} | {
    f"x-litellm-header-{i}": "0.0" * 10 for i in range(19)
}
ISS = "https://idp.litellm.bench"
CHANNEL = "jwtkeymap_invalidate"
BODY = {"model": "fake", "messages": [{"role": "user", "content": "hello"}]}


# The test helpers (tests/support) and the LiteLLM tier's harness, which uses them.
sys.path.insert(0, str(REPO / "tests"))
from support.assertion_keys import write_signing_keys  # noqa: E402
from support.modules import load_by_path  # noqa: E402
from support.servers import FRONT_PROXIES  # noqa: E402

check = load_by_path(REPO / "bench" / "check.py", "bench_check")
LITELLM_TIER = REPO / "tests" / "integration" / "litellm"
harness = load_by_path(LITELLM_TIER / "litellm_harness.py", "litellm_harness")


def serve_completion(port: int) -> None:
    """The control upstream: LiteLLM's completion and headers, written as uvicorn writes
    them (the headers, then the body), with nothing behind them."""
    from aiohttp import web

    async def complete(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers=COMPLETION_HEADERS)
        response.content_length = len(COMPLETION)
        await response.prepare(request)
        await response.write(COMPLETION)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", complete)
    loop = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop = uvloop.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop)


def post_script(path: Path, authorization: str, headers: dict[str, str]) -> Path:
    """A wrk script posting one chat completion with ``authorization`` and ``headers``."""
    body = json.dumps(BODY).replace('"', '\\"')
    lines = [
        'wrk.method = "POST"',
        f'wrk.body = "{body}"',
        'wrk.headers["Content-Type"] = "application/json"',
        f'wrk.headers["Authorization"] = "{authorization}"',
    ]
    lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def signing_files(work: Path) -> tuple[Path, Path]:
    """An Ed25519 assertion key (PEM) and its JWKS, as the resolver and the hook read them."""
    key_file, jwks_file = work / "assertion.pem", work / "jwks.json"
    keys = write_signing_keys(key_file, ed25519.Ed25519PrivateKey.generate())
    jwks_file.write_text(json.dumps(jwks(keys)))
    return key_file, jwks_file


async def seed(url: str) -> tuple[str, KeyIdentity]:
    """LiteLLM's schema and ours; one virtual key mapped from ``sub=bench``; its plaintext."""
    conn = await asyncpg.connect(url)
    try:
        await harness.prepare_database(conn, CHANNEL)
    finally:
        await conn.close()
    store = await Store.open(url, min_size=1, max_size=2)
    try:
        plaintext, key = await store.create_key(NewKey(team_id=None), actor="bench")
        await store.add_mapping(MappingIdentity("", "sub", "bench"), key.token_hash, actor="bench")
    finally:
        await store.close()
    return plaintext, key


async def paired(
    targets: dict[str, tuple[str, dict[str, str]]], pairs: int
) -> dict[str, list[float]]:
    """Per-request latencies (µs) of every path, one request in flight, paths interleaved."""
    latencies: dict[str, list[float]] = {name: [] for name in targets}
    sessions = {
        name: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) for name in targets
    }
    order = list(targets)
    try:
        for _ in range(pairs):
            random.shuffle(order)
            for name in order:
                url, headers = targets[name]
                started = time.perf_counter()
                async with sessions[name].post(url, json=BODY, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{name}: {response.status} {await response.text()}")
                latencies[name].append((time.perf_counter() - started) * 1e6)
    finally:
        for session in sessions.values():
            await session.close()
    return latencies


def run(
    seconds: float, rounds: int, connections: int, pairs: int, fronts: list[str], engines: list[str]
) -> tuple[dict[str, list[dict[str, float]]], dict[str, list[float]]]:
    """The paths under wrk in interleaved rounds, then paired at c=1; the figures of each."""
    install = harness.find_install()
    idp = SigningKey(ISS)
    work = Path(tempfile.mkdtemp(prefix="jwtkeymap-bench-litellm-"))
    with throwaway_postgres() as pg, contextlib.ExitStack() as stack:
        pg.psql("CREATE DATABASE litellm")
        url = pg.url_for("litellm")
        plaintext, key = asyncio.run(seed(url))
        key_file, jwks_file = signing_files(work)
        proxy = harness.LiteLLMProxy(
            install,
            url,
            config=harness.proxy_config(hook=True),
            env={"JWTKEYMAP_HOOK_JWKS": str(jwks_file)},
        )
        proxy.start()
        stack.callback(proxy.stop)
        litellm_pid = proxy.proc.pid
        port = free_port()
        settings = {
            "database_url": url,
            "unregistered_client_behavior": "reject",
            "issuers": [{"issuer": ISS, "public_keys": [idp.public_pem]}],
            "assertion": {"signing_key_file": str(key_file)},
            "log_level": "warning",
        }
        config = work / "resolver.yaml"
        config.write_text(yaml.safe_dump(settings))
        jwtkeymap = str(Path(sys.executable).parent / "jwtkeymap")
        argv = [jwtkeymap, "--config", str(config), "resolver",
                "--listen", f"127.0.0.1:{port}", "--upstream", proxy.url]  # fmt: skip
        resolver_pid = stack.enter_context(check.server(argv, port, cpu=None)).pid
        trivial_port, control_port = free_port(), free_port()
        argv = [sys.executable, "-P", __file__, "--serve-completion", str(trivial_port)]
        stack.enter_context(check.server(argv, trivial_port, cpu=None))
        trivial = f"http://127.0.0.1:{trivial_port}"
        argv = [jwtkeymap, "--config", str(config), "resolver",
                "--listen", f"127.0.0.1:{control_port}", "--upstream", trivial]  # fmt: skip
        stack.enter_context(check.server(argv, control_port, cpu=None))
        token = idp.sign(sub="bench", ttl=7200)
        paths = {
            "direct": (f"{proxy.url}/chat/completions", f"Bearer {plaintext}"),
            "resolver": (f"http://127.0.0.1:{port}/chat/completions", f"Bearer {token}"),
            "hook": (f"{proxy.url}/chat/completions", f"Bearer {token}"),
        }
        # The resolver process each path goes through (its CPU per request is read).
        resolvers = {"resolver": resolver_pid}
        if fronts:
            check_port = free_port()
            argv = [jwtkeymap, "--config", str(config), "resolver",
                    "--listen", f"127.0.0.1:{check_port}"]  # fmt: skip
            check_pid = stack.enter_context(check.server(argv, check_port, cpu=None)).pid
            for name in fronts:
                front = FRONT_PROXIES[name](resolver_port=check_port, upstream_port=proxy.port)
                stack.callback(front.stop)
                asyncio.run(front.start())
                paths[name] = (f"{front.url}/chat/completions", f"Bearer {token}")
                resolvers[name] = check_pid
        controls = {
            "trivial": (f"{trivial}/chat/completions", f"Bearer {token}"),
            "resolver-trivial": (
                f"http://127.0.0.1:{control_port}/chat/completions",
                f"Bearer {token}",
            ),
        }
        for engine in engines:
            engine_config = work / f"resolver-{engine}.yaml"
            engine_config.write_text(yaml.safe_dump({**settings, "proxy_engine": engine}))
            for name, upstream, kind in (
                (f"resolver-{engine}", proxy.url, paths),
                (f"resolver-{engine}-trivial", trivial, controls),
            ):
                engine_port = free_port()
                argv = [jwtkeymap, "--config", str(engine_config), "resolver",
                        "--listen", f"127.0.0.1:{engine_port}", "--upstream", upstream]  # fmt: skip
                engine_pid = stack.enter_context(check.server(argv, engine_port, cpu=None)).pid
                kind[name] = (f"http://127.0.0.1:{engine_port}/chat/completions", f"Bearer {token}")
                if kind is paths:
                    resolvers[name] = engine_pid
        signer = AssertionSigner(read_signing_keys(key_file), ttl_seconds=MAX_TTL_SECONDS)
        identity = MappingIdentity(ISS, "sub", "bench")

        def scripts() -> dict[str, Path]:
            # A fresh assertion each round: one lives at most MAX_TTL_SECONDS.
            signer.replace_keys(signer.keys)
            asserted = {HEADER: signer.assertion("mapped", key, identity)}
            return {
                name: post_script(work / f"{name}.lua", auth, asserted if name == "hook" else {})
                for name, (_, auth) in paths.items()
            }

        figures: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
        warm = scripts()
        for name, (target, _) in paths.items():  # warm every path
            check.wrk(target, seconds=2, connections=connections, script=warm[name],
                      pid=litellm_pid)  # fmt: skip
        order = list(paths)
        for r in range(rounds):
            fresh = scripts()
            random.shuffle(order)  # LiteLLM drifts within a round too: no fixed order
            for name in order:
                target = paths[name][0]
                pid = resolvers.get(name)
                resolver_cpu = check.tree_cpu_seconds(pid) if pid else 0.0
                got = check.wrk(target, seconds=seconds, connections=connections,
                                script=fresh[name], pid=litellm_pid)  # fmt: skip
                served = got["rps"] * max(1, round(seconds))
                spent = check.tree_cpu_seconds(pid) - resolver_cpu if pid else 0.0
                got["resolver_cpu"] = spent / served * 1e6
                figures[name].append(got)
                print(f"  round {r + 1}: {name}: {got['rps']:,.0f} req/s, "
                      f"p50 {got['p50'] / 1000:.2f} ms", file=sys.stderr)  # fmt: skip
        latencies: dict[str, list[float]] = {name: [] for name in paths | controls}
        for start in range(0, pairs, 200):  # re-signed every 200 rounds, well within the TTL
            asserted = {HEADER: signer.assertion("mapped", key, identity)}
            targets = {
                name: (target, {"Authorization": auth, **(asserted if name == "hook" else {})})
                for name, (target, auth) in (paths | controls).items()
            }
            for name, got_latencies in asyncio.run(
                paired(targets, min(200, pairs - start))
            ).items():
                latencies[name] += got_latencies
    shutil.rmtree(work, ignore_errors=True)
    return figures, latencies


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def interval(
    latencies: dict[str, list[float]], name: str, over: str, *, resamples: int = 1000
) -> tuple[float, float]:
    """A 95% bootstrap interval of the added p50 of ``name`` over ``over``, in ms: the rounds
    are resampled whole, so each keeps its requests of both paths."""
    a, b = latencies[name], latencies[over]
    draw = random.Random(0).choices
    rounds = range(len(a))
    added = sorted(
        statistics.median(a[i] for i in picked) - statistics.median(b[i] for i in picked)
        for picked in (draw(rounds, k=len(a)) for _ in range(resamples))
    )
    return added[int(0.025 * resamples)] / 1000, added[int(0.975 * resamples) - 1] / 1000


def summary(
    figures: dict[str, list[dict[str, float]]],
    latencies: dict[str, list[float]],
    connections: int,
) -> str:
    """Two Markdown tables (throughput, paired latency) and the figures the targets are about."""
    direct = figures["direct"]

    def ratio_of(name: str) -> float:
        runs = zip(figures[name], direct, strict=True)
        return statistics.median(r["rps"] / d["rps"] for r, d in runs)

    rows = [
        f"| path (wrk, c={connections}) | req/s | LiteLLM CPU µs/req | resolver CPU µs/req |",
        "|---|---:|---:|---:|",
    ]
    for name, runs in figures.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("rps", "cpu", "resolver_cpu")}
        resolver_cpu = f"{med['resolver_cpu']:,.0f}" if med["resolver_cpu"] else "-"
        rows.append(f"| {name} | {med['rps']:,.1f} | {med['cpu']:,.0f} | {resolver_cpu} |")
    pairs = len(latencies["direct"])
    rows += [
        "",
        f"| path (c=1, {pairs} interleaved requests each) | p50 ms | p90 ms | p99 ms |",
        "|---|---:|---:|---:|",
    ]
    for name, values in latencies.items():
        cells = " | ".join(f"{quantile(values, q) / 1000:.2f}" for q in (0.5, 0.9, 0.99))
        rows.append(f"| {name} | {cells} |")

    def added(name: str, q: float, over: str = "direct") -> float:
        return (quantile(latencies[name], q) - quantile(latencies[over], q)) / 1000

    def paired(name: str, over: str) -> float:
        # The i-th request of every path was sent in the same shuffled round, a few ms
        # apart: the median of those differences leaves out LiteLLM's drift between rounds.
        pairs = zip(latencies[name], latencies[over], strict=True)
        return statistics.median(a - b for a, b in pairs) / 1000

    low, high = interval(latencies, "resolver", "direct")
    control_low, control_high = interval(latencies, "resolver-trivial", "trivial")

    def front(name: str) -> str:
        front_low, front_high = interval(latencies, name, "direct")
        return (
            f"\n{name} path (front proxy, resolver in check mode): {ratio_of(name):.2f}x the "
            f"direct throughput; at c=1 added p50 {added(name, 0.5):+.2f} ms (95% interval "
            f"{front_low:+.2f} to {front_high:+.2f}; per round {paired(name, 'direct'):+.2f} "
            f"ms), added p99 {added(name, 0.99):+.2f} ms"
        )

    def engine(name: str) -> str:
        engine_low, engine_high = interval(latencies, name, "direct")
        control_low, control_high = interval(latencies, f"{name}-trivial", "trivial")
        return (
            f"\n{name} path (reverse-proxy mode, nginx as the resolver's engine): "
            f"{ratio_of(name):.2f}x the direct throughput; at c=1 added p50 "
            f"{added(name, 0.5):+.2f} ms (95% interval {engine_low:+.2f} to {engine_high:+.2f}; "
            f"per round {paired(name, 'direct'):+.2f} ms), added p99 {added(name, 0.99):+.2f} "
            f"ms; in front of the trivial upstream {added(f'{name}-trivial', 0.5, 'trivial'):+.2f}"
            f" ms (95% interval {control_low:+.2f} to {control_high:+.2f})"
        )

    return "\n".join(rows) + (
        f"\n\nresolver path: {ratio_of('resolver'):.2f}x the direct throughput at c={connections} "
        f"(target >= 0.95); at c=1 added p50 {added('resolver', 0.5):+.2f} ms "
        f"(95% interval {low:+.2f} to {high:+.2f}; "
        f"target <= 0.5; median of the per-round differences "
        f"{paired('resolver', 'direct'):+.2f} ms), added p99 {added('resolver', 0.99):+.2f} ms; "
        f"of the p50, "
        f"LiteLLM's hook (hook path against direct) {added('hook', 0.5):+.2f} ms; the same "
        f"hop in front of the trivial upstream, interleaved: added p50 "
        f"{added('resolver-trivial', 0.5, 'trivial'):+.2f} ms (95% interval "
        f"{control_low:+.2f} to {control_high:+.2f}; per round "
        f"{paired('resolver-trivial', 'trivial'):+.2f} ms)"
        + "".join(front(name) for name in figures if name in FRONT_PROXIES)
        + "".join(engine(name) for name in figures if name.startswith("resolver-"))
    )


def main() -> None:
    """Parse arguments and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=600, help="c=1 requests per path")
    parser.add_argument(
        "--front",
        action="append",
        choices=sorted(FRONT_PROXIES),
        default=[],
        help="add the path through this front proxy and a resolver in check mode (repeatable)",
    )
    parser.add_argument(
        "--engine",
        action="append",
        choices=["nginx"],
        default=[],
        help="add the path through a resolver in reverse-proxy mode with this proxy_engine",
    )
    parser.add_argument("--serve-completion", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_completion:
        serve_completion(args.serve_completion)
        return
    if not shutil.which("wrk"):
        sys.exit("wrk not found: run `make deps` (Debian package wrk)")
    os.environ.pop("JWTKEYMAP_DATABASE_URL", None)
    figures, latencies = run(
        args.seconds, args.rounds, args.connections, args.pairs, args.front, args.engine
    )
    print(summary(figures, latencies, args.connections))


if __name__ == "__main__":
    main()
