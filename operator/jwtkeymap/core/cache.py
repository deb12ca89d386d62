"""Caches: a bounded LRU with per-entry TTLs, and the mapping cache built on it.

Entries are tagged values (``Mapped``, ``Unmapped``, ``Inactive``), never in-band
sentinel strings (W3). Keys are ``MappingIdentity`` tuples, so the components can
never run into each other the way ``f"{name}:{value}"`` did (W2).

W-numbers name LiteLLM's weaknesses: docs/litellm-weaknesses.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.clock import SYSTEM_CLOCK, Clock
from jwtkeymap.core.keys import KeyIdentity

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclasses.dataclass(slots=True)
class CacheStats:
    """Counters a metrics exporter can read."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    invalidations: int = 0
    # Loads run for a miss (one per single flight, however many callers waited).
    loads: int = 0


class LRUCache(Generic[K, V]):
    """A bounded least-recently-used map whose entries expire after their own TTL."""

    def __init__(self, max_entries: int, clock: Clock = SYSTEM_CLOCK) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._clock = clock
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self.stats = CacheStats()
        self.on_remove: Callable[[K, V], None] | None = None

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def get(self, key: K) -> V | None:
        """Return the live value for ``key`` (refreshing its recency), or None."""
        item = self._data.get(key)
        if item is None:
            self.stats.misses += 1
            return None
        deadline, value = item
        if deadline <= self._clock.monotonic():
            self._remove(key)
            self.stats.misses += 1
            return None
        self._data.move_to_end(key)
        self.stats.hits += 1
        return value

    def put(self, key: K, value: V, ttl: float) -> None:
        """Store ``value`` for ``ttl`` seconds; a TTL of 0 or less stores nothing."""
        if ttl <= 0:
            self.pop(key)
            return
        if key in self._data:
            self._remove(key)
        self._data[key] = (self._clock.monotonic() + ttl, value)
        while len(self._data) > self._max:
            oldest = next(iter(self._data))
            self._remove(oldest)
            self.stats.evictions += 1

    def peek(self, key: K) -> V | None:
        """Return the value stored for ``key``, live or not, without touching its recency."""
        item = self._data.get(key)
        return None if item is None else item[1]

    def pop(self, key: K) -> V | None:
        """Remove ``key``; return its value if it was present."""
        item = self._data.get(key)
        if item is None:
            return None
        self._remove(key)
        return item[1]

    def clear(self) -> None:
        """Remove everything."""
        if self.on_remove is not None:
            for key, (_, value) in list(self._data.items()):
                self.on_remove(key, value)
        self._data.clear()

    def keys(self) -> list[K]:
        """A snapshot of the keys, least recently used first."""
        return list(self._data)

    def _remove(self, key: K) -> None:
        _, value = self._data.pop(key)
        if self.on_remove is not None:
            self.on_remove(key, value)


@dataclasses.dataclass(frozen=True, slots=True)
class Mapped:
    """An active mapping to a key. ``scope`` is the issuer of the row that matched."""

    mapping_id: str
    scope: str
    key: KeyIdentity


@dataclasses.dataclass(frozen=True, slots=True)
class Inactive:
    """A mapping exists for the identity but is switched off."""

    mapping_id: str
    scope: str


@dataclasses.dataclass(frozen=True, slots=True)
class Unmapped:
    """No mapping exists for the identity."""


Entry = Mapped | Inactive | Unmapped


UNMAPPED = Unmapped()


class MappingCache:
    """Identity → entry, with invalidation by identity or by key, and single flight.

    Invalidations bump a generation counter; a load that started before an
    invalidation still answers its waiters but is not stored, so a row that
    changed during the query can never be cached stale.

    Memory per entry is kept small (a resolver caches one entry per client):
    entries that map to an equal key share one ``KeyIdentity``, the issuer is
    held once, and the only index is by key, holding a bare identity for a key
    that one entry maps to. An identity is found again from its row's issuer,
    claim name and value, so it needs no index of its own.
    """

    def __init__(
        self,
        *,
        max_entries: int,
        positive_ttl: float,
        negative_ttl: float,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._lru: LRUCache[MappingIdentity, Entry] = LRUCache(max_entries, clock)
        self._lru.on_remove = self._unindex
        self.positive_ttl = positive_ttl
        self.negative_ttl = negative_ttl
        # Every issuer an entry was ever stored under (the trusted issuers: a handful),
        # each held once; a global invalidation evicts the claim under each of them.
        self._issuers: dict[str, str] = {}
        self._by_key: dict[str, MappingIdentity | set[MappingIdentity]] = {}
        self._flights: dict[MappingIdentity, asyncio.Future[Entry]] = {}
        self.generation = 0

    @property
    def stats(self) -> CacheStats:
        """Hit, miss, eviction and invalidation counters."""
        return self._lru.stats

    def __len__(self) -> int:
        return len(self._lru)

    def get(self, identity: MappingIdentity) -> Entry | None:
        """Return the cached entry for a token's identity, or None."""
        return self._lru.get(identity)

    def put(self, identity: MappingIdentity, entry: Entry) -> None:
        """Cache ``entry`` with the TTL of its kind."""
        ttl = self.positive_ttl if isinstance(entry, Mapped) else self.negative_ttl
        self._issuers.setdefault(identity.issuer, identity.issuer)
        # Computed first: an entry is stored only if it can also be indexed (and evicted).
        key_fingerprint = entry.key.fingerprint if isinstance(entry, Mapped) else None
        self._lru.put(identity, self._compact(entry, key_fingerprint), ttl)
        if key_fingerprint is not None and identity in self._lru:
            held = self._by_key.get(key_fingerprint)
            if held is None or held == identity:
                self._by_key[key_fingerprint] = identity
            elif isinstance(held, set):
                held.add(identity)
            else:
                self._by_key[key_fingerprint] = {held, identity}

    def _compact(self, entry: Entry, key_fingerprint: str | None) -> Entry:
        """``entry`` holding the scope string and the ``KeyIdentity`` already cached, if equal."""
        if isinstance(entry, Unmapped):
            return entry
        scope = self._issuers.get(entry.scope, entry.scope)
        if isinstance(entry, Inactive):
            return entry if scope is entry.scope else Inactive(entry.mapping_id, scope)
        key = entry.key
        held = self._by_key.get(key_fingerprint) if key_fingerprint is not None else None
        if held is not None:
            other = self._lru.peek(next(iter(held)) if isinstance(held, set) else held)
            if isinstance(other, Mapped) and other.key == key:
                key = other.key
        if scope is entry.scope and key is entry.key:
            return entry
        return Mapped(entry.mapping_id, scope, key)

    async def get_or_load(
        self, identity: MappingIdentity, load: Callable[[], Awaitable[Entry]]
    ) -> Entry:
        """Return the cached entry, or run ``load`` once for all concurrent callers.

        The first caller runs the load in its own task (no task of its own: a
        cache miss is on the request path); later callers wait for its result. If
        that first caller is cancelled (a client that went away), a waiter takes
        the load over instead of failing with it.
        """
        while True:
            entry = self._lru.get(identity)
            if entry is not None:
                return entry
            flight = self._flights.get(identity)
            if flight is None:
                return await self._lead(identity, load)
            try:
                return await asyncio.shield(flight)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not flight.cancelled() or (task is not None and task.cancelling()):
                    raise  # this caller was cancelled, not the load it waited for

    async def _lead(self, identity: MappingIdentity, load: Callable[[], Awaitable[Entry]]) -> Entry:
        flight: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        self._flights[identity] = flight
        generation = self.generation
        self._lru.stats.loads += 1
        # Whatever the load or the put raises, every waiter is released with it.
        try:
            entry = await load()
            if generation == self.generation:
                self.put(identity, entry)
        except asyncio.CancelledError:
            flight.cancel()
            raise
        except BaseException as exc:
            flight.set_exception(exc)
            flight.exception()  # the waiters get it; nobody else has to see it
            raise
        finally:
            if self._flights.get(identity) is flight:
                del self._flights[identity]
        flight.set_result(entry)
        return entry

    def invalidate(self, issuer: str, claim_name: str, claim_value: str) -> int:
        """Evict what a change to this mapping row could affect; return the count.

        A global row (issuer ``""``) answers tokens from every issuer, so its
        change evicts the claim under every issuer.
        """
        self.generation += 1
        issuers = list(self._issuers) if issuer == "" else [issuer]
        removed = 0
        for iss in issuers:
            if self._lru.pop(MappingIdentity(iss, claim_name, claim_value)) is not None:
                removed += 1
        self._lru.stats.invalidations += removed
        return removed

    def invalidate_key(self, key_fingerprint: str) -> int:
        """Evict every entry that maps to the key with this fingerprint."""
        self.generation += 1
        held = self._by_key.get(key_fingerprint)
        identities = list(held) if isinstance(held, set) else [] if held is None else [held]
        removed = 0
        for identity in identities:
            if self._lru.pop(identity) is not None:
                removed += 1
        self._lru.stats.invalidations += removed
        return removed

    def clear(self) -> None:
        """Evict everything (used when the invalidation channel is lost)."""
        self.generation += 1
        count = len(self._lru)
        self._lru.clear()
        self._by_key.clear()
        self._lru.stats.invalidations += count

    def _unindex(self, identity: MappingIdentity, entry: Entry) -> None:
        if not isinstance(entry, Mapped):
            return
        fp = entry.key.fingerprint
        held = self._by_key.get(fp)
        if isinstance(held, set):
            held.discard(identity)
            if len(held) == 1:
                self._by_key[fp] = next(iter(held))
        elif held == identity:
            del self._by_key[fp]
