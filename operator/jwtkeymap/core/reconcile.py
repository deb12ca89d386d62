"""Reconcile a desired mapping into the database: ownership, conflicts, no-op detection.

This is the one place that writes mappings on behalf of a declarative source.
The kopf operator and the offline ``jwtkeymap apply`` are two callers of it, so
both see the same conflicts, the same adoption rule and the same "nothing
changed" answer.

* Ownership lives in ``jwtkeymap_mapping_owner``: a manager only ever updates or
  deletes rows recorded as its own. A row with no owner was made by someone else
  (LiteLLM's API, psql, auto-registration) and is taken over only on request
  (``adopt``).
* Nothing changed means nothing written: the live row is compared with the
  desired one by one plain read (no transaction, no row lock) before anything
  that could fire the NOTIFY triggers, so a restart, a resync or a timer costs
  one query per mapping.
* A reconcile that cannot reach the desired state (conflict, missing key)
  writes nothing: the previous row stays as it was, and the caller reports why.
* The invalidation bus is fed by the database triggers on every row change,
  inside the same transaction, so an identity change (old row moved to the new
  identity by one UPDATE) has no window without a mapping and announces both
  identities on commit.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final

import asyncpg
from prometheus_client import Counter

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.errors import MappingConflict, SchemaError
from jwtkeymap.core.keys import fingerprint
from jwtkeymap.core.owners import OwnerKind, parse_owner
from jwtkeymap.core.store import MAPPING_COLUMNS, MappingRow, Store, mapping_row

log = logging.getLogger(__name__)

OPERATOR_ACTOR: Final = "jwtkeymap:operator"

RECONCILES = Counter(
    "jwtkeymap_reconciles", "Reconciles of desired mappings, by outcome.", ["outcome", "actor"]
)
OFFLINE_ACTOR: Final = "jwtkeymap:apply"


class Outcome(enum.StrEnum):
    """What reconciling one desired mapping did (or, in a dry run, would do)."""

    CREATED = "created"
    UPDATED = "updated"
    ADOPTED = "adopted"
    UNCHANGED = "unchanged"
    CONFLICT = "conflict"
    KEY_NOT_FOUND = "key-not-found"
    DELETED = "deleted"
    ABSENT = "absent"
    RETAINED = "retained"

    @property
    def wrote(self) -> bool:
        """Whether the mapping table changed (and so the bus was notified)."""
        return self in {Outcome.CREATED, Outcome.UPDATED, Outcome.ADOPTED, Outcome.DELETED}

    @property
    def failed(self) -> bool:
        """Whether the desired state could not be reached."""
        return self in {Outcome.CONFLICT, Outcome.KEY_NOT_FOUND}


@dataclasses.dataclass(frozen=True, slots=True)
class DesiredMapping:
    """One mapping as a declarative source wants it, and who declares it.

    ``owner`` is a stable id of the declaring object (``k8s:<uid>``,
    ``offline:<namespace>/<name>``); ``ref`` is its human name, used in
    conflict messages shown to other owners.
    """

    identity: MappingIdentity
    token_hash: str = dataclasses.field(repr=False)
    owner: str
    ref: str
    description: str | None = None
    active: bool = True
    adopt: bool = False

    @property
    def key_fingerprint(self) -> str:
        """Short digest of the key hash, safe for logs and status."""
        return fingerprint(self.token_hash)

    def digest(self) -> str:
        """A digest of everything the mapping row should hold."""
        return spec_digest(self.identity, self.token_hash, self.description, self.active)


def spec_digest(
    identity: MappingIdentity, token_hash: str, description: str | None, active: bool
) -> str:
    """Digest of a mapping's content, equal for a desired mapping and its live row."""
    payload = json.dumps(
        [
            identity.issuer,
            identity.claim_name,
            identity.claim_value,
            token_hash,
            description,
            active,
        ],
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


@dataclasses.dataclass(frozen=True, slots=True)
class ReconcileResult:
    """The answer of one reconcile: outcome, row, and what changed."""

    outcome: Outcome
    identity: MappingIdentity | None
    mapping_id: str | None = None
    key_fingerprint: str | None = None
    previous_identity: MappingIdentity | None = None
    changes: tuple[str, ...] = ()
    conflict_owner: str | None = None
    message: str = ""
    ref: str = ""

    @property
    def touched_identities(self) -> tuple[MappingIdentity, ...]:
        """Identities whose caches must be evicted (empty when nothing was written)."""
        if not self.outcome.wrote:
            return ()
        found = [i for i in (self.previous_identity, self.identity) if i is not None]
        return tuple(dict.fromkeys(found))


Evictor = Callable[[Sequence[MappingIdentity]], Awaitable[None]]


class _DryRun(Exception):
    """Raised inside a transaction to roll back a dry run."""


def _digest(row: MappingRow) -> str:
    return spec_digest(row.identity, row.token_hash, row.description, row.is_active)


def _changes(live: MappingRow, want: DesiredMapping) -> tuple[str, ...]:
    changed = []
    if live.identity != want.identity:
        changed.append("identity")
    if live.token_hash != want.token_hash:
        changed.append("key")
    if live.description != want.description:
        changed.append("description")
    if live.is_active != want.active:
        changed.append("active")
    return tuple(changed)


def describe_owner(owner: str | None, ref: str | None, created_by: str | None) -> str:
    """Name whoever holds a row, for a conflict message."""
    if owner is None:
        who = f" (created by {created_by})" if created_by else ""
        return f"a mapping created outside jwtkeymap{who}"
    parsed = parse_owner(owner)
    if parsed is not None and parsed.kind is OwnerKind.K8S:
        return f"JWTKeyMapping {ref or owner}"
    if parsed is not None and parsed.kind is OwnerKind.OFFLINE:
        return f"offline manifest {ref or parsed.key}"
    return f"{ref or owner}"


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
        # For tests, benchmarks and metrics: reconciles run, and statements that changed a row.
        self.reconciles = 0
        self.writes = 0

    # -- apply -------------------------------------------------------------------------

    async def apply(self, want: DesiredMapping, *, dry_run: bool = False) -> ReconcileResult:
        """Make the database hold ``want``; with ``dry_run`` report what would happen.

        Raises DatabaseUnavailable (retry later) and SchemaError (the database
        cannot hold this mapping, e.g. an issuer on an issuer-less schema).
        """
        self.reconciles += 1
        try:
            result = await self._apply_once(want, dry_run=dry_run)
        except MappingConflict:
            # Another writer inserted the identity between our read and our write;
            # a second pass sees its row and reports the conflict properly.
            result = await self._apply_once(want, dry_run=dry_run)
        if not dry_run:
            RECONCILES.labels(outcome=result.outcome.value, actor=self._actor).inc()
            await self._after_commit(result)
        return result

    async def _apply_once(self, want: DesiredMapping, *, dry_run: bool) -> ReconcileResult:
        box: list[ReconcileResult] = []
        scoped = (await self._store.schema_info()).issuer_scoped
        if want.identity.issuer and not scoped:
            raise SchemaError(
                "this database has no jwt_issuer column: only mappings without an issuer "
                "are possible until LiteLLM's schema is upgraded"
            )
        writes = self.writes
        async with self._store.connection("reconcile mapping") as conn:
            unchanged = await _unchanged(conn, want, scoped=scoped)
            if unchanged is not None:
                return unchanged
            try:
                async with conn.transaction():
                    box.append(await self._plan_and_write(conn, want, scoped=scoped))
                    if dry_run:
                        raise _DryRun
            except _DryRun:
                self.writes = writes  # rolled back: nothing was written
        return box[0]

    async def _plan_and_write(
        self, conn: asyncpg.Connection, want: DesiredMapping, *, scoped: bool
    ) -> ReconcileResult:
        owned = await _fetch_live(conn, scoped, "o.owner = $1", [want.owner], lock=True)
        at_identity = await _fetch_live(
            conn, scoped, *_identity_where(want.identity, scoped), lock=True
        )
        target = at_identity[0] if at_identity else None
        mine = next((r for r in owned if target is None or r.id != target.id), None)
        if (
            target is not None
            and target.owner != want.owner
            and (target.owner is not None or not want.adopt)
        ):
            holder = describe_owner(target.owner, target.ref, target.created_by)
            hint = (
                ""
                if target.owner is not None
                else '; set the annotation jwtkeymap.io/adopt: "true" to take it over'
            )
            return _result(
                want,
                Outcome.CONFLICT,
                mapping_id=None,
                conflict_owner=holder,
                message=f"{want.identity.label()} is already mapped by {holder}{hint}",
            )

        if not await _key_exists(conn, want.token_hash):
            return _result(
                want,
                Outcome.KEY_NOT_FOUND,
                message=(
                    f"virtual key {want.key_fingerprint} does not exist in "
                    "LiteLLM_VerificationToken"
                ),
            )

        if target is not None and target.owner == want.owner:
            # Ours, at the right identity. Any other row we still own is stale.
            await self._drop_stale(conn, owned, keep=target.id)
            if _digest(target) == want.digest():
                return _result(want, Outcome.UNCHANGED, mapping_id=target.id)
            changes = _changes(target, want)
            await self._update_row(conn, target.id, want, scoped=scoped)
            await _set_owner(conn, target.id, want)
            return _result(want, Outcome.UPDATED, mapping_id=target.id, changes=changes)

        if target is not None:
            # Unowned row, adoption requested: take it over, drop what we owned before.
            await self._drop_stale(conn, owned, keep=target.id)
            changes = _changes(target, want)
            if changes:
                await self._update_row(conn, target.id, want, scoped=scoped)
            await _set_owner(conn, target.id, want)
            return _result(
                want,
                Outcome.ADOPTED,
                mapping_id=target.id,
                changes=changes,
                message=f"adopted {describe_owner(None, None, target.created_by)}",
            )

        if mine is not None:
            # The identity moved: move our row in place (one UPDATE, both identities
            # notified by the trigger), so there is never a moment without a mapping.
            await self._drop_stale(conn, owned, keep=mine.id)
            changes = _changes(mine, want)
            await self._update_row(conn, mine.id, want, scoped=scoped)
            await _set_owner(conn, mine.id, want)
            return _result(
                want,
                Outcome.UPDATED,
                mapping_id=mine.id,
                previous_identity=mine.identity,
                changes=changes,
            )

        mapping_id = await self._insert_row(conn, want)
        await _set_owner(conn, mapping_id, want)
        return _result(want, Outcome.CREATED, mapping_id=mapping_id)

    # -- delete ------------------------------------------------------------------------

    async def delete(self, owner: str, *, retain: bool = False, ref: str = "") -> ReconcileResult:
        """Remove the rows ``owner`` holds (a row already gone is success).

        With ``retain`` the rows stay and only the ownership is released, so a
        later declaration can adopt them explicitly.
        """
        scoped = (await self._store.schema_info()).issuer_scoped
        async with self._store.connection("delete mapping") as conn, conn.transaction():
            owned = await _fetch_live(conn, scoped, "o.owner = $1", [owner], lock=True)
            if retain:
                await conn.execute("DELETE FROM jwtkeymap_mapping_owner WHERE owner = $1", owner)
            else:
                for row in owned:
                    await self._delete_row(conn, row.id)
        RECONCILES.labels(
            outcome=(Outcome.RETAINED if retain else Outcome.DELETED) if owned else Outcome.ABSENT,
            actor=self._actor,
        ).inc()
        if not owned:
            return ReconcileResult(Outcome.ABSENT, identity=None, ref=ref)
        first = owned[0]
        result = ReconcileResult(
            Outcome.RETAINED if retain else Outcome.DELETED,
            identity=first.identity,
            mapping_id=first.id,
            key_fingerprint=fingerprint(first.token_hash),
            ref=ref,
        )
        if not retain:
            await self._after_commit(result)
            for extra in owned[1:]:
                await self._after_commit(dataclasses.replace(result, identity=extra.identity))
        return result

    # -- listing and pruning -----------------------------------------------------------

    async def owned(self, prefix: str) -> dict[str, ReconcileResult]:
        """Every row owned by an id starting with ``prefix`` (as ABSENT results), by owner."""
        scoped = (await self._store.schema_info()).issuer_scoped
        async with self._store.connection("list owned mappings") as conn:
            rows = await _fetch_live(
                conn, scoped, "o.owner LIKE $1", [_like_prefix(prefix)], lock=False
            )
        return {
            r.owner: ReconcileResult(
                Outcome.ABSENT,
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
                results.append(dataclasses.replace(row, outcome=Outcome.DELETED))
            else:
                results.append(await self.delete(owner, ref=row.ref))
        return results

    # -- statements --------------------------------------------------------------------

    async def _insert_row(self, conn: asyncpg.Connection, want: DesiredMapping) -> str:
        mapping_id = await self._store.insert_mapping(
            conn,
            want.identity,
            want.token_hash,
            description=want.description,
            active=want.active,
            actor=self._actor,
        )
        assert mapping_id is not None  # no ON CONFLICT: a clash raises instead
        self.writes += 1
        return mapping_id

    async def _update_row(
        self, conn: asyncpg.Connection, mapping_id: str, want: DesiredMapping, *, scoped: bool
    ) -> None:
        sets = (
            "jwt_claim_name = $2, jwt_claim_value = $3, token = $4, description = $5, "
            "is_active = $6, updated_by = $7, updated_at = now()"
        )
        args: list[Any] = [
            mapping_id,
            want.identity.claim_name,
            want.identity.claim_value,
            want.token_hash,
            want.description,
            want.active,
            self._actor,
        ]
        if scoped:
            sets += ", jwt_issuer = $8"
            args.append(want.identity.issuer)
        await conn.execute(f'UPDATE "LiteLLM_JWTKeyMapping" SET {sets} WHERE id = $1', *args)
        self.writes += 1

    async def _delete_row(self, conn: asyncpg.Connection, mapping_id: str) -> None:
        await conn.execute('DELETE FROM "LiteLLM_JWTKeyMapping" WHERE id = $1', mapping_id)
        self.writes += 1

    async def _drop_stale(
        self, conn: asyncpg.Connection, owned: Sequence[MappingRow], *, keep: str
    ) -> None:
        """Delete every row this resource owns except ``keep``."""
        for stale in owned:
            if stale.id != keep:
                await self._delete_row(conn, stale.id)

    async def _after_commit(self, result: ReconcileResult) -> None:
        identities = result.touched_identities
        if not identities:
            return
        log.info(
            "mapping %s: %s",
            result.outcome.value,
            ", ".join(i.label() for i in identities),
            extra={"ref": result.ref, "key_fingerprint": result.key_fingerprint},
        )
        if self._evict is not None:
            await self._evict(identities)


def _result(want: DesiredMapping, outcome: Outcome, **details: Any) -> ReconcileResult:
    return ReconcileResult(
        outcome,
        identity=want.identity,
        key_fingerprint=want.key_fingerprint,
        ref=want.ref,
        **details,
    )


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _identity_where(identity: MappingIdentity, scoped: bool) -> tuple[str, list[str]]:
    where = "m.jwt_claim_name = $1 AND m.jwt_claim_value = $2"
    args = [identity.claim_name, identity.claim_value]
    if scoped:
        where += " AND m.jwt_issuer = $3"
        args.append(identity.issuer)
    return where, args


async def _fetch_live(
    conn: asyncpg.Connection, scoped: bool, where: str, args: Sequence[Any], *, lock: bool
) -> list[MappingRow]:
    issuer = "m.jwt_issuer" if scoped else "''"
    rows = await conn.fetch(
        f"SELECT {MAPPING_COLUMNS}, {issuer} AS jwt_issuer "
        'FROM "LiteLLM_JWTKeyMapping" m '
        "LEFT JOIN jwtkeymap_mapping_owner o ON o.mapping_id = m.id "
        f"WHERE {where} ORDER BY m.created_at, m.id" + (" FOR UPDATE OF m" if lock else ""),
        *args,
    )
    return [mapping_row(r) for r in rows]


async def _unchanged(
    conn: asyncpg.Connection, want: DesiredMapping, *, scoped: bool
) -> ReconcileResult | None:
    """The common case of a resync, in one plain read: no transaction, no row lock.

    Answers only "already exactly as desired, owned by us, key present, and no other
    row of ours"; anything else goes through the locked path. A change racing this
    read is another writer's event and gets reconciled on its own.
    """
    where, args = _identity_where(want.identity, scoped)
    owner_arg = f"${len(args) + 1}"
    issuer = "m.jwt_issuer" if scoped else "''"
    row = await conn.fetchrow(
        f"SELECT {MAPPING_COLUMNS}, {issuer} AS jwt_issuer, "
        'EXISTS (SELECT 1 FROM "LiteLLM_VerificationToken" k WHERE k.token = m.token) '
        "AS key_exists, "
        f"(SELECT count(*) FROM jwtkeymap_mapping_owner x WHERE x.owner = {owner_arg}) AS owned "
        'FROM "LiteLLM_JWTKeyMapping" m '
        f"JOIN jwtkeymap_mapping_owner o ON o.mapping_id = m.id AND o.owner = {owner_arg} "
        f"WHERE {where}",
        *args,
        want.owner,
    )
    if row is None or not row["key_exists"] or row["owned"] != 1:
        return None
    if _digest(mapping_row(row)) != want.digest():
        return None
    return _result(want, Outcome.UNCHANGED, mapping_id=row["id"])


async def _key_exists(conn: asyncpg.Connection, token_hash: str) -> bool:
    found = await conn.fetchval(
        'SELECT EXISTS (SELECT 1 FROM "LiteLLM_VerificationToken" WHERE token = $1)', token_hash
    )
    return bool(found)


async def _set_owner(conn: asyncpg.Connection, mapping_id: str, want: DesiredMapping) -> None:
    await conn.execute(
        "INSERT INTO jwtkeymap_mapping_owner (mapping_id, owner, ref, spec_digest, updated_at) "
        "VALUES ($1, $2, $3, $4, now()) ON CONFLICT (mapping_id) DO UPDATE SET "
        "owner = EXCLUDED.owner, ref = EXCLUDED.ref, spec_digest = EXCLUDED.spec_digest, "
        "updated_at = now()",
        mapping_id,
        want.owner,
        want.ref,
        want.digest(),
    )
