"""The reconcile decision, as a pure function of what the database holds.

``plan`` sees the rows the declaring object owns, the row at the desired
identity (if any) and whether the key exists, and says what to write. It does
no I/O, so every ownership, adoption and conflict rule is tested without a
database (tests/unit/test_reconcile_plan.py); ``writer`` reads and applies.

The rules:

* A row owned by another declaration is a conflict: nothing is written, and the
  message does not name the holder (it may be another tenant's resource).
* An unowned or auto-registered row is a conflict without ``adopt``; with it, the
  row is taken over only when ``may_adopt`` (the policy) allows that kind of row,
  and is otherwise denied by policy. Nothing is written either way.
* A missing key is an error: nothing is written, the previous row stays.
* Our own row at the identity is updated when its content differs.
* An adoptable row at the identity is taken over when both allow it.
* When the identity moved, our old row is moved in place (one UPDATE, so there
  is never a moment without a mapping, and the trigger announces both
  identities).
* Any other row we own is stale and is deleted.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db.rows import MappingRow
from jwtkeymap.core.owners import AUTO_REGISTER_ACTOR, OwnerKind, parse_owner
from jwtkeymap.core.reconcile.desired import (
    Adoptable,
    DesiredMapping,
    ReconcileOutcome,
    ReconcileResult,
    spec_digest,
)

ADOPT_HINT = '; set the annotation jwtkeymap.io/adopt: "true" to take it over'


class Write(enum.Enum):
    """What happens to the row the plan keeps."""

    NONE = "none"
    INSERT = "insert"
    UPDATE = "update"


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """What to write for one desired mapping, and the result to report once written."""

    result: ReconcileResult
    write: Write = Write.NONE
    # The row that is updated and owned (None for an insert, which makes one).
    row_id: str | None = None
    take_ownership: bool = False
    drop: tuple[str, ...] = ()

    @property
    def statements(self) -> int:
        """How many mapping rows the plan writes (for the writes metric)."""
        return len(self.drop) + (self.write is not Write.NONE)

    @property
    def writes_nothing(self) -> bool:
        """Whether applying the plan leaves the database as it is (no row, no owner)."""
        return self.statements == 0 and not self.take_ownership


def adoptable(row: MappingRow) -> Adoptable | None:
    """Which kind of adoptable row this is; None when another declaration owns it."""
    parsed = parse_owner(row.owner) if row.owner is not None else None
    if row.owner is None:
        # Rows auto-registered before they were given an owner are still told apart.
        legacy = row.created_by == AUTO_REGISTER_ACTOR
        return Adoptable.AUTO_REGISTERED if legacy else Adoptable.UNOWNED
    if parsed is not None and parsed.kind is OwnerKind.AUTO_REGISTER:
        return Adoptable.AUTO_REGISTERED
    return None


def describe_holder(row: MappingRow) -> str:
    """Say who holds a row, for a message shown to another declaration: never its name."""
    kind = adoptable(row)
    if kind is Adoptable.AUTO_REGISTERED:
        return "an auto-registered mapping"
    if kind is Adoptable.UNOWNED:
        who = f" (created by {row.created_by})" if row.created_by else ""
        return f"a mapping created outside jwtkeymap{who}"
    parsed = parse_owner(row.owner or "")
    if parsed is not None and parsed.kind is OwnerKind.OFFLINE:
        return "an offline manifest"
    return "another JWTKeyMapping"


def row_digest(row: MappingRow) -> str:
    """The content digest of a live row (equal to its DesiredMapping's when in sync)."""
    return spec_digest(row.identity, row.token_hash, row.description, row.is_active)


@dataclasses.dataclass(frozen=True, slots=True)
class Settled:
    """One owner's row as a plain read found it: the row, whether its key exists, rows owned."""

    row: MappingRow
    key_exists: bool
    owned: int

    def holds(self, digest: str) -> bool:
        """Whether the database already holds the mapping of this digest (nothing to write)."""
        return self.key_exists and self.owned == 1 and row_digest(self.row) == digest


def differences(live: MappingRow, want: DesiredMapping) -> tuple[str, ...]:
    """Which parts of a live row differ from the desired mapping."""
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


def result(
    want: DesiredMapping,
    outcome: ReconcileOutcome,
    *,
    mapping_id: str | None = None,
    previous_identity: MappingIdentity | None = None,
    changes: tuple[str, ...] = (),
    conflict_owner: str | None = None,
    message: str = "",
) -> ReconcileResult:
    """A result about ``want``'s identity and key."""
    return ReconcileResult(
        outcome,
        identity=want.identity,
        mapping_id=mapping_id,
        key_fingerprint=want.key_fingerprint,
        previous_identity=previous_identity,
        changes=changes,
        conflict_owner=conflict_owner,
        message=message,
        ref=want.ref,
    )


def plan(
    owned: Sequence[MappingRow],
    at_identity: MappingRow | None,
    key_exists: bool,
    want: DesiredMapping,
) -> Plan:
    """Decide what to write so that the database holds ``want``."""
    target = at_identity
    if target is not None and target.owner != want.owner:
        refused = _refusal(target, want)
        if refused is not None:
            return Plan(refused)
    if not key_exists:
        message = f"virtual key {want.key_fingerprint} does not exist in LiteLLM_VerificationToken"
        return Plan(result(want, ReconcileOutcome.KEY_NOT_FOUND, message=message))

    if target is not None:
        stale = _stale(owned, keep=target.id)
        if target.owner == want.owner:
            if row_digest(target) == want.digest():
                unchanged = result(want, ReconcileOutcome.UNCHANGED, mapping_id=target.id)
                return Plan(unchanged, drop=stale)
            updated = result(
                want,
                ReconcileOutcome.UPDATED,
                mapping_id=target.id,
                changes=differences(target, want),
            )
            return Plan(updated, Write.UPDATE, target.id, take_ownership=True, drop=stale)
        # Adoptable, asked for and allowed: take it over, drop what we owned before.
        diff = differences(target, want)
        adopted = result(
            want,
            ReconcileOutcome.ADOPTED,
            mapping_id=target.id,
            changes=diff,
            message=f"adopted {describe_holder(target)}",
        )
        write = Write.UPDATE if diff else Write.NONE
        return Plan(adopted, write, target.id, take_ownership=True, drop=stale)

    # No row at the identity, so any row we own is elsewhere.
    mine = owned[0] if owned else None
    if mine is not None:
        # The identity moved: move our row in place.
        moved = result(
            want,
            ReconcileOutcome.UPDATED,
            mapping_id=mine.id,
            previous_identity=mine.identity,
            changes=differences(mine, want),
        )
        stale = _stale(owned, keep=mine.id)
        return Plan(moved, Write.UPDATE, mine.id, take_ownership=True, drop=stale)

    return Plan(result(want, ReconcileOutcome.CREATED), Write.INSERT, take_ownership=True)


def _refusal(target: MappingRow, want: DesiredMapping) -> ReconcileResult | None:
    """Why ``want`` may not take ``target`` (a row it does not own), or None if it may."""
    holder = describe_holder(target)
    taken = f"{want.identity.label()} is already mapped by {holder}"
    kind = adoptable(target)
    if kind is None:
        return result(want, ReconcileOutcome.CONFLICT, conflict_owner=holder, message=taken)
    if not want.adopt:
        message = taken + ADOPT_HINT
        return result(want, ReconcileOutcome.CONFLICT, conflict_owner=holder, message=message)
    if kind not in want.may_adopt:
        message = f"{taken}, and no policy lets this declaration adopt {kind.value} mappings"
        return result(want, ReconcileOutcome.POLICY_DENIED, conflict_owner=holder, message=message)
    return None


def _stale(owned: Sequence[MappingRow], *, keep: str) -> tuple[str, ...]:
    return tuple(row.id for row in owned if row.id != keep)
