"""The answer memo: TTL, generation check, bound."""

from __future__ import annotations

from jwtkeymap.core.clock import ManualClock
from jwtkeymap.resolver.check import Answer
from jwtkeymap.resolver.memo import AnswerMemo

A = Answer(200, {"x-jwtkeymap-decision": "fallback"}, decision="fallback")
B = Answer(403, {}, decision="denied", reason="unregistered_client")


def test_recalled_within_ttl_and_same_generation_only():
    clock = ManualClock()
    memo = AnswerMemo(10, clock)
    memo.remember(b"t1", A, generation=5, ttl=1.0)
    assert memo.recall(b"t1", 5) is A
    assert memo.recall(b"t1", 6) is None  # an invalidation happened since
    assert len(memo) == 0  # and the stale entry is gone
    memo.remember(b"t1", A, generation=6, ttl=1.0)
    clock.advance(1.0)
    assert memo.recall(b"t1", 6) is None
    assert (memo.stats.hits, memo.stats.misses) == (1, 2)


def test_non_positive_ttl_stores_nothing():
    memo = AnswerMemo(10, ManualClock())
    memo.remember(b"t", A, generation=0, ttl=0)
    memo.remember(b"u", A, generation=0, ttl=-3)
    assert len(memo) == 0


def test_bounded_by_dropping_the_oldest():
    memo = AnswerMemo(2, ManualClock())
    memo.remember(b"a", A, 0, 1)
    memo.remember(b"b", B, 0, 1)
    memo.remember(b"b", B, 0, 1)  # a refresh does not evict
    assert memo.stats.evictions == 0
    memo.remember(b"c", A, 0, 1)
    assert memo.recall(b"a", 0) is None
    assert memo.recall(b"b", 0) is B
    assert memo.recall(b"c", 0) is A
    assert memo.stats.evictions == 1
    memo.clear()
    assert len(memo) == 0


def test_expired_entries_are_swept_out_within_a_second():
    # The memo holds about a second of traffic, not every client seen since the start.
    clock = ManualClock()
    memo = AnswerMemo(100, clock)
    for n in range(10):
        memo.remember(b"old%d" % n, A, 0, 0.5)
    clock.advance(0.6)
    memo.remember(b"live", B, 0, 1.0)
    assert len(memo) == 11  # no sweep before a second has passed
    clock.advance(0.4)
    memo.remember(b"new", A, 0, 1.0)
    assert len(memo) == 2
    assert memo.recall(b"live", 0) is B and memo.recall(b"new", 0) is A
    assert memo.stats.evictions == 0
