"""Level-based checks over every resource at once: one bulk read instead of one per resource.

* Resume: a restart (or a takeover) resumes every resource. The first resume reads
  every row the operator owns in one query; each resume then finds its own row in
  that read and writes nothing when it already holds what the resource wants, so a
  restart of N resources costs one query, not N. An entry is used once, and the
  read is dropped after ``ttl`` seconds: a row changed after the read is repaired by
  the drift check.
* Drift: one loop per operator (not a timer per resource). Every interval it reads
  the owned rows in one query and compares each known resource's last synced row
  (:class:`~jwtkeymap.operator.handlers.registry.MappingRegistry`) with it. A
  resource whose row is missing or differs, or which is not synced (a policy or a
  conflict may have changed since), gets the resync annotation; kopf then re-runs
  its reconcile, which repairs the row and says so with a ``DriftRepaired`` Event.
  A check that finds everything in order writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable

from jwtkeymap.core.errors import JwtKeyMapError
from jwtkeymap.core.owners import OwnerKind, owner_prefix
from jwtkeymap.core.reconcile.plan import Settled
from jwtkeymap.core.reconcile.writer import Reconciler
from jwtkeymap.operator.handlers.registry import Known, MappingRegistry
from jwtkeymap.operator.kube import Kube
from jwtkeymap.operator.resource import RESYNC_ANNOTATION

log = logging.getLogger(__name__)

K8S_PREFIX = owner_prefix(OwnerKind.K8S)


class Resync:
    """The shared bulk read for resumes, and the drift loop."""

    def __init__(
        self,
        reconciler: Reconciler,
        registry: MappingRegistry,
        kube: Kube,
        *,
        interval: float,
        ttl: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reconciler, self._registry, self._kube = reconciler, registry, kube
        self._interval, self._ttl, self._clock = interval, ttl, clock
        self._read: dict[str, Settled] = {}
        self._read_at: float | None = None
        self._reading = asyncio.Lock()
        self._loop: asyncio.Task[None] | None = None
        self.checks = 0  # drift checks completed (for tests)

    async def known(self, owner: str) -> Settled | None:
        """``owner``'s row from the resumes' bulk read (read now if there is none)."""
        async with self._reading:
            now = self._clock()
            if self._read_at is None or now - self._read_at > self._ttl:
                try:
                    self._read = await self._reconciler.settled_under(K8S_PREFIX)
                except JwtKeyMapError:
                    return None  # each resume reads its own row (and reports the outage)
                self._read_at = now
        return self._read.pop(owner, None)

    def start(self) -> None:
        """Start the drift loop."""
        if self._loop is None:
            self._loop = asyncio.create_task(self._run(), name="jwtkeymap drift check")

    async def stop(self) -> None:
        """Stop the drift loop."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check()
            except JwtKeyMapError as exc:
                log.warning("drift check skipped: %s", exc)

    async def check(self) -> int:
        """Compare every known resource with one read of the rows; mark those off; how many."""
        if not len(self._registry):
            return 0
        rows = await self._reconciler.settled_under(K8S_PREFIX)
        stale = [(uid, known) for uid, known in self._registry.entries() if _stale(known, rows)]
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        for _, known in stale:
            try:
                await self._kube.annotate_mapping(
                    known.namespace, known.name, {RESYNC_ANNOTATION: stamp}
                )
            except JwtKeyMapError as exc:
                log.warning("could not mark %s/%s for resync: %s", known.namespace, known.name, exc)
        self.checks += 1
        return len(stale)


def _stale(known: Known, rows: dict[str, Settled]) -> bool:
    """Whether ``known``'s row is not what its last sync wrote (or it is not synced)."""
    if known.digest is None:
        return known.retry
    found = rows.get(known.owner)
    return found is None or not found.holds(known.digest)
