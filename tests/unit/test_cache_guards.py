"""Cache guards `make mutate` found unpinned: invalidation after a partial eviction,
a leader and a waiter cancelled together, and the LRU's edges (exact deadlines, sizes)."""

from __future__ import annotations

import asyncio

import pytest

from jwtkeymap.core.cache import UNMAPPED, Inactive, LRUCache, Mapped, MappingCache
from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.clock import ManualClock
from jwtkeymap.core.keys import KeyIdentity
from support.loads import GatedLoad

KEY = KeyIdentity(token_hash="a" * 64)
OTHER_KEY = KeyIdentity(token_hash="b" * 64)
A = MappingIdentity("https://a", "sub", "u")
B = MappingIdentity("https://b", "sub", "u")


def mapped(key: KeyIdentity = KEY) -> Mapped:
    return Mapped(mapping_id="m", scope="", key=key)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def cache(clock: ManualClock) -> MappingCache:
    return MappingCache(max_entries=100, positive_ttl=300, negative_ttl=30, clock=clock)


def test_a_global_change_after_a_scoped_one_still_reaches_the_other_issuer(
    cache: MappingCache,
) -> None:
    cache.put(A, mapped())
    cache.put(B, mapped())
    assert cache.invalidate(A.issuer, "sub", "u") == 1
    # The revoked global row must not be served to B's tokens until the TTL ends.
    assert cache.invalidate("", "sub", "u") == 1
    assert cache.get(B) is None and len(cache) == 0


def test_a_blocked_key_after_a_partial_eviction_still_reaches_every_entry(
    cache: MappingCache,
) -> None:
    cache.put(A, mapped())
    cache.put(B, mapped())
    cache.invalidate(A.issuer, "sub", "u")
    assert cache.invalidate_key(KEY.fingerprint) == 1
    assert cache.get(B) is None


def test_an_entry_evicted_by_its_ttl_leaves_no_index_behind(
    cache: MappingCache, clock: ManualClock
) -> None:
    cache.put(A, mapped())
    clock.advance(300)
    assert cache.get(A) is None  # expired exactly at its TTL, and unindexed
    cache.put(B, mapped(OTHER_KEY))
    assert cache.invalidate("", "sub", "u") == 1
    assert cache.invalidate_key(KEY.fingerprint) == 0


def test_invalidation_of_a_claim_nobody_cached_evicts_nothing(cache: MappingCache) -> None:
    cache.put(A, mapped())
    before = cache.generation
    assert cache.invalidate(B.issuer, "sub", "u") == 0
    assert cache.invalidate("", "sub", "other") == 0
    assert cache.invalidate_key(OTHER_KEY.fingerprint) == 0
    assert cache.get(A) == mapped() and cache.generation == before + 3
    assert cache.stats.invalidations == 0


def test_invalidations_are_counted(cache: MappingCache) -> None:
    cache.put(A, mapped())
    cache.put(B, mapped())
    cache.put(MappingIdentity("", "sub", "v"), Inactive("m2", ""))
    assert cache.invalidate("", "sub", "u") == 2
    assert cache.stats.invalidations == 2
    cache.clear()
    assert cache.stats.invalidations == 3 and len(cache) == 0


def test_only_a_mapped_entry_is_indexed_by_key_and_only_a_kept_one_at_all(
    cache: MappingCache,
) -> None:
    cache.put(A, Inactive("m", ""))
    cache.put(B, UNMAPPED)
    assert cache.invalidate_key(KEY.fingerprint) == 0 and len(cache) == 2
    zero = MappingCache(max_entries=10, positive_ttl=0, negative_ttl=0)
    zero.put(A, mapped())
    assert len(zero) == 0 and zero.invalidate("", "sub", "u") == 0


def test_each_kind_gets_its_own_ttl(cache: MappingCache, clock: ManualClock) -> None:
    cache.put(A, mapped())
    cache.put(B, Inactive("m", ""))
    clock.advance(29.9)
    assert cache.get(B) == Inactive("m", "")
    clock.advance(0.1)
    assert cache.get(B) is None and cache.get(A) == mapped()


async def test_a_waiter_cancelled_with_its_leader_stays_cancelled(cache: MappingCache) -> None:
    load = GatedLoad(mapped())
    leader = asyncio.create_task(cache.get_or_load(A, load))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(cache.get_or_load(A, load))
    await asyncio.sleep(0)
    leader.cancel()
    waiter.cancel()
    load.gate.set()
    results = await asyncio.gather(leader, waiter, return_exceptions=True)
    assert [type(r) for r in results] == [asyncio.CancelledError] * 2
    assert load.calls == 1  # nobody took the load over
    assert cache.get(A) is None


async def test_a_load_that_fails_is_raised_to_its_leader(cache: MappingCache) -> None:
    async def broken() -> Mapped:
        raise RuntimeError("database down")

    with pytest.raises(RuntimeError, match="database down"):
        await cache.get_or_load(A, broken)
    assert cache.stats.loads == 1 and cache.get(A) is None
    ready = GatedLoad(mapped())
    ready.gate.set()
    assert (await cache.get_or_load(A, ready)) == mapped()


def test_lru_needs_room_for_one_entry(clock: ManualClock) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        LRUCache(0, clock)
    lru: LRUCache[str, int] = LRUCache(1, clock)
    lru.put("a", 1, 10)
    lru.put("b", 2, 10)
    assert lru.keys() == ["b"] and lru.stats.evictions == 1


def test_lru_entries_expire_exactly_at_their_deadline(clock: ManualClock) -> None:
    lru: LRUCache[str, int] = LRUCache(10, clock)
    lru.put("a", 1, 10)
    clock.advance(9.5)
    assert lru.get("a") == 1
    clock.advance(0.5)
    assert lru.get("a") is None and "a" not in lru
    assert (lru.stats.hits, lru.stats.misses) == (1, 1)


def test_lru_a_replaced_value_is_reported_removed_and_counts_once(clock: ManualClock) -> None:
    removed: list[tuple[str, int]] = []
    lru: LRUCache[str, int] = LRUCache(2, clock)
    lru.on_remove = lambda k, v: removed.append((k, v))
    lru.put("a", 1, 10)
    lru.put("a", 2, 10)
    assert removed == [("a", 1)] and len(lru) == 1 and lru.get("a") == 2
    assert lru.pop("a") == 2 and lru.pop("a") is None
    lru.put("b", 3, 10)
    lru.put("c", 4, -1)  # a negative TTL stores nothing
    lru.clear()
    assert removed == [("a", 1), ("a", 2), ("b", 3)] and len(lru) == 0


def test_lru_a_read_refreshes_recency(clock: ManualClock) -> None:
    lru: LRUCache[str, int] = LRUCache(2, clock)
    lru.put("a", 1, 10)
    lru.put("b", 2, 10)
    assert lru.get("a") == 1
    lru.put("c", 3, 10)
    assert lru.keys() == ["a", "c"]


def test_lru_counts_one_miss_per_absent_key_and_keeps_sub_second_ttls(
    clock: ManualClock,
) -> None:
    lru: LRUCache[str, int] = LRUCache(10, clock)
    assert lru.get("absent") is None and lru.stats.misses == 1
    lru.put("brief", 1, 0.5)
    assert lru.get("brief") == 1
    clock.advance(0.5)
    assert lru.get("brief") is None and lru.stats.misses == 2


def test_an_identity_remapped_to_another_key_leaves_the_old_key_behind(
    cache: MappingCache,
) -> None:
    cache.put(A, mapped(KEY))
    cache.invalidate(A.issuer, "sub", "u")
    cache.put(A, mapped(OTHER_KEY))
    # Blocking the old key must not evict the entry that no longer maps to it.
    assert cache.invalidate_key(KEY.fingerprint) == 0
    assert cache.get(A) == mapped(OTHER_KEY)


def test_the_indexes_stay_as_small_as_the_cache(clock: ManualClock) -> None:
    # Nothing public shows the indexes, but an index that kept the names of evicted
    # entries would grow without bound on a resolver seeing many distinct clients.
    small = MappingCache(max_entries=2, positive_ttl=300, negative_ttl=30, clock=clock)
    for n in range(50):
        key = KeyIdentity(token_hash=f"{n:064x}")
        small.put(MappingIdentity(f"https://{n % 3}", "sub", str(n)), Mapped("m", "", key))
    assert len(small) == 2
    # The key index holds exactly the live entries (a bare identity for a key one maps to);
    # issuers are held once each, whatever the number of entries seen.
    indexed = [ids if isinstance(ids, set) else {ids} for ids in small._by_key.values()]
    assert set().union(*indexed) == set(small._lru.keys())
    assert sum(len(ids) for ids in indexed) == 2
    assert sorted(small._issuers) == ["https://0", "https://1", "https://2"]


def test_entries_mapping_to_an_equal_key_share_one_key_identity(cache: MappingCache) -> None:
    # One KeyIdentity per key, not per client: the resolver caches one entry per client.
    a, b = MappingIdentity("https://i", "sub", "a"), MappingIdentity("https://i", "sub", "b")
    copy = KeyIdentity(token_hash="c" * 64, team_id="t")
    cache.put(a, Mapped("m1", "https://i", copy))
    cache.put(b, Mapped("m2", "".join(["https://", "i"]), KeyIdentity("c" * 64, team_id="t")))
    first, second = cache.get(a), cache.get(b)
    assert isinstance(first, Mapped) and isinstance(second, Mapped)
    assert second.key is first.key and second.scope is a.issuer
    assert (second.mapping_id, second.key) == ("m2", copy)
    # A key that differs in any field (here: blocked) is its own object.
    cache.put(b, Mapped("m2", "", KeyIdentity("c" * 64, team_id="t", blocked=True)))
    third = cache.get(b)
    assert isinstance(third, Mapped) and third.key.blocked and third.key is not first.key


def test_the_key_index_follows_one_entry_then_many_then_one(cache: MappingCache) -> None:
    a, b, c = (MappingIdentity("https://i", "sub", v) for v in "abc")
    for who in (a, b, c):
        cache.put(who, mapped(KEY))
    assert cache.invalidate("https://i", "sub", "a") == 1
    assert cache.invalidate("https://i", "sub", "b") == 1
    cache.put(b, mapped(OTHER_KEY))
    assert cache.invalidate_key(KEY.fingerprint) == 1  # c only: b maps elsewhere now
    assert cache.get(c) is None and cache.get(b) == mapped(OTHER_KEY)
    assert cache.invalidate_key(KEY.fingerprint) == 0
    assert cache.invalidate_key(OTHER_KEY.fingerprint) == 1 and len(cache) == 0


def test_a_global_row_evicts_the_claim_under_every_issuer_ever_cached(
    cache: MappingCache,
) -> None:
    issuers = [f"https://{n}" for n in range(3)]
    for iss in issuers:
        cache.put(MappingIdentity(iss, "sub", "u"), UNMAPPED)
    cache.put(MappingIdentity(issuers[0], "sub", "other"), UNMAPPED)
    assert cache.invalidate("https://elsewhere", "sub", "u") == 0
    assert cache.invalidate("", "sub", "u") == 3
    assert len(cache) == 1 and cache.invalidate("", "sub", "other") == 1


def test_cached_entries_hold_the_issuers_own_scope_string(cache: MappingCache) -> None:
    issuer = "https://i"
    a, b = MappingIdentity(issuer, "sub", "a"), MappingIdentity(issuer, "sub", "b")
    fresh = "".join(["https://", "i"])  # equal to the issuer, another object (as read from a row)
    cache.put(a, Mapped("m1", fresh, KeyIdentity("d" * 64)))
    cache.put(b, Inactive("m2", "".join(["https://", "i"])))
    first, second = cache.get(a), cache.get(b)
    assert (
        isinstance(first, Mapped) and first.scope is issuer and first.key == KeyIdentity("d" * 64)
    )
    assert isinstance(second, Inactive) and second.scope is issuer and second.mapping_id == "m2"
    # An entry that already holds the shared scope keeps it, and still gets the shared key.
    c = MappingIdentity(issuer, "sub", "c")
    cache.put(c, Mapped("m3", issuer, KeyIdentity("d" * 64)))
    third = cache.get(c)
    assert isinstance(third, Mapped) and third.key is first.key and third.scope is issuer


def test_only_mapped_entries_are_in_the_key_index(cache: MappingCache) -> None:
    cache.put(A, UNMAPPED)
    cache.put(MappingIdentity("https://a", "sub", "v"), Inactive("m", ""))
    cache.put(MappingIdentity("https://a", "sub", "w"), mapped(KEY))
    assert list(cache._by_key) == [KEY.fingerprint]


def test_a_key_left_with_one_entry_holds_it_bare_again(cache: MappingCache) -> None:
    a, b = MappingIdentity("https://i", "sub", "a"), MappingIdentity("https://i", "sub", "b")
    cache.put(a, mapped(KEY))
    assert cache._by_key == {KEY.fingerprint: a}
    cache.put(b, mapped(KEY))
    assert cache._by_key == {KEY.fingerprint: {a, b}}
    cache.invalidate("https://i", "sub", "a")
    assert cache._by_key == {KEY.fingerprint: b}
    cache.invalidate("https://i", "sub", "b")
    assert cache._by_key == {}
