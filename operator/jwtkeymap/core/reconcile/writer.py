"""Apply reconcile plans: the one place that writes mappings for a declarative source.

* Ownership lives in ``jwtkeymap_mapping_owner``: a manager only ever updates or
  deletes rows recorded as its own. A row with no owner was made by someone else
  (LiteLLM's API, psql, auto-registration) and is taken over only on request
  (``adopt``).
* Nothing to write means nothing locked: one plain read (no transaction, no row
  lock) finds the owner's rows, the row at the identity and whether the key
  exists, and ``plan`` decides from it. An unchanged mapping, a conflict or a
  missing key cost that one statement, so a restart, a resync or a timer never
  queues behind a writer nor fires the NOTIFY triggers.
* A creation (that read found no row at all) is one more statement: the row and
  its owner inserted together. There is no row a lock could hold; the unique
  identity index and the key's foreign key catch a concurrent writer, and a
  clash is read again and reported as a conflict.
* Anything else is re-read under row locks, planned again, and applied in the
  same transaction. A plan that cannot reach the desired state (conflict,
  missing key) writes nothing.
* The invalidation triggers fire inside that transaction, so an identity change
  announces both identities on commit.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Final

import asyncpg
from prometheus_client import Counter

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db import mappings, schema
from jwtkeymap.core.db.store import Store
from jwtkeymap.core.errors import MappingConflict
from jwtkeymap.core.keys import fingerprint
from jwtkeymap.core.reconcile.desired import DesiredMapping, ReconcileOutcome, ReconcileResult
from jwtkeymap.core.reconcile.plan import Plan, Settled, Write, plan, result

log = logging.getLogger(__name__)

OPERATOR_ACTOR: Final = "jwtkeymap:operator"
OFFLINE_ACTOR: Final = "jwtkeymap:apply"

RECONCILES = Counter(
    "jwtkeymap_reconciles", "Reconciles of desired mappings, by outcome.", ["outcome", "actor"]
)
MAPPING_WRITES = Counter(
    "jwtkeymap_mapping_writes",
    "Mapping rows inserted, updated or deleted by reconciles (committed only).",
    ["actor"],
)

Evictor = Callable[[Sequence[MappingIdentity]], Awaitable[None]]


class _DryRun(Exception):
    """Raised inside a transaction to roll back a dry run."""


class Reconciler:
    """Drive mapping rows towards desired mappings, for one kind of manager."""

    def __init__(
        self,
        store: Store,
        *,
        actor: str = OPERATOR_ACTOR,
        evict: Evictor | None = None,
    ) -> None:
        self._store = store
        self._actor = actor
        self._evict = evict
        self.reconciles = 0

    @property
    def actor(self) -> str:
        """Who this reconciler writes as (``created_by``/``updated_by``, metric label)."""
        return self._actor

    # -- apply -------------------------------------------------------------------------

    async def apply(
        self, want: DesiredMapping, *, dry_run: bool = False, known: Settled | None = None
    ) -> ReconcileResult:
        """Make the database hold ``want``; with ``dry_run`` report what would happen.

        ``known`` is the owner's row from a bulk read (:meth:`settled_under`) made a
        moment ago: when it already holds ``want``, nothing is read again. Raises
        DatabaseUnavailable (retry later) and SchemaError (the database cannot hold
        this mapping, e.g. an issuer on an issuer-less schema).
        """
        self.reconciles += 1
        if known is not None and known.holds(want.digest()):
            RECONCILES.labels(outcome=ReconcileOutcome.UNCHANGED.value, actor=self._actor).inc()
            return result(want, ReconcileOutcome.UNCHANGED, mapping_id=known.row.id)
        try:
            outcome = await self._apply_once(want, dry_run=dry_run)
        except MappingConflict:
            # Another writer inserted the identity between our read and our write;
            # a second pass sees its row and reports the conflict properly.
            outcome = await self._apply_once(want, dry_run=dry_run)
        if not dry_run:
            RECONCILES.labels(outcome=outcome.outcome.value, actor=self._actor).inc()
            await self._after_commit(outcome)
        return outcome

    async def _apply_once(self, want: DesiredMapping, *, dry_run: bool) -> ReconcileResult:
        info = await self._store.schema_info()
        schema.require_scope(info, want.identity)
        scoped = info.issuer_scoped
        async with self._store.connection("reconcile mapping") as conn:
            seen = await self._decide(conn, want, scoped=scoped, lock=False)
            if seen.writes_nothing:
                return seen.result
            if seen.write is Write.INSERT and not dry_run:
                # No row exists, so none can be locked: the insert is its own transaction.
                decided = await self._write(conn, seen, want, scoped=scoped)
            else:
                try:
                    async with conn.transaction():
                        locked = await self._decide(conn, want, scoped=scoped, lock=True)
                        decided = await self._write(conn, locked, want, scoped=scoped)
                        if dry_run:
                            raise _DryRun
                except _DryRun:
                    return decided.result
        MAPPING_WRITES.labels(actor=self._actor).inc(decided.statements)
        return decided.result

    @staticmethod
    async def _decide(
        conn: asyncpg.Connection, want: DesiredMapping, *, scoped: bool, lock: bool
    ) -> Plan:
        """Read what ``want`` depends on in one statement (locked with ``lock``) and plan."""
        found = await mappings.find(
            conn, want.identity, want.owner, want.token_hash, scoped=scoped, lock=lock
        )
        return plan(found.owned, found.at_identity, found.key_exists, want)

    async def _write(
        self, conn: asyncpg.Connection, decided: Plan, want: DesiredMapping, *, scoped: bool
    ) -> Plan:
        """Apply ``decided`` on ``conn``: the row and its owner in one statement."""
        for stale in decided.drop:
            await mappings.delete(conn, stale)
        content = mappings.Content(want.identity, want.token_hash, want.description, want.active)
        owned = mappings.Ownership(want.owner, want.ref, want.digest())
        ownership = owned if decided.take_ownership else None
        if decided.write is Write.INSERT:
            row_id = await mappings.insert(
                conn, content, scoped=scoped, actor=self._actor, owned=ownership
            )
            return dataclasses.replace(
                decided, result=dataclasses.replace(decided.result, mapping_id=row_id)
            )
        row_id = decided.row_id
        if decided.write is Write.UPDATE:
            assert row_id is not None
            await mappings.update(
                conn, row_id, content, scoped=scoped, actor=self._actor, owned=ownership
            )
        elif decided.take_ownership:
            assert row_id is not None
            await mappings.set_owner(conn, row_id, owned)
        return decided

    # -- delete ------------------------------------------------------------------------

    async def delete(self, owner: str, *, retain: bool = False, ref: str = "") -> ReconcileResult:
        """Remove the rows ``owner`` holds (a row already gone is success).

        With ``retain`` the rows stay and only the ownership is released, so a
        later declaration can adopt them explicitly.
        """
        scoped = (await self._store.schema_info()).issuer_scoped
        async with self._store.connection("delete mapping") as conn:
            if retain:
                async with conn.transaction():
                    owned = await mappings.owned_by(conn, owner, scoped=scoped, lock=True)
                    await mappings.release(conn, owner)
            else:
                owned = await mappings.delete_owned(conn, owner, scoped=scoped)
        if not retain:
            MAPPING_WRITES.labels(actor=self._actor).inc(len(owned))
        gone = ReconcileOutcome.RETAINED if retain else ReconcileOutcome.DELETED
        RECONCILES.labels(
            outcome=gone if owned else ReconcileOutcome.ABSENT, actor=self._actor
        ).inc()
        if not owned:
            return ReconcileResult(ReconcileOutcome.ABSENT, identity=None, ref=ref)
        first = owned[0]
        deleted = ReconcileResult(
            gone,
            identity=first.identity,
            mapping_id=first.id,
            key_fingerprint=fingerprint(first.token_hash),
            ref=ref,
        )
        if not retain:
            await self._after_commit(deleted)
            for extra in owned[1:]:
                await self._after_commit(dataclasses.replace(deleted, identity=extra.identity))
        return deleted

    # -- listing and pruning -----------------------------------------------------------

    async def settled_under(self, prefix: str) -> dict[str, Settled]:
        """Every row owned under ``prefix`` as :meth:`apply` would check it, by owner; one read."""
        scoped = (await self._store.schema_info()).issuer_scoped
        async with self._store.connection("read owned mappings") as conn:
            found = await mappings.settled_under(conn, prefix, scoped=scoped)
        return {row.owner: Settled(row, exists, owned) for row, exists, owned in found if row.owner}

    async def owned(self, prefix: str) -> dict[str, ReconcileResult]:
        """Every row owned by an id starting with ``prefix`` (as ABSENT results), by owner."""
        scoped = (await self._store.schema_info()).issuer_scoped
        async with self._store.connection("list owned mappings") as conn:
            rows = await mappings.owned_under(conn, prefix, scoped=scoped)
        return {
            r.owner: ReconcileResult(
                ReconcileOutcome.ABSENT,
                identity=r.identity,
                mapping_id=r.id,
                key_fingerprint=fingerprint(r.token_hash),
                ref=r.ref or "",
            )
            for r in rows
            if r.owner is not None
        }

    async def prune(
        self, prefix: str, keep: Iterable[str], *, dry_run: bool = False
    ) -> list[ReconcileResult]:
        """Delete rows owned under ``prefix`` whose owner is not in ``keep``."""
        keep_set = set(keep)
        results = []
        for owner, row in sorted((await self.owned(prefix)).items()):
            if owner in keep_set:
                continue
            if dry_run:
                results.append(dataclasses.replace(row, outcome=ReconcileOutcome.DELETED))
            else:
                results.append(await self.delete(owner, ref=row.ref))
        return results

    async def _after_commit(self, done: ReconcileResult) -> None:
        identities = done.touched_identities
        if not identities:
            return
        log.info(
            "mapping %s: %s",
            done.outcome.value,
            ", ".join(i.label() for i in identities),
            extra={"ref": done.ref, "key_fingerprint": done.key_fingerprint},
        )
        if self._evict is not None:
            await self._evict(identities)
