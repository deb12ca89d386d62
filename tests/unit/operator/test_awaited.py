"""Missing referenced Secrets: looked for with a backoff, and dropped after a resync's time."""

from __future__ import annotations

from jwtkeymap.core.clock import ManualClock
from jwtkeymap.operator.awaited import AwaitedSecrets


def awaited(clock: ManualClock) -> AwaitedSecrets:
    return AwaitedSecrets(clock=clock, first_delay=1, max_delay=5)


def test_a_missing_secret_is_due_after_the_first_delay() -> None:
    clock = ManualClock()
    secrets = awaited(clock)
    secrets.add("ns", "key")
    assert secrets.due(max_age=60) == []
    clock.advance(1)
    assert secrets.due(max_age=60) == [("ns", "key")]


def test_the_delay_doubles_up_to_the_cap() -> None:
    clock = ManualClock()
    secrets = awaited(clock)
    secrets.add("ns", "key")
    waited = []
    for _ in range(5):
        secrets.later("ns", "key")
        start = clock.monotonic()
        while not secrets.due(max_age=600):
            clock.advance(0.5)
        waited.append(clock.monotonic() - start)
    assert waited == [2, 4, 5, 5, 5]


def test_adding_again_keeps_the_schedule_and_found_ones_leave() -> None:
    clock = ManualClock()
    secrets = awaited(clock)
    secrets.add("ns", "key")
    secrets.later("ns", "key")  # next look in 2 s
    clock.advance(1)
    secrets.add("ns", "key")  # a mapping read it again: not looked for sooner
    assert secrets.due(max_age=60) == []
    secrets.discard("ns", "key")
    assert ("ns", "key") not in secrets
    assert len(secrets) == 0


def test_an_old_wait_is_dropped_for_the_resync_to_renew() -> None:
    clock = ManualClock()
    secrets = awaited(clock)
    secrets.add("ns", "old")
    clock.advance(30)
    secrets.add("ns", "new")
    clock.advance(31)
    assert secrets.due(max_age=60) == [("ns", "new")]
    assert ("ns", "old") not in secrets
