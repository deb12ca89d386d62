"""Referenced Secrets that do not exist yet, and when to look for each again.

The operator's Secret watch sees only Secrets labelled ``jwtkeymap.io/watched=true``,
and the operator labels a Secret when a mapping reads it. A Secret that is missing
when its mapping is reconciled cannot be labelled, so its creation (by a user, a
GitOps tool or an external-secrets controller, often after the mapping) would go
unseen until the next resync. Such Secrets are kept here and looked for again with
a backoff until they appear, or until ``max_age`` has passed: by then a resync has
read the mapping again, and a mapping still waiting puts its Secret back.
"""

from __future__ import annotations

import dataclasses
from typing import TypeAlias

from jwtkeymap.core.clock import Clock, SystemClock

# (namespace, Secret name)
SecretKey: TypeAlias = tuple[str, str]


@dataclasses.dataclass
class _Wait:
    since: float
    due: float
    tries: int = 0


class AwaitedSecrets:
    """Missing Secrets, each with the time it is next looked for (exponential backoff)."""

    def __init__(
        self, *, clock: Clock | None = None, first_delay: float = 1.0, max_delay: float = 30.0
    ) -> None:
        self._clock = clock or SystemClock()
        self._first = first_delay
        self._max = max_delay
        self._waits: dict[SecretKey, _Wait] = {}

    def __len__(self) -> int:
        return len(self._waits)

    def __contains__(self, key: object) -> bool:
        return key in self._waits

    def add(self, namespace: str, name: str) -> None:
        """Await a Secret found missing; one already awaited keeps its schedule."""
        now = self._clock.monotonic()
        self._waits.setdefault((namespace, name), _Wait(since=now, due=now + self._first))

    def discard(self, namespace: str, name: str) -> None:
        """Stop awaiting a Secret (it appeared)."""
        self._waits.pop((namespace, name), None)

    def due(self, *, max_age: float) -> list[SecretKey]:
        """The Secrets to look for now; those awaited longer than ``max_age`` are dropped."""
        now = self._clock.monotonic()
        for key in [k for k, w in self._waits.items() if now - w.since > max_age]:
            del self._waits[key]
        return [key for key, wait in self._waits.items() if wait.due <= now]

    def later(self, namespace: str, name: str) -> None:
        """Still missing: look again after twice the last delay, at most ``max_delay``."""
        wait = self._waits.get((namespace, name))
        if wait is None:
            return
        wait.tries += 1
        delay = min(self._first * 2**wait.tries, self._max)
        wait.due = self._clock.monotonic() + delay
