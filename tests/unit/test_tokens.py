"""JWT verification with static keys: algorithms, registered claims, the verified-token cache."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from jwtkeymap.core.clock import ManualClock
from jwtkeymap.core.errors import InvalidToken
from jwtkeymap.core.settings import load_settings
from jwtkeymap.core.tokens import TokenVerifier, parse_unverified
from jwtkeymap.demo.signing import SigningKey
from support.tokens import b64url, hostile_tokens

ISS = "https://idp.unit"


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey(ISS, kid="k1")


@pytest.fixture(scope="module")
def es_key() -> SigningKey:
    return SigningKey(ISS, kid="e1", alg="ES256")


def verifier(*keys: SigningKey, **issuer: Any) -> TokenVerifier:
    settings = load_settings(
        None,
        issuers=[
            {
                "issuer": ISS,
                "public_keys": [k.public_pem for k in keys],
                "audience": "litellm",
                "algorithms": ["RS256", "ES256"],
                **issuer,
            }
        ],
    )
    return TokenVerifier(settings)


async def test_valid_rs256_and_es256_tokens_verify(key: SigningKey, es_key: SigningKey) -> None:
    v = verifier(key, es_key)
    for k in (key, es_key):
        out = await v.verify(k.sign({"sub": "alice"}))
        assert out.issuer == ISS and out.claims["sub"] == "alice"


async def test_verified_tokens_are_cached(key: SigningKey, monkeypatch: pytest.MonkeyPatch) -> None:
    v = verifier(key)
    token = key.sign({"sub": "alice"})
    await v.verify(token)
    calls = 0
    real = jwt.decode

    def counting(*a: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*a, **kw)

    monkeypatch.setattr(jwt, "decode", counting)
    await v.verify(token)
    assert calls == 0
    assert v.cache.stats.hits == 1


async def test_cache_never_outlives_the_token(key: SigningKey) -> None:
    clock = ManualClock()
    settings = load_settings(
        None, issuers=[{"issuer": ISS, "public_keys": [key.public_pem], "leeway_seconds": 0}]
    )
    v = TokenVerifier(settings, clock=clock)
    token = key.sign({"sub": "a"}, audience=None, ttl=3600)
    await v.verify(token)
    # The manual clock starts in 2026-01-01, so exp is far in its future: entry cached for TTL.
    assert len(v.cache) == 1
    clock.advance(301)
    assert v.cache.get(next(iter(v.cache.keys()))) is None


@pytest.mark.parametrize("name", list(hostile_tokens(SigningKey(ISS)).keys()))
async def test_hostile_tokens_are_rejected(key: SigningKey, name: str) -> None:
    token = hostile_tokens(key)[name]
    with pytest.raises(InvalidToken):
        await verifier(key).verify(token)


async def test_hmac_algorithms_cannot_be_configured() -> None:
    from jwtkeymap.core.errors import ConfigError

    with pytest.raises(ConfigError, match="HS256"):
        load_settings(
            None, issuers=[{"issuer": ISS, "public_keys": ["x"], "algorithms": ["HS256"]}]
        )


async def test_algorithm_outside_the_issuers_list_is_rejected(es_key: SigningKey) -> None:
    v = verifier(es_key, algorithms=["RS256"])
    with pytest.raises(InvalidToken, match="not allowed"):
        await v.verify(es_key.sign({"sub": "a"}))


async def test_leeway_accepts_a_just_expired_token(key: SigningKey) -> None:
    token = key.sign({"sub": "a"}, exp=int(time.time()) - 5)
    out = await verifier(key, leeway_seconds=30).verify(token)
    assert out.claims["sub"] == "a"
    with pytest.raises(InvalidToken, match="expired"):
        await verifier(key, leeway_seconds=0).verify(token)


def test_parse_unverified_needs_json_objects() -> None:
    with pytest.raises(InvalidToken, match="not a JSON object"):
        parse_unverified(f"{b64url([1])}.{b64url({})}.x")


def test_bad_pem_is_a_config_error() -> None:
    from jwtkeymap.core.errors import ConfigError

    settings = load_settings(None, issuers=[{"issuer": ISS, "public_keys": ["not a pem"]}])
    with pytest.raises(ConfigError, match="PEM"):
        TokenVerifier(settings)


async def test_private_key_material_is_not_needed(key: SigningKey) -> None:
    # Configured with the public PEM alone, the verifier holds public keys and verifies.
    v = verifier(key)
    held = await v.keysets[ISS].candidates(key.kid)
    assert held and all(isinstance(k, rsa.RSAPublicKey) for k in held)
    assert (
        held[0].public_numbers()
        == serialization.load_pem_public_key(key.public_pem.encode()).public_numbers()
    )
    assert (await v.verify(key.sign({"sub": "a"}))).claims["sub"] == "a"
