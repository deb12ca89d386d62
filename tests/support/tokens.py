"""Tokens built to fail: hostile and hand-forged JWTs, and the JWKS a test IdP publishes."""

from __future__ import annotations

import json
import time
from typing import Any

from jwtkeymap.demo.signing import SigningKey


def jwks(*keys: SigningKey) -> dict[str, Any]:
    """A JWKS document holding the public keys."""
    return {"keys": [k.jwk() for k in keys]}


def b64url(obj: Any) -> str:
    """Base64url without padding, of bytes or of an object's JSON."""
    import base64

    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge(header: Any, payload: Any, signature: str = "c2ln") -> str:
    """A compact JWT with whatever header and payload, and a made-up signature."""
    return f"{b64url(header)}.{b64url(payload)}.{signature}"


def hostile_tokens(key: SigningKey, *, audience: str = "litellm") -> dict[str, str]:
    """Tokens that must never verify against ``key``'s issuer, by name.

    Each one is a known way to get past a careless verifier: algorithm confusion,
    registered claims that must be checked, structural damage, resource abuse.
    """
    import hashlib
    import hmac

    now = int(time.time())
    body = {"iss": key.issuer, "aud": audience, "sub": "a", "exp": now + 600, "iat": now}
    good = key.sign({"sub": "a"}, audience=audience)
    header, payload, signature = good.split(".")
    confused_header = b64url({"alg": "HS256", "typ": "JWT", "kid": key.kid})
    confused_mac = hmac.new(
        key.public_pem.encode(), f"{confused_header}.{payload}".encode(), hashlib.sha256
    ).digest()
    tampered = json.loads(_unb64(payload))
    tampered["sub"] = "mallory"
    return {
        "alg none": forge({"alg": "none", "typ": "JWT"}, body, ""),
        "alg none nonempty sig": forge({"alg": "none"}, body),
        "alg missing": forge({"typ": "JWT"}, body),
        "hs256 with public key as secret": f"{confused_header}.{payload}.{b64url(confused_mac)}",
        "expired": key.sign({"sub": "a"}, audience=audience, exp=now - 3600),
        "nbf in future": key.sign({"sub": "a"}, audience=audience, nbf=now + 3600),
        "wrong iss": SigningKey("https://evil.example", kid=key.kid).sign({"sub": "a"}),
        "trusted iss other key": SigningKey(key.issuer, kid=key.kid).sign({"sub": "a"}),
        "unknown kid": SigningKey(key.issuer, kid="not-published").sign({"sub": "a"}),
        "wrong aud": key.sign({"sub": "a"}, audience="someone-else"),
        "no aud": key.sign({"sub": "a"}, audience=None),
        "no exp": forge({"alg": key.alg, "kid": key.kid}, {"iss": key.issuer, "aud": audience}),
        "malformed base64": "!!!.@@@.###",
        # Cut one character past a whole base64 quantum of the signature: a length no base64
        # decoder accepts, whatever the signature's bits. (Half the token ended two or three
        # characters into a quantum, which decodes only when the last character's spare bits
        # are zero: one key in four, so a test of the guard refusing it failed at random.)
        "truncated": f"{header}.{payload}.{signature[: len(signature) // 8 * 4 + 1]}",
        "two dots only": "a.b",
        "four segments": good + ".extra",
        "three dots": "...",
        "header not object": f"{b64url([1, 2])}.{payload}.{signature}",
        "claims not object": f"{header}.{b64url('str')}.{signature}",
        "claims not json": f"{header}.{b64url(b'{nope')}.{signature}",
        "huge": key.sign({"sub": "a", "pad": "x" * 65536}, audience=audience),
        "tampered payload": f"{header}.{b64url(tampered)}.{signature}",
        "kid not string": forge({"alg": key.alg, "kid": 5}, body),
        "empty": "",
    }


def _unb64(part: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
