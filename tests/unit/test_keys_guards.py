"""The edges of a virtual key that `make mutate` found unpinned: its length, its
fingerprint as a KeyIdentity shows it, and the instant it expires."""

from __future__ import annotations

import datetime as dt

from jwtkeymap.core.keys import KeyIdentity, fingerprint, generate_key, hash_key

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def test_a_generated_key_is_the_prefix_and_43_url_safe_characters() -> None:
    # 32 random bytes: what LiteLLM's own keys carry; fewer would weaken them.
    key = generate_key()
    assert len(key) == len("sk-") + 43
    assert key[3:].replace("-", "").replace("_", "").isalnum()


def test_a_key_identity_shows_the_fingerprint_of_its_hash() -> None:
    h = hash_key("sk-x")
    assert KeyIdentity(token_hash=h).fingerprint == fingerprint(h)


def test_a_key_is_expired_from_its_expiry_instant_on() -> None:
    key = KeyIdentity(token_hash=hash_key("sk-x"), expires=NOW)
    assert not key.is_expired(NOW - dt.timedelta(microseconds=1))
    assert key.is_expired(NOW)
    assert key.is_expired(NOW + dt.timedelta(seconds=1))


def test_a_key_without_expiry_never_expires_and_is_not_blocked() -> None:
    key = KeyIdentity(token_hash=hash_key("sk-x"))
    assert not key.is_expired(dt.datetime.max.replace(tzinfo=dt.UTC))
    assert key.blocked is False
