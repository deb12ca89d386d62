"""The relay: copies PostgreSQL's notifications to the Redis channel.

One process per fleet runs it (``invalidation_relay``). A failed publish is
retried as a full flush before the next message, and so is everything sent
while the relay's own LISTEN was away: a message lost for the whole fleet must
never leave a stale entry behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from jwtkeymap.core.invalidation.messages import FLUSH_ALL
from jwtkeymap.core.invalidation.redis import redis_client

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

    def publish(self, payload: str) -> None:
        """Publish ``payload`` in the background."""
        task = asyncio.create_task(self._publish(payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def flush_all(self) -> None:
        """Tell the fleet to drop everything (the relay's LISTEN was away)."""
        self.publish(FLUSH_ALL)

    async def _publish(self, payload: str) -> None:
        try:
            if self._client is None:
                self._client = redis_client(self._url, connect_timeout=self._timeout)
            if self._dirty:
                await self._client.publish(self._channel, FLUSH_ALL)
                self._dirty = False
            await self._client.publish(self._channel, payload)
            self.relayed += 1
        except Exception as exc:  # retried as a full flush with the next message
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
