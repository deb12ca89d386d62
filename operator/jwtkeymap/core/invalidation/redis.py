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


class RedisChannel(Channel):
    """Receives published payloads; pings when quiet to detect a dead server."""

    name = "redis"

    async def session(self, backoff: Backoff) -> None:
        """Subscribe, then receive until Redis stops answering."""
        interval = self._liveness
        loop = asyncio.get_running_loop()
        client = redis_client(self._url, connect_timeout=self._timeout)
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            # The confirmation proves the subscription is live before we trust it.
            confirmed = await pubsub.get_message(timeout=self._timeout)
            if not confirmed or confirmed.get("type") != "subscribe":
                raise ConnectionError("no subscription confirmation from Redis")
            self.connected_now(backoff)
            last_seen = loop.time()
            pinged = False
            while True:
                msg = await pubsub.get_message(timeout=interval)
                now = loop.time()
                if msg is not None:
                    last_seen = now
                    pinged = False
                    if msg.get("type") == "message":
                        self.callbacks.on_payload(self, msg["data"])
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
