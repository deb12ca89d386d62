"""Opaque (non-JWT) access tokens: claims from the OIDC userinfo endpoint.

An opaque token can only be checked by asking the provider, so the answer is
cached by sha256(token) for ``oidc_userinfo_ttl_seconds`` (a revoked token
stays usable that long: keep the TTL short), and concurrent requests carrying
the same token share one call.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from jwtkeymap.core.cache import LRUCache
from jwtkeymap.core.clock import SYSTEM_CLOCK, Clock
from jwtkeymap.core.errors import IdentityProviderUnavailable, InvalidToken
from jwtkeymap.core.settings import Settings
from jwtkeymap.core.tokens import MAX_TOKEN_BYTES, VerifiedToken

log = logging.getLogger(__name__)


def default_issuer(url: str) -> str:
    """The issuer scope of userinfo identities when none is configured: the URL's origin."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class UserinfoClient:
    """Resolve opaque bearer tokens to claims through an OIDC userinfo endpoint."""

    def __init__(
        self,
        settings: Settings,
        *,
        session: aiohttp.ClientSession,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not settings.oidc_userinfo_url:
            raise ValueError("oidc_userinfo_url is not configured")
        self._url = settings.oidc_userinfo_url
        self.issuer = settings.oidc_userinfo_issuer or default_issuer(self._url)
        self._session = session
        self._clock = clock
        self._ttl = settings.oidc_userinfo_ttl_seconds
        self._timeout = aiohttp.ClientTimeout(total=settings.db_timeout_seconds)
        self._cache: LRUCache[bytes, VerifiedToken] = LRUCache(
            settings.token_cache_max_entries, clock
        )
        self._flights: dict[bytes, asyncio.Future[VerifiedToken]] = {}

    @property
    def cache(self) -> LRUCache[bytes, VerifiedToken]:
        """The userinfo cache (for metrics)."""
        return self._cache

    async def verify(self, token: str) -> VerifiedToken:
        """Return the claims the provider reports for ``token``; raise InvalidToken if refused."""
        if not token or len(token) > MAX_TOKEN_BYTES or not token.isascii():
            raise InvalidToken("token is malformed")
        digest = hashlib.sha256(token.encode("ascii")).digest()
        hit = self._cache.get(digest)
        if hit is not None:
            return hit
        flight = self._flights.get(digest)
        if flight is None:
            flight = asyncio.ensure_future(self._fetch(digest, token))
            flight.add_done_callback(_retrieve)
            self._flights[digest] = flight
        return await asyncio.shield(flight)

    async def _fetch(self, digest: bytes, token: str) -> VerifiedToken:
        try:
            claims = await self._call(token)
            expires_at = self._clock.now().timestamp() + self._ttl
            verified = VerifiedToken(issuer=self.issuer, claims=claims, expires_at=expires_at)
            self._cache.put(digest, verified, self._ttl)
            return verified
        finally:
            self._flights.pop(digest, None)

    async def _call(self, token: str) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        try:
            async with self._session.get(self._url, headers=headers, timeout=self._timeout) as resp:
                if resp.status in (400, 401, 403):
                    raise InvalidToken("the identity provider rejected the token")
                if resp.status != 200:
                    raise IdentityProviderUnavailable(
                        f"userinfo endpoint answered HTTP {resp.status}"
                    )
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("userinfo call failed", extra={"error": type(exc).__name__})
            raise IdentityProviderUnavailable(
                f"userinfo endpoint unreachable ({type(exc).__name__})"
            ) from exc
        if not isinstance(data, dict):
            raise IdentityProviderUnavailable("userinfo endpoint did not return a JSON object")
        return data


def _retrieve(task: asyncio.Future[VerifiedToken]) -> None:
    if not task.cancelled():
        task.exception()
