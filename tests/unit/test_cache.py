"""The LRU/TTL cache and the mapping cache: collisions, issuers, TTLs, single flight."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jwtkeymap.core.cache import UNMAPPED, Inactive, LRUCache, Mapped, MappingCache
from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.clock import ManualClock
from jwtkeymap.core.keys import KeyIdentity, fingerprint
from support.loads import GatedLoad

KEY_A = KeyIdentity(token_hash="a" * 64, team_id="ta")
KEY_B = KeyIdentity(token_hash="b" * 64, team_id="tb")


def mapped(key: KeyIdentity = KEY_A, scope: str = "") -> Mapped:
    return Mapped(mapping_id="m", scope=scope, key=key)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def cache(clock: ManualClock) -> MappingCache:
    return MappingCache(max_entries=100, positive_ttl=300, negative_ttl=30, clock=clock)


def test_lru_evicts_least_recently_used(clock: ManualClock) -> None:
    lru: LRUCache[str, int] = LRUCache(2, clock)
    lru.put("a", 1, 10)
    lru.put("b", 2, 10)
    assert lru.get("a") == 1  # a is now the most recent
    lru.put("c", 3, 10)
    assert lru.get("b") is None
    assert lru.get("a") == 1 and lru.get("c") == 3
    assert lru.stats.evictions == 1


def test_lru_ttl_expiry_uses_the_clock(clock: ManualClock) -> None:
    lru: LRUCache[str, int] = LRUCache(10, clock)
    lru.put("a", 1, 10)
    clock.advance(9.9)
    assert lru.get("a") == 1
    clock.advance(0.2)
    assert lru.get("a") is None
    assert len(lru) == 0


def test_zero_ttl_stores_nothing(clock: ManualClock) -> None:
    lru: LRUCache[str, int] = LRUCache(10, clock)
    lru.put("a", 1, 0)
    assert lru.get("a") is None


def test_colon_laden_components_never_collide(cache: MappingCache) -> None:
    # LiteLLM's f"{name}:{value}" made these two one entry (W2).
    one = MappingIdentity("", "a", "b:c")
    two = MappingIdentity("", "a:b", "c")
    cache.put(one, mapped(KEY_A))
    cache.put(two, mapped(KEY_B))
    assert cache.get(one) == mapped(KEY_A)
    assert cache.get(two) == mapped(KEY_B)


def test_same_subject_from_two_issuers_has_two_entries(cache: MappingCache) -> None:
    a = MappingIdentity("https://a", "sub", "u1")
    b = MappingIdentity("https://b", "sub", "u1")
    cache.put(a, mapped(KEY_A))
    assert cache.get(b) is None
    cache.put(b, UNMAPPED)
    assert cache.get(a) == mapped(KEY_A) and cache.get(b) is UNMAPPED


def test_positive_and_negative_ttls_are_separate(cache: MappingCache, clock: ManualClock) -> None:
    hit = MappingIdentity("i", "sub", "hit")
    miss = MappingIdentity("i", "sub", "miss")
    off = MappingIdentity("i", "sub", "off")
    cache.put(hit, mapped())
    cache.put(miss, UNMAPPED)
    cache.put(off, Inactive("m", ""))
    clock.advance(31)
    assert cache.get(miss) is None and cache.get(off) is None
    assert cache.get(hit) is not None
    clock.advance(270)
    assert cache.get(hit) is None


def test_invalidate_scoped_row_evicts_only_its_issuer(cache: MappingCache) -> None:
    a = MappingIdentity("https://a", "sub", "u1")
    b = MappingIdentity("https://b", "sub", "u1")
    cache.put(a, mapped())
    cache.put(b, mapped())
    assert cache.invalidate("https://a", "sub", "u1") == 1
    assert cache.get(a) is None and cache.get(b) is not None


def test_invalidate_global_row_evicts_every_issuer(cache: MappingCache) -> None:
    ids = [MappingIdentity(i, "sub", "u1") for i in ("https://a", "https://b")]
    other = MappingIdentity("https://a", "sub", "u2")
    for ident in [*ids, other]:
        cache.put(ident, UNMAPPED)
    assert cache.invalidate("", "sub", "u1") == 2
    assert all(cache.get(i) is None for i in ids)
    assert cache.get(other) is UNMAPPED


def test_invalidate_key_evicts_entries_mapped_to_it(cache: MappingCache) -> None:
    x = MappingIdentity("i", "sub", "x")
    y = MappingIdentity("i", "sub", "y")
    cache.put(x, mapped(KEY_A))
    cache.put(y, mapped(KEY_B))
    assert cache.invalidate_key(fingerprint(KEY_A.token_hash)) == 1
    assert cache.get(x) is None and cache.get(y) is not None


def test_clear_empties_everything(cache: MappingCache) -> None:
    cache.put(MappingIdentity("i", "sub", "x"), mapped())
    cache.clear()
    assert len(cache) == 0
    assert cache.invalidate("", "sub", "x") == 0  # indices are gone too


async def test_single_flight_runs_one_load_for_concurrent_misses(cache: MappingCache) -> None:
    ident = MappingIdentity("i", "sub", "x")
    gate = asyncio.Event()
    calls = 0

    async def load() -> Mapped:
        nonlocal calls
        calls += 1
        await gate.wait()
        return mapped()

    tasks = [asyncio.create_task(cache.get_or_load(ident, load)) for _ in range(50)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert calls == 1
    assert all(r == mapped() for r in results)
    assert cache.get(ident) == mapped()


async def test_failed_flight_reaches_every_waiter_and_is_not_cached(cache: MappingCache) -> None:
    ident = MappingIdentity("i", "sub", "x")
    gate = asyncio.Event()

    async def load() -> Mapped:
        await gate.wait()
        raise RuntimeError("db down")

    tasks = [asyncio.create_task(cache.get_or_load(ident, load)) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert cache.get(ident) is None


async def test_cancelled_waiter_does_not_cancel_the_shared_load(cache: MappingCache) -> None:
    ident = MappingIdentity("i", "sub", "x")
    load = GatedLoad(mapped())
    first = asyncio.create_task(cache.get_or_load(ident, load))
    second = asyncio.create_task(cache.get_or_load(ident, load))
    await asyncio.sleep(0)
    second.cancel()
    await asyncio.sleep(0)
    load.gate.set()
    assert await first == mapped()
    with pytest.raises(asyncio.CancelledError):
        await second
    assert load.calls == 1
    assert cache.get(ident) == mapped()


async def test_cancelled_leader_hands_the_load_to_a_waiter(cache: MappingCache) -> None:
    ident = MappingIdentity("i", "sub", "x")
    load = GatedLoad(mapped())
    first = asyncio.create_task(cache.get_or_load(ident, load))
    waiters = [asyncio.create_task(cache.get_or_load(ident, load)) for _ in range(5)]
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    load.gate.set()
    assert await asyncio.gather(*waiters) == [mapped()] * 5
    with pytest.raises(asyncio.CancelledError):
        await first
    assert load.calls == 2  # the cancelled one, and one taken over by a waiter
    assert cache.get(ident) == mapped()


async def test_invalidation_during_a_load_prevents_caching_it(cache: MappingCache) -> None:
    ident = MappingIdentity("i", "sub", "x")
    gate = asyncio.Event()

    async def load() -> Mapped:
        await gate.wait()
        return mapped()

    task = asyncio.create_task(cache.get_or_load(ident, load))
    await asyncio.sleep(0)
    cache.invalidate("i", "sub", "x")  # the row changed while we were reading it
    gate.set()
    assert await task == mapped()
    assert cache.get(ident) is None


identities = st.builds(
    MappingIdentity,
    st.sampled_from(["", "https://a", "https://a:b", "a"]),
    st.text(min_size=1, max_size=6, alphabet="ab:\\."),
    st.text(min_size=1, max_size=6, alphabet="ab:\\."),
)


@given(st.lists(identities, min_size=1, max_size=30, unique=True))
def test_distinct_identities_never_share_an_entry(idents: list[MappingIdentity]) -> None:
    cache = MappingCache(max_entries=1000, positive_ttl=60, negative_ttl=60, clock=ManualClock())
    for n, ident in enumerate(idents):
        cache.put(ident, Mapped(mapping_id=str(n), scope="", key=KEY_A))
    for n, ident in enumerate(idents):
        entry = cache.get(ident)
        assert isinstance(entry, Mapped) and entry.mapping_id == str(n)


async def test_a_failing_put_releases_every_waiter_and_caches_nothing(cache: MappingCache) -> None:
    # A hash with no ASCII form cannot be indexed by fingerprint: put raises after the load.
    bad = mapped(KeyIdentity(token_hash="é" * 64))
    ident = MappingIdentity("i", "sub", "x")
    gate = asyncio.Event()

    async def load() -> Mapped:
        await gate.wait()
        return bad

    tasks = [asyncio.create_task(cache.get_or_load(ident, load)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert all(isinstance(r, Exception) for r in results), results
    assert cache.get(ident) is None
