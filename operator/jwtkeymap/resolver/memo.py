"""The answer memo: a whole check answer, reused for an identical token for a moment.

A client streaming completions sends the same bearer token many times a
second; the memo answers those with one hash and one dictionary lookup instead
of re-running verification and policy. It is keyed by a BLAKE2b digest of
the ``Authorization`` header (a token is never kept as a key), and an entry is
valid only for its own short TTL and only while the mapping cache's
generation is unchanged: every invalidation, and every loss of the
invalidation channel, bumps that generation, so no answer outlives a change.
"""

from __future__ import annotations

from jwtkeymap.core.cache import CacheStats
from jwtkeymap.core.clock import SYSTEM_CLOCK, Clock
from jwtkeymap.resolver.check import Answer

# How often expired entries are swept out (each lives a second at most).
SWEEP_SECONDS = 1.0


class AnswerMemo:
    """Bounded map of blake2b(Authorization) → (answer, cache generation, deadline)."""

    def __init__(self, max_entries: int, clock: Clock = SYSTEM_CLOCK) -> None:
        self._max = max_entries
        self._monotonic = clock.monotonic
        self._data: dict[bytes, tuple[Answer, int, float]] = {}
        self._next_sweep = self._monotonic() + SWEEP_SECONDS
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._data)

    def recall(self, digest: bytes, generation: int) -> Answer | None:
        """The remembered answer, if still valid for this cache generation."""
        item = self._data.get(digest)
        if item is not None:
            if item[1] == generation and item[2] > self._monotonic():
                self.stats.hits += 1
                return item[0]
            del self._data[digest]
        self.stats.misses += 1
        return None

    def remember(self, digest: bytes, answer: Answer, generation: int, ttl: float) -> None:
        """Keep ``answer`` for ``ttl`` seconds (nothing when ``ttl`` is not positive)."""
        if ttl <= 0:
            return
        now = self._monotonic()
        if now >= self._next_sweep:
            self._sweep(now)
        if digest not in self._data and len(self._data) >= self._max:
            # Entries live a second at most: dropping the oldest insertion is enough.
            del self._data[next(iter(self._data))]
            self.stats.evictions += 1
        self._data[digest] = (answer, generation, now + ttl)

    def _sweep(self, now: float) -> None:
        # Rebuilt rather than deleted from: the new dict is compact, and the cost is
        # one pass over a second of entries, once a second.
        self._data = {k: item for k, item in self._data.items() if item[2] > now}
        self._next_sweep = now + SWEEP_SECONDS

    def clear(self) -> None:
        """Forget everything (a signing key was withdrawn)."""
        self._data.clear()
