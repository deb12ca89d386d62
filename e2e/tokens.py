"""Signing key and JWTs for the end-to-end run (uses PyJWT from the project's venv).

python e2e/tokens.py keygen DIR            # DIR/signing.pem, DIR/public.pem
python e2e/tokens.py sign DIR EMAIL [--bad-signature]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "https://idp.e2e.jwtkeymap.test"
AUDIENCE = "litellm"


def keygen(directory: Path) -> None:
    """Write a fresh RSA key pair."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "signing.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (directory / "public.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def sign(directory: Path, email: str, *, bad_signature: bool = False) -> str:
    """A token for ``email``, valid for ten minutes (signed by another key if asked)."""
    if bad_signature:
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key: object = other
    else:
        key = serialization.load_pem_private_key(
            (directory / "signing.pem").read_bytes(), password=None
        )
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": email,
        "email": email,
        "iat": now,
        "exp": now + 600,
    }
    return jwt.encode(claims, key, algorithm="RS256")  # type: ignore[arg-type]


def main(argv: list[str]) -> int:
    """Command line."""
    if len(argv) >= 2 and argv[0] == "keygen":
        keygen(Path(argv[1]))
        return 0
    if len(argv) >= 3 and argv[0] == "sign":
        print(sign(Path(argv[1]), argv[2], bad_signature="--bad-signature" in argv[3:]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
