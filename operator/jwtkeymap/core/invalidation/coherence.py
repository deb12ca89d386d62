"""Coherence: trust the cache only while the channels can see every change.

Each process LISTENs on PostgreSQL (Redis is then a redundant second path), or
else subscribes to Redis alone, where a relay that stopped beating counts as a
lost channel (Redis up but nobody feeding it is as blind as Redis down). When
the channels stop seeing every change (which includes any database outage) the
policy engine is suspended (cache cleared, 503s for anything that needs the
database) and the channels reconnect with backoff; once they are back the
engine resumes from an empty cache, so no message lost in the gap can matter. A
message that cannot be read might have named anything: it flushes the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any, Protocol

from jwtkeymap.core.cache import MappingCache
from jwtkeymap.core.clock import SYSTEM_CLOCK, Clock
from jwtkeymap.core.invalidation.channel import Callbacks, Channel
from jwtkeymap.core.invalidation.messages import Invalidation, apply_message, parse_message
from jwtkeymap.core.invalidation.postgres import PostgresChannel
from jwtkeymap.core.invalidation.redis import RedisChannel
from jwtkeymap.core.invalidation.relay import Relay
from jwtkeymap.core.settings import Settings

log = logging.getLogger("jwtkeymap.core.invalidation")


class CoherentCache(Protocol):
    """What the bus drives: the policy engine's cache and its coherence switch."""

    cache: MappingCache

    def suspend(self) -> None:
        """The channel is lost: stop trusting the cache."""

    def resume(self) -> None:
        """The channel is back: trust the cache again, starting from empty."""


@dataclasses.dataclass(slots=True)
class BusStats:
    """Counters for metrics: messages by (channel, kind), evictions, connection losses."""

    received: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    evicted: int = 0
    disconnects: dict[str, int] = dataclasses.field(default_factory=dict)
    # Unix time the last message was applied: when a fleet last heard anything, and how
    # long after a change each process had evicted (bench/fleet.py --only fleet).
    last_applied: float = 0.0

    def count(self, channel: str, kind: str) -> None:
        """Count one received message."""
        self.received[(channel, kind)] = self.received.get((channel, kind), 0) + 1


class InvalidationBus:
    """Listen for invalidations on PostgreSQL and/or Redis and keep ``target`` coherent."""

    def __init__(
        self, settings: Settings, target: CoherentCache, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.target = target
        self._clock = clock
        self.stats = BusStats()
        self.sources: list[Channel] = []
        callbacks = Callbacks(
            on_up=self.channel_up, on_down=self.channel_down, on_payload=self.received
        )
        common: dict[str, Any] = {
            "channel": settings.invalidation_channel,
            "timeout": settings.db_timeout_seconds,
            "liveness_seconds": settings.invalidation_liveness_seconds,
            "reconnect_max_seconds": settings.invalidation_reconnect_max_seconds,
        }
        listen = bool(settings.database_url and settings.invalidation_listen)
        if listen:
            assert settings.database_url
            self.sources.append(PostgresChannel(callbacks, url=settings.database_url, **common))
        if settings.redis_url:
            # Alone, Redis is only as good as the relay feeding it: require its heartbeat.
            relay_timeout = 0 if listen else settings.invalidation_relay_timeout_seconds
            self.sources.append(
                RedisChannel(
                    callbacks, url=settings.redis_url, relay_timeout=relay_timeout, **common
                )
            )
        self._relay: Relay | None = None
        if settings.invalidation_relay:
            if settings.redis_url and len(self.sources) == 2:
                self._relay = Relay(
                    settings.redis_url,
                    channel=settings.invalidation_channel,
                    timeout=settings.db_timeout_seconds,
                )
            else:
                log.warning(
                    "invalidation_relay needs both database_url (LISTEN) and redis_url: off"
                )
        if settings.database_url and not self.sources:
            log.warning("no invalidation channel: a cached mapping may be stale for up to its TTL")
        self._beat_seconds = settings.invalidation_liveness_seconds
        self._coherent = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    @property
    def configured(self) -> bool:
        """Tell whether any channel is configured at all."""
        return bool(self.sources)

    @property
    def connected(self) -> bool:
        """Tell whether the cache is coherent: LISTEN connected, or else every channel."""
        return self._coherent.is_set()

    @property
    def relayed(self) -> int:
        """Messages the relay published (0 when this process does not relay)."""
        return 0 if self._relay is None else self._relay.relayed

    def status(self) -> dict[str, Any]:
        """Per-channel state for readiness output."""
        return {
            s.name: {"connected": s.connected, "connects": s.connects, "last_error": s.last_error}
            for s in self.sources
        }

    async def start(self) -> None:
        """Start listening; until the channels are up, the engine stays suspended."""
        if not self.sources:
            # No channel: the cache is trusted within its TTLs only.
            self._coherent.set()
            return
        self.target.suspend()
        for source in self.sources:
            self._tasks.append(asyncio.create_task(source.run(), name=f"bus-{source.name}"))
        if self._relay is not None:
            self._tasks.append(asyncio.create_task(self._beat(), name="bus-relay-heartbeat"))

    async def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the channels; return whether they are up."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._coherent.wait(), timeout)
        return self.connected

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._relay is not None:
            await self._relay.close()

    async def _beat(self) -> None:
        """Send the relay's heartbeat while its LISTEN is up (it relays nothing otherwise)."""
        assert self._relay is not None
        listen = self.sources[0]
        while True:
            if listen.connected:
                self._relay.beat()
            await asyncio.sleep(self._beat_seconds)

    # -- what the channels report ------------------------------------------------------

    def channel_up(self, channel: Channel) -> None:
        """A channel connected: resume the engine once the channels suffice."""
        channel.connected = True
        log.info("invalidation channel connected", extra={"channel": channel.name})
        if self._relay is not None and channel.name == PostgresChannel.name:
            # Notifications sent while the relay was away are lost for the whole fleet.
            self._relay.flush_all()
        if self._sufficient() and not self._coherent.is_set():
            self.target.resume()
            self._coherent.set()

    def channel_down(self, channel: Channel) -> None:
        """A channel was lost: suspend the engine unless the others still see everything."""
        if channel.connected:
            self.stats.disconnects[channel.name] = self.stats.disconnects.get(channel.name, 0) + 1
        channel.connected = False
        if self._stopping or not self._coherent.is_set():
            return
        if not self._sufficient():
            self._coherent.clear()
            self.target.suspend()
            log.warning(
                "invalidation channel disconnected: cache suspended",
                extra={"channel": channel.name},
            )
        else:
            log.warning(
                "invalidation channel disconnected: working on PostgreSQL alone",
                extra={"channel": channel.name},
            )

    def received(self, channel: Channel, payload: str | bytes) -> None:
        """Evict what a payload names (everything, when it cannot be read); relay it."""
        try:
            message: Invalidation | None = parse_message(payload)
        except (ValueError, UnicodeDecodeError):
            message = None
        if message is None:
            self.stats.count(channel.name, "malformed")
            log.warning("malformed invalidation message: flushing the cache")
            self.target.cache.clear()
        else:
            self.stats.count(channel.name, message.kind)
            self.stats.evicted += apply_message(self.target.cache, message)
        self.stats.last_applied = self._clock.now().timestamp()
        if self._relay is not None and channel.name == PostgresChannel.name:
            self._relay.publish(payload.decode() if isinstance(payload, bytes) else payload)

    def _sufficient(self) -> bool:
        """Tell whether the connected channels see every change.

        A process that LISTENs on PostgreSQL gets every NOTIFY first-hand; Redis is
        then only a second path, and losing it loses nothing. Without LISTEN,
        Redis is the only path and must be up.
        """
        for channel in self.sources:
            if channel.name == PostgresChannel.name:
                return channel.connected
        return all(s.connected for s in self.sources)
