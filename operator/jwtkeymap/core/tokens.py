"""Token verification: trusted issuers, JWKS key sets, and a verified-token cache.

A token is parsed once: the header and payload segments are decoded here to
pick the issuer and key, and ``jwt.decode`` then verifies the signature and the
registered claims. Verified tokens are cached by sha256(token) until the
earlier of their ``exp`` and the cache TTL, so the hot path costs a hash and a
dictionary lookup instead of an RSA verification.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import get_default_algorithms

from jwtkeymap.core.cache import LRUCache
from jwtkeymap.core.clock import SYSTEM_CLOCK, Clock
from jwtkeymap.core.errors import ConfigError, InvalidToken
from jwtkeymap.core.settings import IssuerSettings, Settings

log = logging.getLogger(__name__)

MAX_TOKEN_BYTES: Final = 16 * 1024
_ALGORITHMS: Final = get_default_algorithms()


@dataclasses.dataclass(frozen=True, slots=True)
class VerifiedToken:
    """The claims of a token whose signature and registered claims were checked."""

    issuer: str
    claims: Mapping[str, Any]
    expires_at: float


def _b64json(segment: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
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
        self._keys: dict[str | None, Any] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()
        self.refreshes = 0
        # Called when a refresh drops a key: tokens it verified must not stay cached.
        self.on_keys_removed: Callable[[], None] | None = None
        if issuer.public_keys:
            for i, pem in enumerate(issuer.public_keys):
                self._keys[str(i)] = _load_pem(pem, issuer.issuer)

    @property
    def loaded(self) -> bool:
        """Tell whether the key set holds at least one key."""
        return bool(self._keys)

    async def refresh(self) -> None:
        """Fetch the JWKS now; keep the previous keys if the fetch fails."""
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
            keys: dict[str | None, Any] = {}
            for jwk in jwt.PyJWKSet.from_dict(data).keys:
                if jwk.public_key_use in (None, "sig"):
                    keys[jwk.key_id] = jwk.key
        except (aiohttp.ClientError, TimeoutError, ValueError, jwt.PyJWKError) as exc:
            log.warning(
                "JWKS refresh failed",
                extra={"issuer": self._issuer.issuer, "error": type(exc).__name__},
            )
            return
        # A kid whose key changed counts as removed too: IdPs may rotate under the same kid.
        removed = [kid for kid, key in self._keys.items() if keys.get(kid) != key]
        self._keys = keys
        if removed and self.on_keys_removed is not None:
            self.on_keys_removed()

    async def candidates(self, kid: str | None) -> list[Any]:
        """Return the keys that may have signed a token with this ``kid``.

        Static PEM keys carry no kid, so all of them are candidates. A JWKS is
        refetched when it is older than ``max_age``, or when ``kid`` is unknown
        and the last fetch is older than ``min_refresh`` (so a flood of tokens
        with made-up kids costs at most one fetch per interval).
        """
        if self._issuer.jwks_url is None:
            return list(self._keys.values())
        if self._needs_refresh(kid):
            async with self._lock:
                if self._needs_refresh(kid):
                    await self.refresh()
        key = self._lookup(kid)
        if key is None:
            raise InvalidToken("token signed with an unknown key")
        return [key]

    def _needs_refresh(self, kid: str | None) -> bool:
        if self._fetched_at is None:
            return True
        age = self._clock.monotonic() - self._fetched_at
        return age >= self._max_age or (self._lookup(kid) is None and age >= self._min_refresh)

    def _lookup(self, kid: str | None) -> Any:
        if kid is not None:
            return self._keys.get(kid)
        if len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return None


def _compatible(alg: str, key: Any) -> bool:
    """Tell whether ``key`` can verify ``alg`` (a key never doubles as another family's)."""
    if alg.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey)
    if alg.startswith("ES"):
        return isinstance(key, ec.EllipticCurvePublicKey)
    return isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey))


def _load_pem(pem: str, issuer: str) -> Any:
    for name in ("RS256", "ES256", "EdDSA"):
        try:
            return _ALGORITHMS[name].prepare_key(pem)
        except (jwt.InvalidKeyError, ValueError, TypeError):
            continue
    raise ConfigError(f"issuer {issuer}: public key is not a PEM RSA, EC or Ed25519 public key")


class TokenVerifier:
    """Verify bearer tokens against the configured trusted issuers."""

    def __init__(
        self,
        settings: Settings,
        *,
        session: aiohttp.ClientSession | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._clock = clock
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
        if hit is not None and hit.expires_at > now:
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
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("token key id is not a string")
        keys = [
            k for k in await self._keysets[issuer.issuer].candidates(kid) if _compatible(alg, k)
        ]
        if not keys:
            raise InvalidToken(f"no {alg} key of this issuer matches the token")
        claims = self._decode(token, keys, alg, issuer)
        exp = claims["exp"]
        verified = VerifiedToken(issuer=issuer.issuer, claims=claims, expires_at=float(exp))
        self._cache.put(digest, verified, min(self._ttl, float(exp) - now))
        return verified

    def _decode(
        self, token: str, keys: list[Any], alg: str, issuer: IssuerSettings
    ) -> dict[str, Any]:
        error: Exception | None = None
        for key in keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key=key,
                    algorithms=[alg],
                    audience=issuer.audience,
                    issuer=issuer.issuer,
                    leeway=issuer.leeway_seconds,
                    options={
                        "require": ["exp", "iss"],
                        "verify_aud": issuer.audience is not None,
                    },
                )
                return claims
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
