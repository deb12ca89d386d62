"""Virtual keys held in Kubernetes Secrets: from a Secret's data to LiteLLM's key hash.

The plaintext is decoded, hashed and dropped at once; only the hash travels on,
and only its fingerprint is ever shown.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

from jwtkeymap.core.errors import JwtKeyMapError
from jwtkeymap.core.keys import hash_key


class SecretNotFound(JwtKeyMapError):
    """The referenced Secret does not exist."""


class SecretKeyMissing(JwtKeyMapError):
    """The Secret exists but lacks the referenced key, or its value is empty or unreadable."""


def decode_value(encoded: str) -> str:
    """Decode one value of a Secret's ``data``; raise ValueError unless it is base64 UTF-8 text."""
    # binascii.Error and UnicodeDecodeError are both ValueErrors.
    return base64.b64decode(encoded, validate=True).decode("utf-8")


def key_hash_from_data(
    data: Mapping[str, str] | None, *, secret: str, key: str, encoded: bool = True
) -> str:
    """Hash the virtual key stored under ``key``; ``data`` is base64 unless ``encoded`` is False.

    Surrounding whitespace is dropped: a key written with ``echo … | base64``
    carries a newline that the clients' copy of the key does not.
    """
    if data is None:
        raise SecretNotFound(f"Secret {secret} not found")
    if key not in data:
        raise SecretKeyMissing(f"Secret {secret} has no key {key!r}")
    raw = data[key]
    if encoded:
        try:
            raw = decode_value(raw)
        except ValueError:
            raise SecretKeyMissing(f"Secret {secret} key {key!r} is not UTF-8 text") from None
    plaintext = raw.strip()
    if not plaintext:
        raise SecretKeyMissing(f"Secret {secret} key {key!r} is empty")
    return hash_key(plaintext)
