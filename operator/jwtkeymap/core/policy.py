"""The policy engine: from a verified token's claims to a decision.

Compared with LiteLLM's resolver this engine (a) evaluates the admin rule on
every request instead of caching an admin sentinel (W7), (b) treats an
inactive mapping as a denial, never as a reason to re-register (W6), (c) fails
closed with a retryable 503 when the database is unreachable (W12), and (d)
creates auto-registered keys and their mappings in one transaction (W9).
Each W-number is explained in docs/litellm-weaknesses.md.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Mapping
from typing import Any

import jwtkeymap.core.claims as claimlib
from jwtkeymap.core.cache import Entry, Inactive, Mapped, MappingCache, Unmapped
from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.clock import SYSTEM_CLOCK, Clock
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.core.db.store import RegistrationVanished, Store
from jwtkeymap.core.errors import ClaimError, DatabaseUnavailable, InvalidKeyHash, SchemaError
from jwtkeymap.core.keys import KeyIdentity
from jwtkeymap.core.settings import Behavior, Settings

log = logging.getLogger(__name__)


class Verdict(enum.StrEnum):
    """The kind of a decision."""

    MAPPED = "mapped"
    AUTO_REGISTERED = "auto_registered"
    FALLBACK = "fallback"
    ADMIN = "admin"
    DENIED = "denied"


class DenialReason(enum.StrEnum):
    """Machine-readable reasons of a denial."""

    INVALID_TOKEN = "invalid_token"
    CLAIM_MISSING = "claim_missing"
    CLAIM_INVALID = "claim_invalid"
    UNREGISTERED_CLIENT = "unregistered_client"
    MAPPING_INACTIVE = "mapping_inactive"
    KEY_BLOCKED = "key_blocked"
    KEY_EXPIRED = "key_expired"
    TEAM_REQUIRED = "team_required"
    DATABASE_REQUIRED = "database_required"
    DATABASE_UNAVAILABLE = "database_unavailable"
    REGISTRATION_CONFLICT = "registration_conflict"
    KEY_HASH_INVALID = "key_hash_invalid"


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one request. ``status`` is the HTTP status an edge should use."""

    outcome: Verdict
    status: int = 200
    reason: DenialReason | None = None
    message: str = ""
    key: KeyIdentity | None = None
    identity: MappingIdentity | None = None

    @property
    def allowed(self) -> bool:
        """Tell whether the request may proceed."""
        return self.outcome is not Verdict.DENIED

    @property
    def retryable(self) -> bool:
        """Tell whether the client should retry later (a transient failure)."""
        return self.status == 503

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary; the key appears only as a fingerprint."""
        out: dict[str, Any] = {"decision": self.outcome.value, "status": self.status}
        if self.reason is not None:
            out["reason"] = self.reason.value
        if self.message:
            out["message"] = self.message
        if self.identity is not None:
            out["identity"] = self.identity.to_json()
        if self.key is not None:
            out["key"] = {
                "fingerprint": self.key.fingerprint,
                "team_id": self.key.team_id,
                "user_id": self.key.user_id,
                "org_id": self.key.org_id,
            }
        return out


def denial(
    status: int, reason: DenialReason, message: str, identity: MappingIdentity | None = None
) -> Decision:
    """Build a denial."""
    return Decision(
        Verdict.DENIED, status, reason, f"JWT Key Mapping: {message}", identity=identity
    )


FALLBACK = Decision(Verdict.FALLBACK)


class _TeamRequired(Exception):
    """Auto-registration needs a team and the token names none."""


ADMIN = Decision(Verdict.ADMIN)


def claims_read(settings: Settings) -> frozenset[str]:
    """The top-level claims a decision can read: the mapping claim, the admin rule's and
    auto-registration's (a verified-token cache needs to keep no others)."""
    ar = settings.auto_register
    paths = (
        settings.claim_field,
        settings.admin.claim if settings.admin is not None else None,
        ar.team_id_claim,
        ar.user_id_claim,
        ar.org_id_claim,
    )
    return frozenset(claimlib.split_path(path)[0] for path in paths if path)


class PolicyEngine:
    """Resolve verified claims to a decision, with caching and auto-registration."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None,
        cache: MappingCache | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.cache = cache or MappingCache(
            max_entries=settings.cache_max_entries,
            positive_ttl=settings.positive_ttl_seconds,
            negative_ttl=settings.negative_ttl_seconds,
            clock=clock,
        )
        self.behavior = settings.unregistered_client_behavior
        self._suspended_at: float | None = None

    # -- cache coherence ---------------------------------------------------------------

    def suspend(self) -> None:
        """Mark the cache incoherent (invalidation channel lost).

        Without a grace period the cache is cleared at once and every request
        that needs the database gets a 503 until ``resume``. With
        ``stale_while_disconnected_seconds`` cached entries keep answering for
        that long; that is an explicit trade: a revocation made meanwhile is
        not seen until the grace ends.
        """
        if self._suspended_at is None:
            self._suspended_at = self.clock.monotonic()
        if self.settings.stale_while_disconnected_seconds <= 0:
            self.cache.clear()

    def resume(self) -> None:
        """Mark the cache coherent again (channel reconnected), starting from empty."""
        if self._suspended_at is not None:
            self.cache.clear()
        self._suspended_at = None

    @property
    def suspended(self) -> bool:
        """Tell whether the cache is currently incoherent."""
        return self._suspended_at is not None

    def _within_grace(self) -> bool:
        assert self._suspended_at is not None
        grace = self.settings.stale_while_disconnected_seconds
        if grace > 0 and self.clock.monotonic() - self._suspended_at < grace:
            return True
        if len(self.cache):
            self.cache.clear()
        return False

    # -- the decision ------------------------------------------------------------------

    def is_admin(self, token_claims: Mapping[str, Any]) -> bool:
        """Evaluate the admin rule; run on every request, never cached."""
        rule = self.settings.admin
        return rule is not None and claimlib.matches(
            token_claims, rule.claim, rule.value, rule.match
        )

    async def resolve(self, token_claims: Mapping[str, Any], issuer: str) -> Decision:
        """Decide what happens to a request carrying these verified claims."""
        if self.is_admin(token_claims):
            return ADMIN
        field = self.settings.claim_field
        try:
            identity = claimlib.identity_from_claims(
                token_claims, issuer=issuer, field=field, casefold=self.settings.casefold_claim
            )
        except ClaimError as exc:
            if exc.reason == "claim_missing" and self.behavior is Behavior.FALLBACK_TEAM_MAPPING:
                return FALLBACK
            return denial(403, DenialReason(exc.reason), f"{exc}. Access denied.")

        if self.store is None:
            return self._without_database(identity)

        if self._suspended_at is not None and not self._within_grace():
            return self._unavailable(identity, "the invalidation channel is disconnected")

        if self._suspended_at is not None:
            cached = self.cache.get(identity)
            if cached is None:
                return self._unavailable(identity, "the invalidation channel is disconnected")
            return self._decide(identity, cached, created=False)

        created = False

        async def load() -> Entry:
            nonlocal created
            assert self.store is not None
            entry = await self.store.lookup(identity)
            if isinstance(entry, Unmapped) and self.behavior is Behavior.AUTO_REGISTER:
                spec = self._new_key(identity, token_claims)
                if spec is None:
                    raise _TeamRequired  # not cached: a later token may carry the team
                entry, created = await self.store.register(identity, spec)
            return entry

        try:
            entry = await self.cache.get_or_load(identity, load)
        except _TeamRequired:
            return denial(
                403,
                DenialReason.TEAM_REQUIRED,
                f"claim '{self.settings.auto_register.team_id_claim}' is required to "
                "auto-register a key and no team_id_default is configured. Access denied.",
                identity,
            )
        except RegistrationVanished:
            return denial(
                503,
                DenialReason.REGISTRATION_CONFLICT,
                "auto-registration lost a race and the winning mapping was concurrently "
                "removed. Retry the request.",
                identity,
            )
        except DatabaseUnavailable as exc:
            return self._unavailable(identity, str(exc))
        except InvalidKeyHash as exc:
            # Never an allow: the row is damaged, and an operator has to repair it.
            log.error("mapping lookup failed: %s", exc)
            return denial(
                500,
                DenialReason.KEY_HASH_INVALID,
                "the mapped key's stored hash is malformed. Access denied.",
                identity,
            )
        except SchemaError as exc:
            log.error("mapping lookup failed: %s", exc)
            return self._unavailable(identity, "the database schema is not usable")
        return self._decide(identity, entry, created=created)

    def _decide(self, identity: MappingIdentity, entry: Entry, *, created: bool) -> Decision:
        if isinstance(entry, Mapped):
            key = entry.key
            if key.blocked:
                return denial(403, DenialReason.KEY_BLOCKED, "the mapped key is blocked.", identity)
            if key.is_expired(self.clock.now()):
                return denial(
                    403, DenialReason.KEY_EXPIRED, "the mapped key has expired.", identity
                )
            outcome = Verdict.AUTO_REGISTERED if created else Verdict.MAPPED
            return Decision(outcome, key=key, identity=identity)
        if isinstance(entry, Inactive):
            if self.behavior is Behavior.FALLBACK_TEAM_MAPPING:
                return FALLBACK
            return denial(
                403,
                DenialReason.MAPPING_INACTIVE,
                f"the mapping for {self._describe(identity)} is disabled. Access denied.",
                identity,
            )
        # Unmapped.
        if self.behavior is Behavior.FALLBACK_TEAM_MAPPING:
            return FALLBACK
        # Under auto_register an unmapped entry is never cached, so a cached one
        # (served during a grace period) predates a switch of behaviour: deny.
        return denial(
            403,
            DenialReason.UNREGISTERED_CLIENT,
            f"No registered mapping for {self._describe(identity)}. Access denied.",
            identity,
        )

    def _without_database(self, identity: MappingIdentity) -> Decision:
        if self.behavior is Behavior.FALLBACK_TEAM_MAPPING:
            return FALLBACK
        if self.behavior is Behavior.AUTO_REGISTER:
            return denial(
                500,
                DenialReason.DATABASE_REQUIRED,
                "auto_register requires a database. Configure database_url or change "
                "unregistered_client_behavior.",
                identity,
            )
        return denial(
            403,
            DenialReason.UNREGISTERED_CLIENT,
            f"No registered mapping for {self._describe(identity)}. Access denied.",
            identity,
        )

    def _unavailable(self, identity: MappingIdentity, detail: str) -> Decision:
        log.warning("denying with 503: %s", detail)
        return denial(
            503,
            DenialReason.DATABASE_UNAVAILABLE,
            "the mapping database is unavailable. Retry the request.",
            identity,
        )

    def _describe(self, identity: MappingIdentity) -> str:
        value = claimlib.sanitize_for_message(identity.claim_value)
        return f"{identity.claim_name}='{value}'"

    def _new_key(self, identity: MappingIdentity, token_claims: Mapping[str, Any]) -> NewKey | None:
        """The key an auto-registration creates, or None when the team rule refuses."""
        ar = self.settings.auto_register
        team_id = claimlib.optional_string(token_claims, ar.team_id_claim) or ar.team_id_default
        if ar.team_id_claim and team_id is None:
            return None
        defaults = ar.key_defaults
        alias = defaults.key_alias.format(
            claim_name=identity.claim_name,
            claim_value=identity.claim_value,
            issuer=identity.issuer,
        )
        return NewKey(
            team_id=team_id,
            user_id=claimlib.optional_string(token_claims, ar.user_id_claim),
            org_id=claimlib.optional_string(token_claims, ar.org_id_claim),
            alias=alias[:255],
            defaults=defaults,
            metadata={
                "auto_registered": True,
                "jwt_issuer": identity.issuer,
                "jwt_claim_field": identity.claim_name,
                "jwt_claim_value": identity.claim_value,
            },
        )
