"""One small exception hierarchy for everything in ``core``.

The edges translate these: the resolver into HTTP statuses, the operator into
conditions and kopf retries, the CLI into exit codes. Nothing else does.
"""

from __future__ import annotations


class JwtKeyMapError(Exception):
    """Base class of every error raised by ``jwtkeymap.core``."""


class ConfigError(JwtKeyMapError):
    """The configuration is invalid; raised at startup, never per request."""


class InvalidToken(JwtKeyMapError):
    """The bearer token is missing, malformed, expired or badly signed."""


class ClaimError(JwtKeyMapError):
    """The identifying claim is unusable; ``reason`` is machine-readable."""

    reason = "claim_invalid"


class ClaimMissing(ClaimError):
    """The identifying claim is absent (or null) in the token."""

    reason = "claim_missing"


class ClaimInvalid(ClaimError):
    """The identifying claim has a type or shape that cannot name a client."""

    reason = "claim_invalid"


class DatabaseUnavailable(JwtKeyMapError):
    """The database cannot be reached right now; callers retry, never allow."""


class SchemaError(JwtKeyMapError):
    """The database schema is missing or incompatible with this version."""


class StoreError(JwtKeyMapError):
    """A database statement failed for a reason that is not an outage."""


class InvalidKeyHash(StoreError):
    """A stored key hash is not 64 lowercase hex: it cannot be sent, shown or trusted."""


class KeyNotFound(StoreError):
    """The referenced virtual key does not exist in ``LiteLLM_VerificationToken``."""


class MappingConflict(StoreError):
    """The (issuer, claim name, claim value) identity is already mapped elsewhere."""


class MappingNotFound(StoreError):
    """The referenced mapping does not exist."""


class IdentityProviderUnavailable(JwtKeyMapError):
    """The identity provider (userinfo endpoint) cannot answer right now; callers retry."""


class InvalidAssertion(JwtKeyMapError):
    """A signed identity assertion is malformed, badly signed, expired or not for us.

    ``reason`` is machine-readable (``malformed``, ``unknown_kid``, ``bad_signature``,
    ``expired``, ``wrong_audience``, ``wrong_issuer``, ``keys_unavailable``, ...).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
