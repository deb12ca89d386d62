"""Virtual keys: LiteLLM-compatible hashing, generation, fingerprints."""

from __future__ import annotations

import hashlib

from jwtkeymap.core.keys import KeyIdentity, fingerprint, generate_key, hash_key, is_key_hash


def test_hash_is_litellms_sha256_of_the_full_plaintext() -> None:
    assert hash_key("sk-1234") == hashlib.sha256(b"sk-1234").hexdigest()


def test_generated_keys_are_unique_prefixed_and_long() -> None:
    keys = {generate_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(k.startswith("sk-") and len(k) >= 40 for k in keys)


def test_hash_detection() -> None:
    assert is_key_hash(hash_key("sk-x"))
    assert not is_key_hash("sk-x")
    assert not is_key_hash(hash_key("sk-x").upper())


def test_fingerprint_is_short_stable_and_not_a_prefix_of_the_hash() -> None:
    h = hash_key("sk-x")
    fp = fingerprint(h)
    assert fp == fingerprint(h) and len(fp) == 12
    assert fp not in h


def test_key_identity_repr_hides_the_hash() -> None:
    h = hash_key("sk-x")
    assert h not in repr(KeyIdentity(token_hash=h))
