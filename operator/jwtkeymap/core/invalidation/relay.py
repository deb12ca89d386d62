"""The relay: copies PostgreSQL's notifications to the Redis channel, and beats.

One process per fleet runs it (``invalidation_relay``). A failed publish is
retried as a full flush before the next message, and so is everything sent
while the relay's own LISTEN was away: a message lost for the whole fleet must
never leave a stale entry behind.

While its LISTEN is up the relay also publishes a heartbeat on a second channel
(``heartbeat_channel``). A Redis-only subscriber cannot otherwise tell a quiet
database from a dead relay; without the heartbeat it suspends its cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from jwtkeymap.core.invalidation.messages import FLUSH_ALL
from jwtkeymap.core.invalidation.redis import heartbeat_channel, redis_client

log = logging.getLogger("jwtkeymap.core.invalidation")


class Relay:
    """Publish payloads on Redis, in order, without blocking the receiver."""

    def __init__(self, url: str, *, channel: str, timeout: float) -> None:
        self._url = url
        self._channel = channel
        self._timeout = timeout
        self._client: Any = None
        self._dirty = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.relayed = 0
        self.beats = 0

    def publish(self, payload: str) -> None:
        """Publish ``payload`` in the background."""
        self._spawn(self._publish(self._channel, payload))

    def flush_all(self) -> None:
        """Tell the fleet to drop everything (the relay's LISTEN was away)."""
        self.publish(FLUSH_ALL)

    def beat(self) -> None:
        """Tell the fleet the relay is alive (a pending flush goes first)."""
        self._spawn(self._publish(heartbeat_channel(self._channel), "1"))

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, channel: str, payload: str) -> None:
        try:
            if self._client is None:
                self._client = redis_client(self._url, connect_timeout=self._timeout)
            if self._dirty:
                await self._client.publish(self._channel, FLUSH_ALL)
                self._dirty = False
            await self._client.publish(channel, payload)
            if channel == self._channel:
                self.relayed += 1
            else:
                self.beats += 1
        except Exception as exc:  # retried as a full flush with the next message or beat
            self._dirty = True
            log.warning("relay to Redis failed", extra={"error": type(exc).__name__})

    async def close(self) -> None:
        """Cancel pending publishes and close the client."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None
