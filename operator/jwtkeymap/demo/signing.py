"""A generated private key that signs JWTs for one issuer, and publishes its public half.

The demo signs its sample tokens with it; the tests and benchmarks sign theirs with it too.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm


class SigningKey:
    """A private key that signs JWTs for one issuer."""

    def __init__(self, issuer: str, *, kid: str = "test-key", alg: str = "RS256") -> None:
        self.issuer = issuer
        self.kid = kid
        self.alg = alg
        if alg.startswith("ES"):
            self._private: Any = ec.generate_private_key(ec.SECP256R1())
        else:
            self._private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    @property
    def public_pem(self) -> str:
        """The public key as PEM."""
        pem: bytes = self._private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem.decode()

    def jwk(self) -> dict[str, Any]:
        """The public key as a JWK with ``kid``, ``alg`` and ``use``."""
        algo = ECAlgorithm if self.alg.startswith("ES") else RSAAlgorithm
        data: dict[str, Any] = json.loads(algo.to_jwk(self._private.public_key()))
        data.update(kid=self.kid, alg=self.alg, use="sig")
        return data

    def sign(
        self,
        claims: dict[str, Any] | None = None,
        *,
        audience: str | None = "litellm",
        ttl: float = 3600,
        headers: dict[str, Any] | None = None,
        **extra: Any,
    ) -> str:
        """Sign ``claims`` (plus iss/aud/iat/exp unless given) into a compact JWT."""
        now = int(time.time())
        body: dict[str, Any] = {"iss": self.issuer, "iat": now, "exp": int(now + ttl)}
        if audience is not None:
            body["aud"] = audience
        body.update(claims or {})
        body.update(extra)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(
            body, self._private, algorithm=self.alg, headers={"kid": self.kid, **(headers or {})}
        )
