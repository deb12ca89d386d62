"""Token verification: trusted issuers, JWKS key sets, and a verified-token cache.

A token is parsed once: the header and payload segments are decoded here to
pick the issuer and key, and ``jwt.decode`` then verifies the signature and the
registered claims. Verified tokens are cached by sha256(token) until the
earlier of their ``exp`` and the cache TTL, so the hot path costs a hash and a
dictionary lookup instead of an RSA verification. A verifier told which claims
its caller reads (``keep_claims``) keeps only those: a resolver caches one token
per client, and the registered claims it has already checked are most of a
payload's bytes. A cached token is bound to
the thumbprint of the key that verified it: once the issuer stops publishing
that key material (even behind the same ``kid``), the entry no longer answers.

A key set is only ever replaced by a JWKS that yields at least one usable key,
so one issuer's broken JWKS (``{"keys": []}``, ``null``, an outage) keeps its
previous keys, reports that issuer not loaded, and never touches the others.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, Final

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import get_default_algorithms

from jwtkeymap.core.cache import LRUCache
from jwtkeymap.core.clock import SYSTEM_CLOCK, Clock
from jwtkeymap.core.errors import ConfigError, IdentityProviderUnavailable, InvalidToken
from jwtkeymap.core.settings import IssuerSettings, Settings

log = logging.getLogger(__name__)

MAX_TOKEN_BYTES: Final = 16 * 1024
# Shorter RSA moduli can be factored by a determined attacker (NIST SP 800-131A).
MIN_RSA_BITS: Final = 2048
# The longest wait between retries of a key set whose last refresh failed.
MAX_RETRY_SECONDS: Final = 300.0
_ALGORITHMS: Final = get_default_algorithms()


@dataclasses.dataclass(frozen=True, slots=True)
class VerifiedToken:
    """The claims of a token whose signature and registered claims were checked.

    ``key_thumbprint`` names the key material that verified it (None when no key
    did, as for userinfo).
    """

    issuer: str
    claims: Mapping[str, Any]
    expires_at: float
    key_thumbprint: bytes | None = None


_ABSENT: Final = object()


class KeptClaims(Mapping[str, Any]):
    """The claims of a token that its reader needs, read-only.

    The names are one tuple shared by every token of a verifier; a token holds
    only its values. Half the size of a dict, which counts in a cache that holds
    a token per client.
    """

    __slots__ = ("_names", "_values")

    def __init__(self, names: tuple[str, ...], claims: Mapping[str, Any]) -> None:
        self._names = names
        self._values = tuple(claims.get(name, _ABSENT) for name in names)

    def __getitem__(self, name: str) -> Any:
        for known, value in zip(self._names, self._values, strict=True):
            if known == name and value is not _ABSENT:
                return value
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        pairs = zip(self._names, self._values, strict=True)
        return (name for name, value in pairs if value is not _ABSENT)

    def __len__(self) -> int:
        return sum(value is not _ABSENT for value in self._values)

    def __repr__(self) -> str:
        return f"KeptClaims({dict(self)!r})"


@dataclasses.dataclass(frozen=True, slots=True)
class PublicKey:
    """A verification key, the algorithm its JWK declares (if any), and its thumbprint."""

    key: Any
    alg: str | None
    thumbprint: bytes


def thumbprint(key: Any) -> bytes:
    """sha256 of the key's SubjectPublicKeyInfo: the same key material, the same bytes."""
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def _too_short(key: Any) -> bool:
    return isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS


def _b64json(segment: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw)
    # RecursionError: thousands of nested arrays exhaust the parser's stack.
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidToken(f"token {what} is not base64url-encoded JSON") from exc
    if not isinstance(value, dict):
        raise InvalidToken(f"token {what} is not a JSON object")
    return value


def parse_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a compact JWS into its header and payload, without trusting either."""
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidToken("token is too large")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise InvalidToken("token is not a JWT (expected three non-empty segments)")
    return _b64json(parts[0], "header"), _b64json(parts[1], "payload")


class KeySet:
    """Public keys of one issuer, by ``kid``: static PEMs or a JWKS URL refreshed on demand."""

    def __init__(
        self,
        issuer: IssuerSettings,
        *,
        session: aiohttp.ClientSession | None,
        min_refresh: float,
        max_age: float,
        clock: Clock,
    ) -> None:
        self._issuer = issuer
        self._session = session
        self._min_refresh = min_refresh
        self._max_age = max_age
        self._clock = clock
        self._keys: dict[str | None, PublicKey] = {}
        self._thumbprints: frozenset[bytes] = frozenset()
        self._fetched_at: float | None = None
        self._failures = 0
        self._lock = asyncio.Lock()
        self.refreshes = 0
        # Called when a refresh drops key material: tokens it verified must not stay cached.
        self.on_keys_removed: Callable[[], None] | None = None
        if issuer.public_keys:
            static: dict[str | None, PublicKey] = {
                str(i): _load_pem(pem, issuer.issuer) for i, pem in enumerate(issuer.public_keys)
            }
            self._replace(static)

    @property
    def loaded(self) -> bool:
        """Tell whether the key set holds at least one key."""
        return bool(self._keys)

    def holds(self, key_thumbprint: bytes | None) -> bool:
        """Tell whether this key material is still published (what a cached token needs)."""
        return key_thumbprint in self._thumbprints

    def retry_delay(self) -> float:
        """How long after a failed refresh the next retry is due: doubling, capped."""
        base = max(1.0, min(self._min_refresh, 10.0))
        delay: float = base * 2.0 ** max(self._failures - 1, 0)
        return min(delay, MAX_RETRY_SECONDS)

    def retry_due(self) -> bool:
        """Tell whether the last refresh failed and its backoff has passed."""
        if not self._failures or self._fetched_at is None:
            return False
        return self._clock.monotonic() - self._fetched_at >= self.retry_delay()

    async def refresh(self) -> None:
        """Fetch the JWKS now; keep the previous keys unless it yields a usable key."""
        if self._issuer.jwks_url is None:
            return
        if self._session is None:
            raise ConfigError("a JWKS issuer needs an HTTP session")
        self._fetched_at = self._clock.monotonic()
        self.refreshes += 1
        try:
            timeout = aiohttp.ClientTimeout(total=5)
            async with self._session.get(self._issuer.jwks_url, timeout=timeout) as resp:
                resp.raise_for_status()
                data = await resp.json(content_type=None)
            keys = _parse_jwks(data, self._issuer.issuer)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self._failures += 1
            log.warning(
                "JWKS refresh failed",
                extra={
                    "issuer": self._issuer.issuer,
                    "error": type(exc).__name__,
                    "retry_seconds": self.retry_delay(),
                },
            )
            return
        self._failures = 0
        self._replace(keys)

    def _replace(self, keys: dict[str | None, PublicKey]) -> None:
        previous = self._thumbprints
        self._keys = keys
        self._thumbprints = frozenset(k.thumbprint for k in keys.values())
        if previous - self._thumbprints and self.on_keys_removed is not None:
            self.on_keys_removed()

    async def candidates(self, kid: str | None) -> list[PublicKey]:
        """Return the keys that may have signed a token with this ``kid``.

        Static PEM keys carry no kid, so all of them are candidates. A JWKS is
        refetched when it is older than ``max_age``, or when ``kid`` is unknown
        and the last fetch is older than ``min_refresh`` (so a flood of tokens
        with made-up kids costs at most one fetch per interval). A key set that
        never loaded raises IdentityProviderUnavailable: a retryable outage.
        """
        if self._issuer.jwks_url is None:
            return list(self._keys.values())
        if self._needs_refresh(kid):
            async with self._lock:
                if self._needs_refresh(kid):
                    await self.refresh()
        if not self._keys:
            raise IdentityProviderUnavailable("the issuer's signing keys could not be loaded")
        key = self._lookup(kid)
        if key is None:
            raise InvalidToken("token signed with an unknown key")
        return [key]

    def _needs_refresh(self, kid: str | None) -> bool:
        if self._fetched_at is None:
            return True
        age = self._clock.monotonic() - self._fetched_at
        return age >= self._max_age or (self._lookup(kid) is None and age >= self._min_refresh)

    def _lookup(self, kid: str | None) -> PublicKey | None:
        if kid is not None:
            return self._keys.get(kid)
        if len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return None


def _parse_jwks(data: Any, issuer: str) -> dict[str | None, PublicKey]:
    """The usable signing keys of a JWKS document; ValueError when there is none.

    Keys that cannot verify here are skipped with a warning: encryption keys,
    unknown types, and RSA keys shorter than ``MIN_RSA_BITS``.
    """
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("the JWKS is not an object with a list of keys")
    keys: dict[str | None, PublicKey] = {}
    for item in data["keys"]:
        if not isinstance(item, dict) or item.get("use") not in (None, "sig"):
            continue
        try:
            jwk = jwt.PyJWK.from_dict(item)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError) as exc:
            log.warning("JWKS key skipped", extra={"issuer": issuer, "error": type(exc).__name__})
            continue
        if _too_short(jwk.key):
            log.warning(
                "JWKS key skipped", extra={"issuer": issuer, "error": f"RSA below {MIN_RSA_BITS}"}
            )
            continue
        if not _compatible_family(jwk.key):
            continue
        alg = item.get("alg")
        keys[jwk.key_id] = PublicKey(
            jwk.key, alg if isinstance(alg, str) else None, thumbprint(jwk.key)
        )
    if not keys:
        raise ValueError("the JWKS holds no usable signing key")
    return keys


def _compatible(alg: str, key: Any) -> bool:
    """Tell whether ``key`` can verify ``alg`` (a key never doubles as another family's)."""
    if alg.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey)
    if alg.startswith("ES"):
        return isinstance(key, ec.EllipticCurvePublicKey)
    return isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey))


def _compatible_family(key: Any) -> bool:
    # HMAC secrets (oct keys) load as bytes: a verifier of public keys never uses them.
    return isinstance(
        key,
        (
            rsa.RSAPublicKey,
            ec.EllipticCurvePublicKey,
            ed25519.Ed25519PublicKey,
            ed448.Ed448PublicKey,
        ),
    )


def _load_pem(pem: str, issuer: str) -> PublicKey:
    for name in ("RS256", "ES256", "EdDSA"):
        try:
            key = _ALGORITHMS[name].prepare_key(pem)
        except (jwt.InvalidKeyError, ValueError, TypeError):
            continue
        if _too_short(key):
            raise ConfigError(
                f"issuer {issuer}: an RSA public key is shorter than {MIN_RSA_BITS} bits"
            )
        return PublicKey(key, None, thumbprint(key))
    raise ConfigError(f"issuer {issuer}: public key is not a PEM RSA, EC or Ed25519 public key")


class TokenVerifier:
    """Verify bearer tokens against the configured trusted issuers."""

    def __init__(
        self,
        settings: Settings,
        *,
        session: aiohttp.ClientSession | None = None,
        clock: Clock = SYSTEM_CLOCK,
        keep_claims: Collection[str] | None = None,
    ) -> None:
        self._clock = clock
        # The top-level claims a verified token keeps (None: all of them).
        self._keep = tuple(sorted(keep_claims)) if keep_claims is not None else None
        self._issuers = {i.issuer: i for i in settings.issuers}
        self._keysets = {
            i.issuer: KeySet(
                i,
                session=session,
                min_refresh=settings.jwks_min_refresh_seconds,
                max_age=settings.jwks_max_age_seconds,
                clock=clock,
            )
            for i in settings.issuers
        }
        self._ttl = settings.token_cache_ttl_seconds
        self._cache: LRUCache[bytes, VerifiedToken] = LRUCache(
            settings.token_cache_max_entries, clock
        )
        for keyset in self._keysets.values():
            keyset.on_keys_removed = self._cache.clear

    @property
    def cache(self) -> LRUCache[bytes, VerifiedToken]:
        """The verified-token cache (for metrics)."""
        return self._cache

    @property
    def keysets(self) -> Mapping[str, KeySet]:
        """Key sets by issuer (for readiness and metrics)."""
        return self._keysets

    async def start(self) -> None:
        """Load every JWKS once, so the first requests need no fetch."""
        await asyncio.gather(*(ks.refresh() for ks in self._keysets.values()))

    async def verify(self, token: str) -> VerifiedToken:
        """Return the verified claims of ``token`` or raise InvalidToken."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        hit = self._cache.get(digest)
        now = self._clock.now().timestamp()
        if (
            hit is not None
            and hit.expires_at > now
            and self._keysets[hit.issuer].holds(hit.key_thumbprint)
        ):
            return hit
        header, payload = parse_unverified(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise InvalidToken("token algorithm is missing or 'none'")
        iss = payload.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise InvalidToken("token issuer is not trusted")
        if alg not in issuer.algorithms:
            raise InvalidToken(f"token algorithm {alg} is not allowed for this issuer")
        if issuer.typ is not None:
            typ = header.get("typ")
            if not isinstance(typ, str) or typ.lower() not in {t.lower() for t in issuer.typ}:
                raise InvalidToken("token typ is not one this issuer allows")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("token key id is not a string")
        # A JWK that declares its algorithm verifies that algorithm only (RFC 7517 4.4).
        keys = [
            k
            for k in await self._keysets[issuer.issuer].candidates(kid)
            if _compatible(alg, k.key) and k.alg in (None, alg)
        ]
        if not keys:
            raise InvalidToken(f"no {alg} key of this issuer matches the token")
        claims, used = self._decode(token, keys, alg, issuer)
        exp = claims["exp"]
        verified = VerifiedToken(
            issuer=issuer.issuer,
            claims=claims if self._keep is None else KeptClaims(self._keep, claims),
            expires_at=float(exp),
            key_thumbprint=used.thumbprint,
        )
        self._cache.put(digest, verified, min(self._ttl, float(exp) - now))
        return verified

    def _decode(
        self, token: str, keys: list[PublicKey], alg: str, issuer: IssuerSettings
    ) -> tuple[dict[str, Any], PublicKey]:
        error: Exception | None = None
        for key in keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key=key.key,
                    algorithms=[alg],
                    audience=issuer.audience,
                    issuer=issuer.issuer,
                    leeway=issuer.leeway_seconds,
                    options={
                        "require": ["exp", "iss"],
                        "verify_aud": issuer.audience is not None,
                    },
                )
                return claims, key
            except jwt.InvalidSignatureError as exc:
                error = exc
                continue
            except jwt.ExpiredSignatureError as exc:
                raise InvalidToken("token has expired") from exc
            except jwt.ImmatureSignatureError as exc:
                raise InvalidToken("token is not valid yet") from exc
            except jwt.InvalidAudienceError as exc:
                raise InvalidToken("token audience is not accepted") from exc
            except jwt.MissingRequiredClaimError as exc:
                raise InvalidToken(f"token lacks the required claim '{exc.claim}'") from exc
            except (jwt.InvalidTokenError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
                raise InvalidToken(f"token is invalid ({type(exc).__name__})") from exc
        raise InvalidToken("token signature is invalid") from error
