"""The invalidation bus: keeps every process's mapping cache coherent with the database.

Any writer only has to NOTIFY (the migration's triggers do it for every change
to the mapping and key tables, whoever makes it). Each process LISTENs on one
dedicated connection, outside the lookup pool, and evicts what a message names.

Coherence fails closed: the cache is trusted only while the channels can see
every change: the LISTEN connection when this process has one (Redis is then a
redundant second path), else every configured channel. When that stops (which
includes any database outage) the policy engine is suspended (cache cleared,
503s for anything that needs the database) and the channel is reconnected with
backoff; once it is back the engine resumes from an empty cache, so no message
lost in the gap can matter.

Redis is an optional second (or only) channel, for fleets that cannot hold a
LISTEN connection per process (PgBouncer in transaction mode). Something must
then copy PostgreSQL's notifications to Redis: one process per fleet runs with
``invalidation_relay`` and does it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
from collections.abc import Callable
from typing import Any, Final, Literal, Protocol

import asyncpg

from jwtkeymap.core.cache import MappingCache
from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.settings import Settings

log = logging.getLogger(__name__)

LISTEN_APPLICATION_NAME: Final = "jwtkeymap-listen"
FLUSH_ALL: Final = json.dumps({"all": True})

Kind = Literal["identity", "key", "all"]


class CoherentCache(Protocol):
    """What the bus drives: the policy engine's cache and its coherence switch."""

    cache: MappingCache

    def suspend(self) -> None:
        """The channel is lost: stop trusting the cache."""

    def resume(self) -> None:
        """The channel is back: trust the cache again, starting from empty."""


@dataclasses.dataclass(frozen=True, slots=True)
class Invalidation:
    """One message of the bus: an identity, a key (by fingerprint), or everything."""

    kind: Kind
    identity: MappingIdentity | None = None
    key_fingerprint: str | None = None

    def to_json(self) -> str:
        """The wire form (the same JSON the database triggers send)."""
        if self.kind == "identity":
            assert self.identity is not None
            return json.dumps(self.identity.to_json())
        if self.kind == "key":
            return json.dumps({"key": self.key_fingerprint})
        return FLUSH_ALL


def parse_message(payload: str | bytes) -> Invalidation:
    """Decode a bus payload; raise ValueError for anything that is not one of the three shapes."""
    data = json.loads(payload)
    if not isinstance(data, dict):
        raise ValueError("payload is not a JSON object")
    if data.get("all") is True:
        return Invalidation("all")
    key = data.get("key")
    if isinstance(key, str) and key:
        return Invalidation("key", key_fingerprint=key)
    fields = (data.get("issuer"), data.get("claim_name"), data.get("claim_value"))
    if all(isinstance(f, str) for f in fields) and fields[1] and fields[2]:
        issuer, name, value = (str(f) for f in fields)
        return Invalidation("identity", identity=MappingIdentity(issuer, name, value))
    raise ValueError("payload has none of issuer/claim_name/claim_value, key, all")


def apply_message(cache: MappingCache, message: Invalidation) -> int:
    """Evict what ``message`` names from ``cache``; return how many entries went."""
    if message.kind == "identity":
        assert message.identity is not None
        ident = message.identity
        return cache.invalidate(ident.issuer, ident.claim_name, ident.claim_value)
    if message.kind == "key":
        assert message.key_fingerprint is not None
        return cache.invalidate_key(message.key_fingerprint)
    count = len(cache)
    cache.clear()
    return count


@dataclasses.dataclass(slots=True)
class BusStats:
    """Counters for metrics: messages by (source, kind), evictions, connection losses."""

    received: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    evicted: int = 0
    disconnects: dict[str, int] = dataclasses.field(default_factory=dict)
    relayed: int = 0
    relay_failures: int = 0

    def count(self, source: str, kind: str) -> None:
        """Count one received message."""
        self.received[(source, kind)] = self.received.get((source, kind), 0) + 1


class Backoff:
    """Exponential backoff with full jitter, capped; ``reset`` after a success."""

    def __init__(self, initial: float = 0.05, maximum: float = 5.0) -> None:
        self._initial = initial
        self._max = maximum
        self._next = initial

    def next(self) -> float:
        """The delay before the next attempt."""
        delay = random.uniform(self._next / 2, self._next)
        self._next = min(self._next * 2, self._max)
        return delay

    def reset(self) -> None:
        """Start again from the initial delay."""
        self._next = self._initial


class _Source:
    """One channel: connects, receives, detects loss, reconnects."""

    name = "source"

    def __init__(self, bus: InvalidationBus) -> None:
        self.bus = bus
        self.connected = False
        self.last_error: str | None = None
        self.connects = 0

    async def run(self) -> None:
        """Connect and receive until cancelled, reconnecting with backoff."""
        backoff = Backoff(maximum=self.bus.settings.invalidation_reconnect_max_seconds)
        while True:
            try:
                await self.session(backoff)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure ends the session; the loop reconnects
                self.last_error = type(exc).__name__
                log.warning(
                    "invalidation channel lost, reconnecting",
                    extra={"channel": self.name, "error": type(exc).__name__},
                )
            finally:
                self.bus._down(self)
            await asyncio.sleep(backoff.next())

    async def session(self, backoff: Backoff) -> None:
        """One connection's life: connect, report up, receive until it fails."""
        raise NotImplementedError


class _PostgresSource(_Source):
    name = "postgres"

    def __init__(self, bus: InvalidationBus, url: str) -> None:
        super().__init__(bus)
        self._url = url

    async def session(self, backoff: Backoff) -> None:
        settings = self.bus.settings
        timeout = settings.db_timeout_seconds
        conn: asyncpg.Connection = await asyncpg.connect(
            self._url,
            timeout=timeout,
            server_settings={"application_name": LISTEN_APPLICATION_NAME},
        )
        try:
            lost = asyncio.Event()
            # Fires when the server ends the connection (pg_terminate_backend, restart).
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(settings.invalidation_channel, self._on_notify)
            self.connects += 1
            backoff.reset()
            self.bus._up(self)
            # A half-open TCP connection never fires the listener: ping it.
            interval = settings.invalidation_liveness_seconds
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), interval)
                if not lost.is_set():
                    await conn.fetchval("SELECT 1", timeout=min(interval, timeout))
            raise ConnectionError("the LISTEN connection was closed by the server")
        finally:
            conn.terminate()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.bus._receive(self.name, payload, relay=True)


class _RedisSource(_Source):
    name = "redis"

    def __init__(self, bus: InvalidationBus, url: str) -> None:
        super().__init__(bus)
        self._url = url
        self._client: Any = None

    def _new_client(self) -> Any:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No silent retries: a reconnect the bus does not see could hide lost messages.
        return aioredis.Redis.from_url(
            self._url,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=self.bus.settings.db_timeout_seconds,
            socket_keepalive=True,
        )

    async def session(self, backoff: Backoff) -> None:
        settings = self.bus.settings
        interval = settings.invalidation_liveness_seconds
        loop = asyncio.get_running_loop()
        client = self._new_client()
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(settings.invalidation_channel)
            # The confirmation proves the subscription is live before we trust it.
            confirmed = await pubsub.get_message(timeout=settings.db_timeout_seconds)
            if not confirmed or confirmed.get("type") != "subscribe":
                raise ConnectionError("no subscription confirmation from Redis")
            self.connects += 1
            backoff.reset()
            self.bus._up(self)
            last_seen = loop.time()
            pinged = False
            while True:
                msg = await pubsub.get_message(timeout=interval)
                now = loop.time()
                if msg is not None:
                    last_seen = now
                    pinged = False
                    if msg.get("type") == "message":
                        self.bus._receive(self.name, msg["data"], relay=False)
                    continue
                if pinged and now - last_seen > 2 * interval:
                    raise ConnectionError("Redis stopped answering pings")
                if now - last_seen >= interval:
                    await pubsub.ping()
                    pinged = True
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            with contextlib.suppress(Exception):
                await client.aclose()

    async def publish(self, payload: str) -> None:
        """Publish a payload on the Redis channel (the relay's job)."""
        if self._client is None:
            self._client = self._new_client()
        await self._client.publish(self.bus.settings.invalidation_channel, payload)

    async def close(self) -> None:
        """Close the publishing client."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None


class InvalidationBus:
    """Listen for invalidations on PostgreSQL and/or Redis and keep ``target`` coherent."""

    def __init__(self, settings: Settings, target: CoherentCache) -> None:
        self.settings = settings
        self.target = target
        self.stats = BusStats()
        self.sources: list[_Source] = []
        self._redis: _RedisSource | None = None
        if settings.database_url and settings.invalidation_listen:
            self.sources.append(_PostgresSource(self, settings.database_url))
        if settings.redis_url:
            self._redis = _RedisSource(self, settings.redis_url)
            self.sources.append(self._redis)
        self._relay = bool(settings.invalidation_relay and self._redis and len(self.sources) == 2)
        if settings.invalidation_relay and not self._relay:
            log.warning("invalidation_relay needs both database_url (LISTEN) and redis_url: off")
        if settings.database_url and not self.sources:
            log.warning("no invalidation channel: a cached mapping may be stale for up to its TTL")
        self._coherent = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._relay_tasks: set[asyncio.Task[None]] = set()
        self._relay_dirty = False
        self._stopping = False
        self.on_message: Callable[[str, Invalidation | None], None] | None = None

    @property
    def configured(self) -> bool:
        """Tell whether any channel is configured at all."""
        return bool(self.sources)

    @property
    def connected(self) -> bool:
        """Tell whether the cache is coherent: LISTEN connected, or else every channel."""
        return self._coherent.is_set()

    def status(self) -> dict[str, Any]:
        """Per-channel state for readiness output."""
        return {
            s.name: {"connected": s.connected, "connects": s.connects, "last_error": s.last_error}
            for s in self.sources
        }

    async def start(self) -> None:
        """Start listening; until every channel is up, the engine stays suspended."""
        if not self.sources:
            # No channel: the cache is trusted within its TTLs only.
            self._coherent.set()
            return
        self.target.suspend()
        for source in self.sources:
            self._tasks.append(asyncio.create_task(source.run(), name=f"bus-{source.name}"))

    async def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every channel; return whether they are up."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._coherent.wait(), timeout)
        return self.connected

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        self._stopping = True
        tasks = [*self._tasks, *self._relay_tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        if self._redis is not None:
            await self._redis.close()

    # -- called by the sources ---------------------------------------------------------

    def _up(self, source: _Source) -> None:
        source.connected = True
        log.info("invalidation channel connected", extra={"channel": source.name})
        if self._relay and source.name == "postgres":
            # Notifications sent while the relay was away are lost for the whole fleet.
            self._relay_publish(FLUSH_ALL)
        if self._sufficient() and not self._coherent.is_set():
            self.target.resume()
            self._coherent.set()

    def _sufficient(self) -> bool:
        """Tell whether the connected channels see every change.

        A process that LISTENs on PostgreSQL gets every NOTIFY first-hand; Redis is
        then only a second path, and losing it loses nothing. Without LISTEN,
        Redis is the only path and must be up.
        """
        postgres = [s for s in self.sources if s.name == "postgres"]
        if postgres:
            return postgres[0].connected
        return all(s.connected for s in self.sources)

    def _down(self, source: _Source) -> None:
        if source.connected:
            self.stats.disconnects[source.name] = self.stats.disconnects.get(source.name, 0) + 1
        source.connected = False
        if self._stopping:
            return
        if self._coherent.is_set() and not self._sufficient():
            self._coherent.clear()
            self.target.suspend()
            log.warning(
                "invalidation channel disconnected: cache suspended",
                extra={"channel": source.name},
            )
        elif self._coherent.is_set():
            log.warning(
                "invalidation channel disconnected: working on PostgreSQL alone",
                extra={"channel": source.name},
            )

    def _receive(self, source: str, payload: str | bytes, *, relay: bool) -> None:
        try:
            message: Invalidation | None = parse_message(payload)
        except (ValueError, UnicodeDecodeError):
            message = None
        if message is None:
            # Fail closed: a message we cannot read might have named anything.
            self.stats.count(source, "malformed")
            log.warning("malformed invalidation message: flushing the cache")
            self.target.cache.clear()
        else:
            self.stats.count(source, message.kind)
            self.stats.evicted += apply_message(self.target.cache, message)
        if relay and self._relay:
            text = payload.decode() if isinstance(payload, bytes) else payload
            self._relay_publish(text)
        if self.on_message is not None:
            self.on_message(source, message)

    def _relay_publish(self, payload: str) -> None:
        assert self._redis is not None
        redis = self._redis

        async def publish() -> None:
            try:
                if self._relay_dirty:
                    await redis.publish(FLUSH_ALL)
                    self._relay_dirty = False
                await redis.publish(payload)
                self.stats.relayed += 1
            except Exception as exc:  # retried as a full flush with the next message
                self._relay_dirty = True
                self.stats.relay_failures += 1
                log.warning("relay to Redis failed", extra={"error": type(exc).__name__})

        task = asyncio.create_task(publish())
        self._relay_tasks.add(task)
        task.add_done_callback(self._relay_tasks.discard)


async def notify(conn: asyncpg.Connection, channel: str, message: Invalidation) -> None:
    """Send ``message`` on the PostgreSQL channel (for writers that bypass the triggers)."""
    await conn.execute("SELECT pg_notify($1, $2)", channel, message.to_json())
