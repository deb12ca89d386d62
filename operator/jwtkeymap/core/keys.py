"""Virtual keys: generation, hashing and fingerprints.

LiteLLM stores ``sha256(plaintext)`` as the key's primary key; that cannot change
without breaking compatibility. The hash itself is a credential (it is what the
gateway looks keys up by), so outside the resolver's identity headers only a
short fingerprint of it is ever shown.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
import secrets

KEY_PREFIX = "sk-"
_HASH_RE = re.compile(r"[0-9a-f]{64}")


def generate_key() -> str:
    """Return a new random plaintext virtual key (``sk-`` + 43 url-safe characters)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(plaintext: str) -> str:
    """Return LiteLLM's token hash of a plaintext key: sha256 hex over the full string."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def is_key_hash(value: str) -> bool:
    """Tell whether ``value`` looks like a token hash (64 lowercase hex characters)."""
    return _HASH_RE.fullmatch(value) is not None


def fingerprint(token_hash: str) -> str:
    """Return a short, non-reversible digest of a token hash, safe to show anywhere."""
    return hashlib.sha256(token_hash.encode("ascii")).hexdigest()[:12]


@dataclasses.dataclass(frozen=True, slots=True)
class KeyIdentity:
    """What a decision needs to know about a virtual key."""

    token_hash: str = dataclasses.field(repr=False)
    team_id: str | None = None
    user_id: str | None = None
    org_id: str | None = None
    blocked: bool = False
    expires: dt.datetime | None = None

    @property
    def fingerprint(self) -> str:
        """Short digest of the token hash for logs and listings."""
        return fingerprint(self.token_hash)

    def is_expired(self, now: dt.datetime) -> bool:
        """Tell whether the key has expired at ``now`` (timezone-aware)."""
        return self.expires is not None and self.expires <= now
