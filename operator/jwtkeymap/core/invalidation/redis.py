"""The Redis channel: a subscription, for fleets that cannot hold a LISTEN per process.

Something must copy PostgreSQL's notifications to Redis: see ``relay``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from jwtkeymap.core.invalidation.channel import Backoff, Channel


def redis_client(url: str, *, connect_timeout: float) -> Any:
    """A Redis client that never retries silently (a hidden reconnect could lose messages)."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return aioredis.Redis.from_url(
        url,
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=connect_timeout,
        socket_keepalive=True,
    )


def heartbeat_channel(channel: str) -> str:
    """The Redis channel the relay's heartbeats go to, next to ``channel``."""
    return f"{channel}:relay"


class RedisChannel(Channel):
    """Receives published payloads; pings when quiet to detect a dead server.

    With ``relay_timeout`` it is up only while a relay's heartbeat arrived that
    recently: Redis being reachable says nothing about whether anything still
    copies the database's notifications to it.
    """

    name = "redis"

    def __init__(self, *args: Any, relay_timeout: float = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.relay_timeout = relay_timeout

    async def session(self, backoff: Backoff) -> None:
        """Subscribe, then receive until Redis stops answering (or the relay, beating)."""
        interval = self._liveness
        loop = asyncio.get_running_loop()
        client = redis_client(self._url, connect_timeout=self._timeout)
        pubsub = client.pubsub()
        beats = heartbeat_channel(self._channel)
        channels = [self._channel, beats] if self.relay_timeout else [self._channel]
        try:
            await pubsub.subscribe(*channels)
            # The confirmations prove the subscription is live before we trust it.
            for _ in channels:
                confirmed = await pubsub.get_message(timeout=self._timeout)
                if not confirmed or confirmed.get("type") != "subscribe":
                    raise ConnectionError("no subscription confirmation from Redis")
            last_seen = last_beat = loop.time()
            live = not self.relay_timeout
            if live:
                self.connected_now(backoff)
            pinged = False
            while True:
                wait = interval
                if self.relay_timeout:
                    wait = max(0.0, min(interval, last_beat + self.relay_timeout - loop.time()))
                msg = await pubsub.get_message(timeout=wait)
                now = loop.time()
                if msg is not None:
                    last_seen = now
                    pinged = False
                    if msg.get("type") != "message":
                        continue
                    if msg.get("channel") in (beats, beats.encode()):
                        last_beat = now
                        if not live:
                            live = True
                            self.connected_now(backoff)
                    else:
                        self.callbacks.on_payload(self, msg["data"])
                    continue
                if self.relay_timeout and now - last_beat >= self.relay_timeout:
                    raise ConnectionError("no heartbeat from the relay")
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
