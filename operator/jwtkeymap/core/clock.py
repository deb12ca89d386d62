"""Injectable time, so TTL logic is tested without sleeping."""

from __future__ import annotations

import datetime as dt
import time
from typing import Protocol


class Clock(Protocol):
    """A source of time: monotonic seconds for TTLs, UTC wall time for expiry."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards."""

    def now(self) -> dt.datetime:
        """Current wall-clock time, timezone-aware UTC."""


class SystemClock:
    """The real clock."""

    # Seconds from the system's monotonic clock: the function itself, one call less on
    # every remembered answer.
    monotonic = staticmethod(time.monotonic)

    def now(self) -> dt.datetime:
        """Current UTC time."""
        return dt.datetime.now(dt.UTC)


class ManualClock:
    """A clock that moves only when told to; for tests and benchmarks."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._mono = 1000.0
        self._start = start or dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def monotonic(self) -> float:
        """Seconds since the clock was created, plus whatever was advanced."""
        return self._mono

    def now(self) -> dt.datetime:
        """The start time plus every advance."""
        return self._start + dt.timedelta(seconds=self._mono - 1000.0)

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self._mono += seconds


SYSTEM_CLOCK: Clock = SystemClock()
