"""Signed identity assertions: the resolver's decision as a short-lived JWS for the gateway.

The ``x-jwtkeymap-*`` identity headers mean something only to a gateway that can
tell they came from the resolver. An assertion says the same thing, signed: a
compact JWS (EdDSA for Ed25519 keys, ES256 for P-256) whose ``kid`` is the RFC
7638 thumbprint of the signing key, with the decision, the key hash, team, user
and organisation, and the identity's issuer and claim name. It never carries a
token or a plaintext key.

Signing costs tens of microseconds, more than a whole cache-hit check, so
``AssertionSigner`` signs one assertion per (decision, key, identity) and hands
the same one out until shortly before it expires. Verification (``verify``) is
here too, with no HTTP and no database, so the LiteLLM hook can import it alone.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.clock import SYSTEM_CLOCK, Clock
from jwtkeymap.core.errors import ConfigError, InvalidAssertion
from jwtkeymap.core.keys import KeyIdentity

HEADER: Final = "x-jwtkeymap-assertion"
DEFAULT_ISSUER: Final = "jwtkeymap"
DEFAULT_AUDIENCE: Final = "litellm"
DEFAULT_TTL_SECONDS: Final = 30
MAX_TTL_SECONDS: Final = 300
# The decisions an assertion can carry (the values of x-jwtkeymap-decision), and
# those that name a key.
DECISIONS: Final = frozenset({"mapped", "auto_registered", "fallback", "admin"})
KEYED_DECISIONS: Final = frozenset({"mapped", "auto_registered"})

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey

_PEM_BLOCK: Final = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)
_HASH: Final = re.compile(r"^[0-9a-f]{64}$")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def public_jwk(key: PublicKey) -> dict[str, str]:
    """The members of ``key``'s JWK that RFC 7638 hashes (no ``kid``, no ``alg``)."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}
    if isinstance(key.curve, ec.SECP256R1):
        numbers = key.public_numbers()
        return {
            "crv": "P-256",
            "kty": "EC",
            "x": _b64url(numbers.x.to_bytes(32, "big")),
            "y": _b64url(numbers.y.to_bytes(32, "big")),
        }
    raise ConfigError(f"unsupported curve {key.curve.name}: use Ed25519 or P-256")


def thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of a JWK's required members."""
    required = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("crv", "kty", "x")
    canonical = json.dumps({m: jwk[m] for m in required}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode()).digest())


@dataclasses.dataclass(frozen=True, slots=True)
class SigningKey:
    """A private key that signs assertions, with its ``kid`` and public JWK."""

    private: PrivateKey = dataclasses.field(repr=False)
    kid: str
    algorithm: str
    jwk: Mapping[str, str]

    @classmethod
    def of(cls, private: PrivateKey) -> SigningKey:
        """Wrap a private key: ``kid`` is its public key's thumbprint."""
        jwk = public_jwk(private.public_key())
        kid = thumbprint(jwk)
        algorithm = "EdDSA" if jwk["kty"] == "OKP" else "ES256"
        return cls(private, kid, algorithm, {**jwk, "kid": kid, "alg": algorithm, "use": "sig"})

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh Ed25519 key (the ephemeral key of a sidecar with no key file)."""
        return cls.of(ed25519.Ed25519PrivateKey.generate())


def load_signing_keys(pem: bytes, *, source: str = "the key file") -> list[SigningKey]:
    """Every PKCS#8 private key of a PEM document, in order; ConfigError on anything else."""
    blocks = list(_PEM_BLOCK.finditer(pem))
    if not blocks:
        raise ConfigError(f"{source} holds no PEM private key")
    keys = []
    for block in blocks:
        if block.group(1) != b"PRIVATE KEY":
            raise ConfigError(
                f"{source}: a {block.group(1).decode()} block; assertion keys must be "
                "unencrypted PKCS#8 (BEGIN PRIVATE KEY), Ed25519 or EC P-256"
            )
        try:
            private = serialization.load_pem_private_key(block.group(0), password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{source}: unreadable private key ({exc})") from exc
        if not isinstance(private, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{source}: {type(private).__name__}; use Ed25519 or EC P-256")
        keys.append(SigningKey.of(private))
    return keys


def read_signing_keys(path: Path) -> list[SigningKey]:
    """``load_signing_keys`` of a file; ConfigError when it cannot be read."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read assertion.signing_key_file {path}: {exc}") from exc
    return load_signing_keys(pem, source=str(path))


def jwks(keys: Iterable[SigningKey]) -> dict[str, Any]:
    """The public JWK Set of ``keys`` (never a private member)."""
    return {"keys": [dict(k.jwk) for k in keys]}


@dataclasses.dataclass(frozen=True, slots=True)
class VerifyingKey:
    """A public key that may have signed an assertion."""

    kid: str
    algorithm: str
    key: PublicKey = dataclasses.field(repr=False)


def _verifying(key: PublicKey) -> VerifyingKey:
    jwk = public_jwk(key)
    return VerifyingKey(thumbprint(jwk), "EdDSA" if jwk["kty"] == "OKP" else "ES256", key)


def verifying_keys(document: str | bytes) -> dict[str, VerifyingKey]:
    """Public keys by ``kid``, from a JWK Set (JSON) or PEM public keys.

    A JWK's ``kid`` must be its RFC 7638 thumbprint, as the resolver publishes it;
    a PEM key gets its thumbprint. Raise ConfigError when nothing usable is found.
    """
    raw = document.encode() if isinstance(document, str) else document
    found: list[VerifyingKey] = []
    if raw.lstrip().startswith(b"{"):
        try:
            entries = json.loads(raw)["keys"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"not a JWK Set: {exc}") from exc
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("kty") not in ("OKP", "EC"):
                continue
            try:
                key = jwt.PyJWK(entry).key
            except jwt.PyJWTError:
                continue
            if isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
                verifying = _verifying(key)
                if entry.get("kid", verifying.kid) == verifying.kid:
                    found.append(verifying)
    else:
        for block in _PEM_BLOCK.finditer(raw):
            try:
                public = serialization.load_pem_public_key(block.group(0))
            except ValueError as exc:
                raise ConfigError(f"unreadable PEM public key: {exc}") from exc
            if isinstance(public, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
                found.append(_verifying(public))
    if not found:
        raise ConfigError("no Ed25519 or P-256 public key found")
    return {k.kid: k for k in found}


def _claims(
    decision: str, key: KeyIdentity | None, identity: MappingIdentity | None
) -> dict[str, Any]:
    claims: dict[str, Any] = {"decision": decision}
    if key is not None and decision in KEYED_DECISIONS:
        claims["key_hash"] = key.token_hash
        for name, value in (("team_id", key.team_id), ("user_id", key.user_id),
                            ("org_id", key.org_id)):  # fmt: skip
            if value is not None:
                claims[name] = value
    if identity is not None:
        claims["identity_issuer"] = identity.issuer
        claims["claim_name"] = identity.claim_name
    return claims


class AssertionSigner:
    """Signs assertions with the first key, and reuses each until shortly before it expires.

    An assertion is reused while more than a third of its lifetime is left, so a
    gateway always receives one that is valid for at least that long (10 s with
    the default 30 s), whatever the clocks' small skew and the answer memo's
    second.
    """

    def __init__(
        self,
        keys: Sequence[SigningKey],
        *,
        issuer: str = DEFAULT_ISSUER,
        audience: str = DEFAULT_AUDIENCE,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        clock: Clock = SYSTEM_CLOCK,
        max_entries: int = 100_000,
    ) -> None:
        if not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
            raise ConfigError(f"assertion.ttl_seconds must be within 1..{MAX_TTL_SECONDS}")
        self.issuer = issuer
        self.audience = audience
        self.ttl = ttl_seconds
        self._margin = max(1, math.ceil(ttl_seconds / 3))
        self._clock = clock
        self._max = max_entries
        self._issued: dict[tuple[object, ...], tuple[str, float]] = {}
        self._next_sweep = 0.0
        self.signed = 0
        self.replace_keys(keys)

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        """Every key: the first signs, all are published."""
        return self._keys

    @property
    def jwks_body(self) -> bytes:
        """The JWK Set as JSON bytes (computed once per key change)."""
        return self._jwks_body

    def replace_keys(self, keys: Sequence[SigningKey]) -> None:
        """Use new keys (a rotated key file); assertions are signed afresh from now on."""
        if not keys:
            raise ConfigError("assertions need at least one signing key")
        self._keys = tuple(keys)
        self._jwks_body = json.dumps(jwks(self._keys)).encode()
        self._issued.clear()

    def assertion(
        self, decision: str, key: KeyIdentity | None, identity: MappingIdentity | None
    ) -> str:
        """The assertion for a decision: a remembered one while fresh, else a new one."""
        cache_key = (decision, key, identity)
        now = self._clock.now().timestamp()
        issued = self._issued.get(cache_key)
        if issued is not None and now < issued[1]:
            return issued[0]
        token = self._sign(_claims(decision, key, identity), now)
        if now >= self._next_sweep:
            self._sweep(now)
        self._issued.pop(cache_key, None)  # re-inserted last: the order is that of the deadlines
        if len(self._issued) >= self._max:
            del self._issued[next(iter(self._issued))]
        self._issued[cache_key] = (token, math.floor(now) + self.ttl - self._margin)
        return token

    def _sweep(self, now: float) -> None:
        """Drop the assertions past reuse, once per margin: a client seen once is not kept
        for as long as the resolver runs (each assertion is hundreds of bytes)."""
        self._issued = {k: item for k, item in self._issued.items() if now < item[1]}
        self._next_sweep = now + self._margin

    def _sign(self, claims: dict[str, Any], now: float) -> str:
        signer = self._keys[0]
        issued_at = math.floor(now)
        payload = {
            "iss": self.issuer,
            "aud": self.audience,
            "iat": issued_at,
            "exp": issued_at + self.ttl,
            **claims,
        }
        self.signed += 1
        return jwt.encode(
            payload, signer.private, algorithm=signer.algorithm, headers={"kid": signer.kid}
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Assertion:
    """What a verified assertion says."""

    decision: str
    key_hash: str | None
    team_id: str | None
    user_id: str | None
    org_id: str | None
    identity_issuer: str | None
    claim_name: str | None
    expires_at: int


def unverified_kid(token: str) -> str:
    """The ``kid`` of an assertion's header (to pick or fetch its key); InvalidAssertion if none."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise InvalidAssertion("malformed", f"the assertion is not a compact JWS ({exc})") from exc
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidAssertion("malformed", "the assertion's header has no kid")
    return kid


def verify(
    token: str,
    keys: Mapping[str, VerifyingKey],
    *,
    audience: str,
    issuer: str | None,
    now: float,
    leeway: float = 5,
) -> Assertion:
    """Check an assertion's signature, audience, issuer and lifetime; return what it says.

    ``exp`` and ``iat`` are required. Raise InvalidAssertion naming the reason.
    """
    kid = unverified_kid(token)
    key = keys.get(kid)
    if key is None:
        raise InvalidAssertion("unknown_kid", "the assertion is signed by an unknown key")
    try:
        claims = jwt.decode(
            token,
            key.key,
            algorithms=[key.algorithm],
            audience=audience,
            issuer=issuer,
            # Lifetime is checked below against the injectable time.
            options={"require": ["exp", "iat", "aud", "iss"], "verify_exp": False,
                     "verify_iat": False, "verify_nbf": False},
        )  # fmt: skip
    except jwt.InvalidAudienceError as exc:
        raise InvalidAssertion("wrong_audience", "the assertion is for another audience") from exc
    except jwt.InvalidIssuerError as exc:
        raise InvalidAssertion("wrong_issuer", "the assertion is from another issuer") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise InvalidAssertion("malformed", f"the assertion has no {exc.claim} claim") from exc
    except jwt.InvalidSignatureError as exc:
        raise InvalidAssertion("bad_signature", "the assertion's signature is invalid") from exc
    except jwt.PyJWTError as exc:
        raise InvalidAssertion("malformed", f"the assertion is malformed ({exc})") from exc
    return _read(claims, now=now, leeway=leeway)


def _optional_str(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidAssertion("malformed", f"the assertion's {name} is not a string")
    return value


def _read(claims: Mapping[str, Any], *, now: float, leeway: float) -> Assertion:
    exp, iat = claims["exp"], claims["iat"]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (exp, iat)):
        raise InvalidAssertion("malformed", "the assertion's exp or iat is not a number")
    if exp <= now - leeway:
        raise InvalidAssertion("expired", "the assertion has expired")
    if iat > now + leeway or exp - iat > MAX_TTL_SECONDS:
        raise InvalidAssertion("malformed", "the assertion's lifetime is implausible")
    decision = claims.get("decision")
    if decision not in DECISIONS:
        raise InvalidAssertion("malformed", "the assertion has no known decision")
    key_hash = _optional_str(claims, "key_hash")
    if decision in KEYED_DECISIONS:
        if key_hash is None or not _HASH.match(key_hash):
            raise InvalidAssertion("malformed", f"a {decision} assertion needs a key_hash")
    elif key_hash is not None:
        raise InvalidAssertion("malformed", f"a {decision} assertion names no key")
    return Assertion(
        decision=decision,
        key_hash=key_hash,
        team_id=_optional_str(claims, "team_id"),
        user_id=_optional_str(claims, "user_id"),
        org_id=_optional_str(claims, "org_id"),
        identity_issuer=_optional_str(claims, "identity_issuer"),
        claim_name=_optional_str(claims, "claim_name"),
        expires_at=int(exp),
    )
