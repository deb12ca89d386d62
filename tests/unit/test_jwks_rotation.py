"""JWKS key sets without a network: when they are fetched, which keys they keep, and
what a rotation does to tokens verified (and cached) before it."""

from __future__ import annotations

import logging
import time
from typing import Any

import aiohttp
import jwt
import pytest

from jwtkeymap.core.clock import ManualClock
from jwtkeymap.core.errors import ConfigError, InvalidToken
from jwtkeymap.core.settings import load_settings
from jwtkeymap.core.tokens import TokenVerifier
from jwtkeymap.demo.signing import SigningKey
from support.tokens import jwks

ISS = "https://rotating.unit"
URL = "https://rotating.unit/jwks.json"
MIN_REFRESH = 30.0
MAX_AGE = 600.0


class _Response:
    def __init__(self, document: dict[str, Any]) -> None:
        self._document = document

    async def __aenter__(self) -> _Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def raise_for_status(self) -> None:
        return None

    async def json(self, *, content_type: str | None) -> dict[str, Any]:
        return self._document


class JwksEndpoint:
    """Stands in for the aiohttp session: serves ``document``, counts fetches, can fail."""

    def __init__(self, *keys: SigningKey) -> None:
        self.document = jwks(*keys)
        self.fetches = 0
        self.down = False
        self.timeouts: list[float | None] = []

    def publish(self, *keys: SigningKey) -> None:
        self.document = jwks(*keys)

    def get(self, url: str, *, timeout: aiohttp.ClientTimeout) -> _Response:
        assert url == URL
        self.fetches += 1
        self.timeouts.append(timeout.total)
        if self.down:
            raise aiohttp.ClientConnectionError("connection refused")
        return _Response(self.document)


@pytest.fixture(scope="module")
def k1() -> SigningKey:
    return SigningKey(ISS, kid="k1")


@pytest.fixture(scope="module")
def k2() -> SigningKey:
    return SigningKey(ISS, kid="k2")


def without_kid(key: SigningKey, **claims: Any) -> str:
    """A token of ``key`` whose header names no key (SigningKey always sets a kid)."""
    body = {"iss": ISS, "aud": "litellm", "exp": int(time.time()) + 600, **claims}
    return jwt.encode(body, key._private, algorithm="RS256")


def verifier(endpoint: JwksEndpoint | None, clock: ManualClock) -> TokenVerifier:
    settings = load_settings(
        None,
        issuers=[{"issuer": ISS, "jwks_url": URL, "audience": "litellm"}],
        jwks_min_refresh_seconds=MIN_REFRESH,
        jwks_max_age_seconds=MAX_AGE,
        # Longer than MAX_AGE, so only a rotation can end a cached verification.
        token_cache_ttl_seconds=10 * MAX_AGE,
    )
    return TokenVerifier(settings, session=endpoint, clock=clock)  # type: ignore[arg-type]


async def test_start_fetches_once_and_a_published_kid_verifies(k1: SigningKey) -> None:
    endpoint = JwksEndpoint(k1)
    v = verifier(endpoint, ManualClock())
    assert not v.keysets[ISS].loaded
    await v.start()
    assert v.keysets[ISS].loaded and endpoint.fetches == 1 and v.keysets[ISS].refreshes == 1
    assert (await v.verify(k1.sign(sub="a"))).claims["sub"] == "a"
    assert endpoint.fetches == 1
    # A fetch on the request path never waits long for the IdP.
    assert endpoint.timeouts == [5]


async def test_the_first_token_fetches_when_start_was_not_called(k1: SigningKey) -> None:
    endpoint = JwksEndpoint(k1)
    v = verifier(endpoint, ManualClock())
    assert (await v.verify(k1.sign(sub="a"))).claims["sub"] == "a"
    assert endpoint.fetches == 1


async def test_a_jwks_issuer_needs_a_session() -> None:
    with pytest.raises(ConfigError, match="needs an HTTP session"):
        await verifier(None, ManualClock()).start()


async def test_an_unknown_kid_refetches_at_most_once_per_min_refresh(
    k1: SigningKey, k2: SigningKey
) -> None:
    endpoint, clock = JwksEndpoint(k1), ManualClock()
    v = verifier(endpoint, clock)
    await v.start()
    endpoint.publish(k1, k2)
    clock.advance(MIN_REFRESH - 1)
    with pytest.raises(InvalidToken, match="unknown key"):
        await v.verify(k2.sign(sub="b"))
    assert endpoint.fetches == 1
    clock.advance(1)  # exactly min_refresh since the last fetch
    assert (await v.verify(k2.sign(sub="b"))).claims["sub"] == "b"
    assert endpoint.fetches == 2


async def test_known_keys_are_refetched_once_max_age_is_reached(k1: SigningKey) -> None:
    endpoint, clock = JwksEndpoint(k1), ManualClock()
    v = verifier(endpoint, clock)
    await v.start()
    clock.advance(MAX_AGE - 1)
    await v.verify(k1.sign(sub="a", jti="1"))
    assert endpoint.fetches == 1
    clock.advance(1)
    await v.verify(k1.sign(sub="a", jti="2"))
    assert endpoint.fetches == 2 and v.keysets[ISS].refreshes == 2


async def test_only_signature_keys_are_kept(k1: SigningKey, k2: SigningKey) -> None:
    endpoint, clock = JwksEndpoint(), ManualClock()
    encryption = {**k1.jwk(), "use": "enc"}
    unlabelled = {k: v for k, v in k2.jwk().items() if k != "use"}
    endpoint.document = {"keys": [encryption, unlabelled]}
    v = verifier(endpoint, clock)
    await v.start()
    with pytest.raises(InvalidToken, match="unknown key"):
        await v.verify(k1.sign(sub="a"))
    assert (await v.verify(k2.sign(sub="b"))).claims["sub"] == "b"


async def test_a_token_without_kid_needs_a_single_published_key(
    k1: SigningKey, k2: SigningKey
) -> None:
    endpoint, clock = JwksEndpoint(k1), ManualClock()
    v = verifier(endpoint, clock)
    await v.start()
    no_kid = without_kid(k1, sub="a")
    assert "kid" not in jwt.get_unverified_header(no_kid)
    assert (await v.verify(no_kid)).claims["sub"] == "a"
    endpoint.publish(k1, k2)
    clock.advance(MAX_AGE)
    with pytest.raises(InvalidToken, match="unknown key"):
        await v.verify(without_kid(k1, sub="a", jti="again"))


async def test_a_withdrawn_key_takes_its_cached_tokens_with_it(
    k1: SigningKey, k2: SigningKey
) -> None:
    endpoint, clock = JwksEndpoint(k1, k2), ManualClock()
    v = verifier(endpoint, clock)
    await v.start()
    old, other = k1.sign(sub="a"), k2.sign(sub="b")
    await v.verify(old)
    await v.verify(other)
    assert len(v.cache) == 2
    endpoint.publish(k2)
    clock.advance(MAX_AGE)
    await v.verify(k2.sign(sub="b", jti="fresh"))  # not cached: the refresh runs, drops k1
    with pytest.raises(InvalidToken, match="unknown key"):
        await v.verify(old)


async def test_a_refresh_that_withdraws_a_key_evicts_its_tokens_at_once(
    k1: SigningKey, k2: SigningKey
) -> None:
    # Not only refused when next presented: the withdrawn key's verifications leave the
    # cache with the refresh that withdrew it, instead of holding places until their TTL.
    endpoint, clock = JwksEndpoint(k1, k2), ManualClock()
    v = verifier(endpoint, clock)
    await v.start()
    await v.verify(k1.sign(sub="a"))
    assert len(v.cache) == 1
    endpoint.publish(k2)
    await v.keysets[ISS].refresh()
    assert len(v.cache) == 0


async def test_a_refresh_that_removes_nothing_keeps_the_cache(
    k1: SigningKey, k2: SigningKey
) -> None:
    endpoint, clock = JwksEndpoint(k1), ManualClock()
    v = verifier(endpoint, clock)
    await v.start()
    token = k1.sign(sub="a")
    await v.verify(token)
    endpoint.publish(k1, k2)
    await v.keysets[ISS].refresh()
    assert len(v.cache) == 1


async def test_a_failed_refresh_keeps_the_previous_keys(
    k1: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint, clock = JwksEndpoint(k1), ManualClock()
    v = verifier(endpoint, clock)
    await v.start()
    endpoint.down = True
    clock.advance(MAX_AGE)
    with caplog.at_level(logging.WARNING, logger="jwtkeymap.core.tokens"):
        assert (await v.verify(k1.sign(sub="a"))).claims["sub"] == "a"
    assert endpoint.fetches == 2
    assert [r.getMessage() for r in caplog.records] == ["JWKS refresh failed"]


async def test_a_key_replaced_under_the_same_kid_takes_its_cached_tokens_with_it(
    k1: SigningKey, k2: SigningKey
) -> None:
    # An IdP that rotates by reusing the kid: the old material is withdrawn all the same.
    endpoint, clock = JwksEndpoint(k1, k2), ManualClock()
    v = verifier(endpoint, clock)
    await v.start()
    old = k1.sign(sub="a")
    await v.verify(old)
    replacement = SigningKey(ISS, kid="k1")
    endpoint.publish(replacement, k2)
    clock.advance(MAX_AGE)
    assert (await v.verify(replacement.sign(sub="new"))).claims["sub"] == "new"
    with pytest.raises(InvalidToken, match="signature is invalid"):
        await v.verify(old)
