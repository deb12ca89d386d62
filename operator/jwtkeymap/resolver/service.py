"""The resolver's service: the long-lived parts of one process, and the check it performs.

``Service`` owns the store, token verifier, userinfo client, policy engine and
invalidation bus, built complete by ``Service.open``, and answers one question:
what is the answer to this ``Authorization`` header. It knows nothing of HTTP
routes; ``handlers`` translates.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp

from jwtkeymap.core.assertion import AssertionSigner, SigningKey, read_signing_keys
from jwtkeymap.core.cache import CacheStats
from jwtkeymap.core.clock import SYSTEM_CLOCK, Clock
from jwtkeymap.core.db.store import Store
from jwtkeymap.core.errors import (
    DatabaseUnavailable,
    IdentityProviderUnavailable,
    InvalidToken,
    JwtKeyMapError,
)
from jwtkeymap.core.invalidation.coherence import InvalidationBus
from jwtkeymap.core.policy import Decision, PolicyEngine, Verdict, claims_read
from jwtkeymap.core.settings import Settings
from jwtkeymap.core.tokens import TokenVerifier, VerifiedToken
from jwtkeymap.core.userinfo import UserinfoClient
from jwtkeymap.resolver import check
from jwtkeymap.resolver.check import Answer
from jwtkeymap.resolver.memo import AnswerMemo
from jwtkeymap.resolver.metrics import JwksStatus, Metrics

log = logging.getLogger("jwtkeymap.resolver")

READY_TIMEOUT_SECONDS = 2.0
# How long a whole answer is reused for an identical Authorization header.
MEMO_TTL_SECONDS = 1.0
# How often the assertion key file is checked for a rotation (a mounted Secret changes
# in place).
KEY_FILE_CHECK_SECONDS = 5.0


class Service:
    """Everything one resolver process holds, and the check it performs.

    Build it with ``Service.open`` (which connects and starts everything) and
    end it with ``close``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock,
        metrics: Metrics,
        session: aiohttp.ClientSession,
        store: Store | None,
        verifier: TokenVerifier,
        userinfo: UserinfoClient | None,
        engine: PolicyEngine,
        bus: InvalidationBus,
        signer: AssertionSigner | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.session = session
        self.store = store
        self.verifier = verifier
        self.userinfo = userinfo
        self.engine = engine
        self.bus = bus
        self.signer = signer
        self.shutting_down = False
        self.memo = AnswerMemo(settings.token_cache_max_entries, clock)
        self._tasks: list[asyncio.Task[None]] = []
        self._strip = settings.strip_authorization
        self._debug = log.isEnabledFor(logging.DEBUG)
        for keyset in verifier.keysets.values():
            keyset.on_keys_removed = _chain(keyset.on_keys_removed, self.memo.clear)

    @classmethod
    async def open(
        cls, settings: Settings, *, metrics: Metrics, clock: Clock = SYSTEM_CLOCK
    ) -> Service:
        """Open the database pool, load the JWKS, connect the invalidation bus."""
        signer = _signer(settings, clock)  # first: a bad key file stops the start at once
        session = aiohttp.ClientSession()
        store = await _open_store(settings, metrics) if settings.database_url else None
        engine = PolicyEngine(settings, store=store, clock=clock)
        service = cls(
            settings,
            clock=clock,
            metrics=metrics,
            session=session,
            store=store,
            verifier=TokenVerifier(
                settings, session=session, clock=clock, keep_claims=claims_read(settings)
            ),
            userinfo=(
                UserinfoClient(settings, session=session, clock=clock)
                if settings.oidc_userinfo_url
                else None
            ),
            engine=engine,
            bus=InvalidationBus(settings, engine, clock=clock),
            signer=signer,
        )
        await service._start()
        return service

    async def _start(self) -> None:
        await self.bus.start()
        await self.verifier.start()
        self._tasks.append(asyncio.create_task(self._keep_jwks(), name="jwks-keeper"))
        if self.signer is not None and self.settings.assertion.signing_key_file is not None:
            self._tasks.append(
                asyncio.create_task(self._keep_signing_keys(), name="assertion-key-keeper")
            )
        self.metrics.attach(self)
        # Serve from the start with a coherent cache when the channel comes up quickly;
        # otherwise readiness reports it and requests needing the database get 503.
        timeout = self.settings.db_timeout_seconds
        if self.bus.configured and not await self.bus.wait_connected(timeout):
            log.warning("invalidation channel not connected yet: not ready")

    async def close(self) -> None:
        """Close everything, in reverse order."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.bus.stop()
        if self.store is not None:
            await self.store.close()
        await self.session.close()

    async def _keep_jwks(self) -> None:
        """Retry key sets whose last refresh failed, each on its own backoff.

        Readiness would otherwise never recover; the backoff keeps a broken IdP
        from being polled every second.
        """
        while True:
            await asyncio.sleep(1.0)
            for keyset in self.verifier.keysets.values():
                if keyset.retry_due():
                    await keyset.refresh()

    async def _keep_signing_keys(self) -> None:
        """Follow a rotated key file; a broken file keeps the keys in use."""
        while True:
            await asyncio.sleep(KEY_FILE_CHECK_SECONDS)
            try:
                await asyncio.to_thread(self.reload_signing_keys)
            except JwtKeyMapError as exc:
                log.warning("assertion key file unusable, keeping the current keys: %s", exc)

    def reload_signing_keys(self) -> bool:
        """Re-read ``assertion.signing_key_file``; tell whether the keys changed."""
        path = self.settings.assertion.signing_key_file
        if self.signer is None or path is None:
            return False
        keys = read_signing_keys(path)
        if [k.kid for k in keys] == [k.kid for k in self.signer.keys]:
            return False
        self.signer.replace_keys(keys)
        # Remembered answers carry assertions of the old first key; it may be gone.
        self.memo.clear()
        log.info("assertion signing keys reloaded", extra={"kids": [k.kid for k in keys]})
        return True

    # -- the check -------------------------------------------------------------------

    async def authorize(self, authorization: str | None, digest: bytes | None = None) -> Answer:
        """Answer one check for the request's ``Authorization`` header (no memo lookup).

        With ``digest`` (``header_digest`` of the header) a reusable answer is remembered.
        """
        engine = self.engine
        try:
            token = check.bearer_token(authorization)
            verified = await self._verify(token)
        except InvalidToken as exc:
            return check.invalid_token(str(exc))
        except IdentityProviderUnavailable:
            return check.refuse(
                503,
                "identity_provider_unavailable",
                "JWT Key Mapping: the identity provider is unavailable. Retry the request.",
            )
        generation = engine.cache.generation
        decision = await engine.resolve(verified.claims, verified.issuer)
        result = check.answer(decision, strip_authorization=self._strip, signer=self.signer)
        if digest is not None and not engine.suspended and _memoizable(decision):
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
        if decision.outcome is not Verdict.ADMIN:
            ttl = min(ttl, s.positive_ttl_seconds if decision.key else s.negative_ttl_seconds)
        if decision.key is not None and decision.key.expires is not None:
            ttl = min(ttl, (decision.key.expires - now).total_seconds())
        return ttl

    async def _verify(self, token: str) -> VerifiedToken:
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
        result = self.remembered(digest)
        if result is not None:
            self.record(result, time.perf_counter() - start)
        return result

    def remembered(self, digest: bytes | None) -> Answer | None:
        """``recall`` without the counting: the caller ``record``s the answer once it has
        acted on it (the fast lane sends the request first, then keeps the books)."""
        engine = self.engine
        if digest is None or engine.suspended:
            return None
        return self.memo.recall(digest, engine.cache.generation)

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
            result = check.refuse(500, "internal_error", "JWT Key Mapping: internal error.")
        self.record(result, time.perf_counter() - start)
        return result

    def record(self, result: Answer, seconds: float) -> None:
        """Count one check answer that took ``seconds`` (and log it if it is a failure)."""
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
        jwks = {i: ks.loaded for i, ks in self.verifier.keysets.items()}
        checks["jwks"] = jwks
        ready = ready and all(jwks.values())
        if self.bus.configured:
            checks["invalidation"] = {"ok": self.bus.connected, **self.bus.status()}
            ready = ready and self.bus.connected
        return ready, checks

    # -- what metrics read (``metrics.Observed``) ------------------------------------

    def cache_stats(self) -> Iterator[tuple[str, CacheStats, int]]:
        """(name, stats, size) of every cache, for metrics."""
        yield "mapping", self.engine.cache.stats, len(self.engine.cache)
        yield "token", self.verifier.cache.stats, len(self.verifier.cache)
        if self.userinfo is not None:
            yield "userinfo", self.userinfo.cache.stats, len(self.userinfo.cache)
        yield "answer", self.memo.stats, len(self.memo)

    def jwks_status(self) -> Iterator[JwksStatus]:
        """Each issuer's key set: fetches so far, and whether it holds keys."""
        for issuer, keyset in self.verifier.keysets.items():
            yield JwksStatus(issuer, keyset.refreshes, keyset.loaded)

    def invalidation(self) -> InvalidationBus:
        """The invalidation bus, for its counters and channel state."""
        return self.bus


def header_digest(authorization: str | None) -> bytes | None:
    """BLAKE2b-256 of an ``Authorization`` header: the answer memo's key (None without one).

    BLAKE2b rather than sha256: as collision-resistant, and CPython's own compact code
    rather than OpenSSL's dispatch, which costs several times more run cold on a request
    after an idle moment (bench/README.md, "Where the hop's time goes")."""
    if not authorization:
        return None
    return hashlib.blake2b(authorization.encode("utf-8", "surrogatepass"), digest_size=32).digest()


def _signer(settings: Settings, clock: Clock) -> AssertionSigner | None:
    """The assertion signer the settings ask for (an ephemeral key without a file)."""
    options = settings.assertion
    if not options.enabled:
        return None
    path = options.signing_key_file
    keys = read_signing_keys(path) if path is not None else [SigningKey.generate()]
    return AssertionSigner(
        keys,
        issuer=options.issuer,
        audience=options.audience,
        ttl_seconds=options.ttl_seconds,
        clock=clock,
        max_entries=settings.cache_max_entries,
    )


def _memoizable(decision: Decision) -> bool:
    # A registration answers "auto_registered" once; transient failures are retried.
    return decision.outcome is not Verdict.AUTO_REGISTERED and decision.status in (200, 403)


def _chain(first: Callable[[], None] | None, second: Callable[[], None]) -> Callable[[], None]:
    def both() -> None:
        if first is not None:
            first()
        second()

    return both


async def _open_store(settings: Settings, metrics: Metrics) -> Store:
    assert settings.database_url
    options: dict[str, Any] = {
        "max_size": settings.db_pool_max_size,
        "timeout": settings.db_timeout_seconds,
        "observe": metrics.observe_query,
        "statement_cache_size": settings.db_statement_cache_size,
    }
    try:
        return await Store.open(
            settings.database_url, min_size=settings.db_pool_min_size, **options
        )
    except DatabaseUnavailable:
        # Start anyway: readiness says why, and the pool connects once the database is back.
        log.warning("database unreachable at startup: starting not ready")
        return await Store.open(settings.database_url, min_size=0, **options)
