"""Assertion signing keys on disk, as the resolver (key file) and LiteLLM's hook (JWKS) read them."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from jwtkeymap.core.assertion import SigningKey, load_signing_keys


def write_signing_keys(path: Path, *privates: ed25519.Ed25519PrivateKey) -> list[SigningKey]:
    """Write a PEM file of PKCS#8 keys (the first signs); return them as signing keys."""
    pem = b"".join(
        p.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        for p in privates
    )
    path.write_bytes(pem)
    return load_signing_keys(pem)
