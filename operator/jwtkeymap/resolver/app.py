"""The resolver's aiohttp application: the service it wraps, its handlers, and ``run``.

``Service`` owns the long-lived parts (store, token verifier, userinfo client,
policy engine, invalidation bus) and answers one question: what is the answer
to this ``Authorization`` header. The handlers only translate HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
from aiohttp import web

from jwtkeymap.core.bus import InvalidationBus
from jwtkeymap.core.cache import CacheStats, Entry
from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.clock import SYSTEM_CLOCK, Clock
from jwtkeymap.core.errors import (
    DatabaseUnavailable,
    IdentityProviderUnavailable,
    InvalidToken,
    JwtKeyMapError,
)
from jwtkeymap.core.policy import Decision, Outcome, Resolver
from jwtkeymap.core.settings import Settings
from jwtkeymap.core.store import NewKey, Store
from jwtkeymap.core.tokens import TokenVerifier, VerifiedToken
from jwtkeymap.core.userinfo import UserinfoClient
from jwtkeymap.resolver import check
from jwtkeymap.resolver.check import Answer
from jwtkeymap.resolver.memo import AnswerMemo
from jwtkeymap.resolver.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("jwtkeymap.resolver")

READY_TIMEOUT_SECONDS = 2.0
# How long a whole answer is reused for an identical Authorization header.
MEMO_TTL_SECONDS = 1.0


class TimedStore(Store):
    """The core store, timing the two queries of the hot path for metrics."""

    metrics: Metrics | None = None

    async def lookup(self, identity: MappingIdentity) -> Entry:
        """Time the mapping lookup."""
        start = time.perf_counter()
        try:
            return await super().lookup(identity)
        finally:
            if self.metrics is not None:
                self.metrics.observe_db("lookup")(time.perf_counter() - start)

    async def register(
        self, identity: MappingIdentity, spec: NewKey, *, description: str | None = None
    ) -> tuple[Entry, bool]:
        """Time the auto-registration transaction."""
        start = time.perf_counter()
        try:
            return await super().register(identity, spec, description=description)
        finally:
            if self.metrics is not None:
                self.metrics.observe_db("register")(time.perf_counter() - start)


class Service:
    """Everything one resolver process holds, and the check it performs."""

    def __init__(self, settings: Settings, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = Metrics()
        self.store: Store | None = None
        self.verifier: TokenVerifier | None = None
        self.userinfo: UserinfoClient | None = None
        self.resolver: Resolver | None = None
        self.bus: InvalidationBus | None = None
        self.session: aiohttp.ClientSession | None = None
        self.shutting_down = False
        self._tasks: list[asyncio.Task[None]] = []
        self._strip = settings.strip_authorization
        self.memo = AnswerMemo(settings.token_cache_max_entries, clock)
        self._debug = log.isEnabledFor(logging.DEBUG)

    async def start(self) -> None:
        """Open the database pool, load the JWKS, connect the invalidation bus."""
        s = self.settings
        self.session = aiohttp.ClientSession()
        if s.database_url:
            self.store = await _open_store(s)
            if isinstance(self.store, TimedStore):
                self.store.metrics = self.metrics
        self.verifier = TokenVerifier(s, session=self.session, clock=self.clock)
        for keyset in self.verifier.keysets.values():
            keyset.on_keys_removed = _chain(keyset.on_keys_removed, self.memo.clear)
        if s.oidc_userinfo_url:
            self.userinfo = UserinfoClient(s, session=self.session, clock=self.clock)
        self.resolver = Resolver(s, store=self.store, clock=self.clock)
        self.bus = InvalidationBus(s, self.resolver)
        await self.bus.start()
        await self.verifier.start()
        self._tasks.append(asyncio.create_task(self._keep_jwks(), name="jwks-keeper"))
        self.metrics.attach(self)
        # Serve from the start with a coherent cache when the channel comes up quickly;
        # otherwise readiness reports it and requests needing the database get 503.
        if self.bus.configured and not await self.bus.wait_connected(s.db_timeout_seconds):
            log.warning("invalidation channel not connected yet: not ready")

    async def stop(self) -> None:
        """Close everything, in reverse order."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.bus is not None:
            await self.bus.stop()
        if self.store is not None:
            await self.store.close()
        if self.session is not None:
            await self.session.close()

    async def _keep_jwks(self) -> None:
        """Retry key sets that failed to load; readiness would otherwise never recover."""
        interval = max(1.0, min(self.settings.jwks_min_refresh_seconds, 10.0))
        assert self.verifier is not None
        while True:
            await asyncio.sleep(interval)
            for keyset in self.verifier.keysets.values():
                if not keyset.loaded:
                    await keyset.refresh()

    # -- the check -------------------------------------------------------------------

    async def authorize(self, authorization: str | None, digest: bytes | None = None) -> Answer:
        """Answer one check for the request's ``Authorization`` header (no memo lookup).

        With ``digest`` (sha256 of the header) a reusable answer is remembered.
        """
        resolver = self.resolver
        assert resolver is not None
        try:
            token = check.bearer_token(authorization)
            verified = await self._verify(token)
        except InvalidToken as exc:
            return check.invalid_token(str(exc))
        except IdentityProviderUnavailable:
            return check.deny(
                503,
                "identity_provider_unavailable",
                "JWT Key Mapping: the identity provider is unavailable. Retry the request.",
            )
        generation = resolver.cache.generation
        decision = await resolver.resolve(verified.claims, verified.issuer)
        result = check.answer(decision, strip_authorization=self._strip)
        if digest is not None and not resolver.suspended and _memoizable(decision):
            self.memo.remember(digest, result, generation, self._memo_ttl(verified, decision))
        return result

    def _memo_ttl(self, verified: VerifiedToken, decision: Decision) -> float:
        """How long an answer may be reused: never past the token's or key's expiry,
        nor longer than the caches it was built from."""
        now = self.clock.now()
        s = self.settings
        ttl = min(
            MEMO_TTL_SECONDS, s.token_cache_ttl_seconds, verified.expires_at - now.timestamp()
        )
        if decision.outcome is not Outcome.ADMIN:
            ttl = min(ttl, s.positive_ttl_seconds if decision.key else s.negative_ttl_seconds)
        if decision.key is not None and decision.key.expires is not None:
            ttl = min(ttl, (decision.key.expires - now).total_seconds())
        return ttl

    async def _verify(self, token: str) -> VerifiedToken:
        assert self.verifier is not None
        if token.count(".") == 2 or self.userinfo is None:
            return await self.verifier.verify(token)
        return await self.userinfo.verify(token)

    def recall(self, digest: bytes | None) -> Answer | None:
        """The memo's answer for a header digest (counted like any check), or None.

        ``digest`` is ``header_digest(authorization)``, computed once per request.
        Synchronous on purpose: the hot path of a busy client costs a hash and a
        dictionary lookup, without a coroutine.
        """
        start = time.perf_counter()
        resolver = self.resolver
        if digest is None or resolver is None or resolver.suspended:
            return None
        result = self.memo.recall(digest, resolver.cache.generation)
        if result is not None:
            self._record(result, time.perf_counter() - start)
        return result

    async def answer(self, authorization: str | None) -> Answer:
        """The whole check: ``recall``, else ``decide``."""
        digest = header_digest(authorization)
        return self.recall(digest) or await self.decide(authorization, digest)

    async def decide(self, authorization: str | None, digest: bytes | None) -> Answer:
        """The check without the memo lookup: timed, counted, never raising."""
        start = time.perf_counter()
        try:
            result = await self.authorize(authorization, digest)
        except Exception:
            log.exception("check failed")
            result = check.deny(500, "internal_error", "JWT Key Mapping: internal error.")
        self._record(result, time.perf_counter() - start)
        return result

    def _record(self, result: Answer, seconds: float) -> None:
        self.metrics.count(result.decision, result.reason, seconds)
        if result.status >= 500:
            log.warning("check answered %s", result.status, extra={"reason": result.reason})
        elif self._debug:
            log.debug(
                "check decision",
                extra={"decision": result.decision, "status": result.status,
                       "reason": result.reason},
            )  # fmt: skip

    # -- readiness and metrics -------------------------------------------------------

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether to take traffic, and why: database, JWKS, invalidation channel."""
        checks: dict[str, Any] = {}
        ready = not self.shutting_down
        if self.shutting_down:
            checks["shutdown"] = "in progress"
        if self.store is not None:
            try:
                async with asyncio.timeout(READY_TIMEOUT_SECONDS):
                    await self.store.ping()
                    info = await self.store.schema_info()
                checks["database"] = {"ok": True, "schema": info.describe()}
            except (JwtKeyMapError, TimeoutError) as exc:
                ready = False
                checks["database"] = {"ok": False, "error": str(exc) or type(exc).__name__}
        if self.verifier is not None:
            jwks = {i: ks.loaded for i, ks in self.verifier.keysets.items()}
            checks["jwks"] = jwks
            ready = ready and all(jwks.values())
        if self.bus is not None and self.bus.configured:
            checks["invalidation"] = {"ok": self.bus.connected, **self.bus.status()}
            ready = ready and self.bus.connected
        return ready, checks

    def cache_stats(self) -> Iterator[tuple[str, CacheStats, int]]:
        """(name, stats, size) of every cache, for metrics."""
        if self.resolver is not None:
            yield "mapping", self.resolver.cache.stats, len(self.resolver.cache)
        if self.verifier is not None:
            yield "token", self.verifier.cache.stats, len(self.verifier.cache)
        if self.userinfo is not None:
            yield "userinfo", self.userinfo.cache.stats, len(self.userinfo.cache)
        yield "answer", self.memo.stats, len(self.memo)


SERVICE = web.AppKey("service", Service)


def header_digest(authorization: str | None) -> bytes | None:
    """sha256 of an ``Authorization`` header: the answer memo's key (None without one)."""
    if not authorization:
        return None
    return hashlib.sha256(authorization.encode("utf-8", "surrogatepass")).digest()


def _memoizable(decision: Decision) -> bool:
    # A registration answers "auto_registered" once; transient failures are retried.
    return decision.outcome is not Outcome.AUTO_REGISTERED and decision.status in (200, 403)


def _chain(first: Callable[[], None] | None, second: Callable[[], None]) -> Callable[[], None]:
    def both() -> None:
        if first is not None:
            first()
        second()

    return both


async def _open_store(settings: Settings) -> Store:
    assert settings.database_url
    try:
        return await TimedStore.open(
            settings.database_url,
            min_size=settings.db_pool_min_size,
            max_size=settings.db_pool_max_size,
            timeout=settings.db_timeout_seconds,
        )
    except DatabaseUnavailable:
        # Start anyway: readiness says why, and the pool connects once the database is back.
        log.warning("database unreachable at startup: starting not ready")
        return await TimedStore.open(
            settings.database_url,
            min_size=0,
            max_size=settings.db_pool_max_size,
            timeout=settings.db_timeout_seconds,
        )


# -- handlers --------------------------------------------------------------------------

CHECK_PATH = "/check"


def is_check_path(path: str) -> bool:
    """Tell whether ``path`` is ``/check`` or below it (what the check routes match)."""
    n = len(CHECK_PATH)
    return path.startswith(CHECK_PATH) and (len(path) == n or path[n] == "/")


def _response(result: Answer) -> web.Response:
    return web.Response(status=result.status, body=result.body, headers=result.headers)


def check_handler(service: Service) -> Callable[[web.BaseRequest], Awaitable[web.Response]]:
    """The ``ANY /check[/{tail}]`` handler: the ext_authz / auth_request check.

    Reads only the ``Authorization`` header; the body is ignored. A busy client's
    repeated token is answered by ``Service.recall`` without a coroutine switch.
    """

    async def handle_check(request: web.BaseRequest) -> web.Response:
        authorization = request.headers.get("Authorization")
        digest = header_digest(authorization)
        result = service.recall(digest) or await service.decide(authorization, digest)
        return _response(result)

    return handle_check


async def handle_healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: the process is alive."""
    return web.json_response({"ok": True})


async def handle_readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: database, JWKS and invalidation channel."""
    ready, checks = await request.app[SERVICE].readiness()
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


async def handle_metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus exposition."""
    body = request.app[SERVICE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def create_app(settings: Settings, *, clock: Clock = SYSTEM_CLOCK) -> web.Application:
    """Build the resolver application (reverse-proxy routes when ``settings.upstream``).

    Serve it with ``ResolverRunner`` (``run`` does), which answers the check
    before the router; the check routes are registered here as well, so any
    other runner serves the same contract, only slower.
    """
    app = web.Application(handler_args={"max_field_size": check.MAX_HEADER_BYTES})
    service = Service(settings, clock=clock)
    app[SERVICE] = service

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await service.start()
        yield
        await service.stop()

    async def on_shutdown(_app: web.Application) -> None:
        service.shutting_down = True

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(on_shutdown)

    handle_check = check_handler(service)
    app.router.add_route("*", CHECK_PATH, handle_check)
    app.router.add_route("*", CHECK_PATH + "/{tail:.*}", handle_check)
    app.router.add_get("/healthz", handle_healthz, allow_head=True)
    app.router.add_get("/readyz", handle_readyz, allow_head=True)
    app.router.add_get("/metrics", handle_metrics)
    if settings.upstream:
        from jwtkeymap.resolver.proxy import add_proxy_routes

        add_proxy_routes(app, settings, service)
    return app


class ResolverRunner(web.AppRunner):
    """An ``AppRunner`` whose server hands ``/check`` straight to the check handler.

    Every other path goes through the application as usual. Skipping the
    router, match info and application dispatch for the one path that sees
    every request of the proxy saves about a fifth of a cache hit's CPU
    (bench/README.md); the check needs none of them.
    """

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        routed = server.request_handler
        handle_check = check_handler(self.app[SERVICE])

        async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
            if is_check_path(request.rel_url.raw_path):
                return await handle_check(request)
            return await routed(request)

        server.request_handler = dispatch
        return server


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:8080`` for IPv6); raise ValueError when malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"listen address {listen!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - a sidecar's default


def _new_loop() -> asyncio.AbstractEventLoop:
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT, then finish in-flight requests within the grace bound."""
    host, port = parse_listen(settings.listen)
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    log.info(
        "resolver listening",
        extra={"listen": f"{host}:{port}", "upstream": bool(settings.upstream)},
    )
    app = create_app(settings)

    async def freeze(_app: web.Application) -> None:
        # Everything allocated at startup lives as long as the process: keep the
        # cyclic collector from rescanning it on every collection of the request path.
        gc.freeze()

    app.on_startup.append(freeze)
    runner = ResolverRunner(
        app,
        handle_signals=True,
        access_log=None,
        shutdown_timeout=settings.shutdown_grace_seconds,
    )

    async def serve() -> None:
        # What web.run_app does, with the resolver's runner.
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    main = loop.create_task(serve())
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not main.done():
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
        leftover = asyncio.all_tasks(loop)
        for task in leftover:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
