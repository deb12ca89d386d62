"""What a declarative source wants (``DesiredMapping``) and what reconciling it did."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.keys import fingerprint


class ReconcileOutcome(enum.StrEnum):
    """What reconciling one desired mapping did (or, in a dry run, would do)."""

    CREATED = "created"
    UPDATED = "updated"
    ADOPTED = "adopted"
    UNCHANGED = "unchanged"
    CONFLICT = "conflict"
    POLICY_DENIED = "policy-denied"
    KEY_NOT_FOUND = "key-not-found"
    DELETED = "deleted"
    ABSENT = "absent"
    RETAINED = "retained"

    @property
    def wrote(self) -> bool:
        """Whether the mapping table changed (and so the bus was notified)."""
        return self in {
            ReconcileOutcome.CREATED,
            ReconcileOutcome.UPDATED,
            ReconcileOutcome.ADOPTED,
            ReconcileOutcome.DELETED,
        }

    @property
    def failed(self) -> bool:
        """Whether the desired state could not be reached."""
        return self in {
            ReconcileOutcome.CONFLICT,
            ReconcileOutcome.POLICY_DENIED,
            ReconcileOutcome.KEY_NOT_FOUND,
        }


class Adoptable(enum.StrEnum):
    """Rows a declaration may take over, when a policy allows it and the declaration asks."""

    UNOWNED = "unowned"  # made outside jwtkeymap: LiteLLM's API, psql, a retained row
    AUTO_REGISTERED = "auto-registered"  # made by the resolver for an unregistered client


ADOPT_ANYTHING: frozenset[Adoptable] = frozenset(Adoptable)


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
class DesiredMapping:
    """One mapping as a declarative source wants it, and who declares it.

    ``owner`` is a stable id of the declaring object (``k8s:<uid>``,
    ``offline:<namespace>/<name>``); ``ref`` is its human name, for its own
    messages and logs. ``adopt`` is the declaration's request to take over a row it
    does not own; ``may_adopt`` is what a policy lets it take over (nothing by default).
    """

    identity: MappingIdentity
    token_hash: str = dataclasses.field(repr=False)
    owner: str
    ref: str
    description: str | None = None
    active: bool = True
    adopt: bool = False
    may_adopt: frozenset[Adoptable] = frozenset()

    @property
    def key_fingerprint(self) -> str:
        """Short digest of the key hash, safe for logs and status."""
        return fingerprint(self.token_hash)

    def digest(self) -> str:
        """A digest of everything the mapping row should hold."""
        return spec_digest(self.identity, self.token_hash, self.description, self.active)


@dataclasses.dataclass(frozen=True, slots=True)
class ReconcileResult:
    """The answer of one reconcile: outcome, row, and what changed."""

    outcome: ReconcileOutcome
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
