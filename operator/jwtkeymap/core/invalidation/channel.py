"""What every invalidation channel shares: reconnecting with backoff, reporting up and down.

A channel knows nothing of the cache or of other channels: it calls back
``on_up``, ``on_down`` and ``on_payload``, and ``coherence`` decides.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable

log = logging.getLogger("jwtkeymap.core.invalidation")


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


@dataclasses.dataclass(frozen=True, slots=True)
class Callbacks:
    """How a channel reports: connected, lost, and each payload received."""

    on_up: Callable[[Channel], None]
    on_down: Callable[[Channel], None]
    on_payload: Callable[[Channel, str | bytes], None]


class Channel:
    """One channel: connects, receives, detects loss, reconnects."""

    name = "channel"

    def __init__(
        self,
        callbacks: Callbacks,
        *,
        url: str,
        channel: str,
        timeout: float,
        liveness_seconds: float,
        reconnect_max_seconds: float,
    ) -> None:
        self.callbacks = callbacks
        self.connected = False
        self.last_error: str | None = None
        self.connects = 0
        self._url = url
        self._channel = channel
        self._timeout = timeout
        self._liveness = liveness_seconds
        self._reconnect_max = reconnect_max_seconds

    async def run(self) -> None:
        """Connect and receive until cancelled, reconnecting with backoff."""
        backoff = Backoff(maximum=self._reconnect_max)
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
                self.callbacks.on_down(self)
            await asyncio.sleep(backoff.next())

    def connected_now(self, backoff: Backoff) -> None:
        """Called by ``session`` once the channel is live."""
        self.connects += 1
        backoff.reset()
        self.callbacks.on_up(self)

    async def session(self, backoff: Backoff) -> None:
        """One connection's life: connect, report up, receive until it fails."""
        raise NotImplementedError
