"""Each guard of token verification refuses its hostile token with its own reason.

A test that only expects ``InvalidToken`` passes as long as *some* later check throws,
so a removed guard (even the ``alg: none`` check) went unnoticed: here every hostile
token names the guard meant to stop it. Boundaries and the verified-token cache too.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from jwtkeymap.core.clock import ManualClock
from jwtkeymap.core.errors import ConfigError, InvalidToken
from jwtkeymap.core.settings import load_settings
from jwtkeymap.core.tokens import MAX_TOKEN_BYTES, TokenVerifier, parse_unverified
from jwtkeymap.demo.signing import SigningKey
from support.tokens import b64url, hostile_tokens

ISS = "https://idp.unit"

# The reason each token of support.tokens.hostile_tokens is refused for (a regex).
REASONS = {
    "alg none": "not a JWT",  # an empty signature segment is refused before the header is read
    "alg none nonempty sig": "algorithm is missing or 'none'",
    "alg missing": "algorithm is missing or 'none'",
    "hs256 with public key as secret": "algorithm HS256 is not allowed for this issuer",
    "expired": "has expired",
    "nbf in future": "is not valid yet",
    "wrong iss": "issuer is not trusted",
    "trusted iss other key": "signature is invalid",
    "unknown kid": "signature is invalid",  # static keys carry no kid: all are tried
    "wrong aud": "audience is not accepted",
    "no aud": "lacks the required claim 'aud'",
    "no exp": "signature is invalid",  # forged: the signature fails before the claims
    "malformed base64": "header is not base64url-encoded JSON",
    "truncated": r"is invalid \(DecodeError\)",  # a signature cut to an undecodable length
    "two dots only": "not a JWT",
    "four segments": "not a JWT",
    "three dots": "not a JWT",
    "header not object": "header is not a JSON object",
    "claims not object": "payload is not a JSON object",
    "claims not json": "payload is not base64url-encoded JSON",
    "huge": "too large",
    "tampered payload": "signature is invalid",
    "kid not string": "key id is not a string",
    "empty": "not a JWT",
}


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey(ISS, kid="k1")


@pytest.fixture(scope="module")
def hostile(key: SigningKey) -> dict[str, str]:
    return hostile_tokens(key)


def verifier(*keys: SigningKey | str, **issuer: Any) -> TokenVerifier:
    pems = [k if isinstance(k, str) else k.public_pem for k in keys]
    config: dict[str, Any] = {"issuer": ISS, "public_keys": pems, "audience": "litellm"}
    config["algorithms"] = ["RS256", "ES256"]
    config.update(issuer)
    return TokenVerifier(load_settings(None, issuers=[config]))


def test_every_hostile_token_has_a_reason(hostile: dict[str, str]) -> None:
    assert set(REASONS) == set(hostile)


@pytest.mark.parametrize("name", sorted(REASONS))
async def test_each_hostile_token_is_refused_by_its_own_guard(
    key: SigningKey, hostile: dict[str, str], name: str
) -> None:
    with pytest.raises(InvalidToken, match=REASONS[name]):
        await verifier(key).verify(hostile[name])


async def test_none_in_any_case_is_refused_by_the_none_guard(key: SigningKey) -> None:
    body = {"iss": ISS, "aud": "litellm", "exp": int(time.time()) + 60}
    for alg in ("none", "None", "NONE"):
        token = f"{b64url({'alg': alg})}.{b64url(body)}.c2ln"
        with pytest.raises(InvalidToken, match="missing or 'none'"):
            await verifier(key).verify(token)


async def test_an_algorithm_that_is_not_a_string_is_refused(key: SigningKey) -> None:
    token = f"{b64url({'alg': ['RS256']})}.{b64url({'iss': ISS})}.c2ln"
    with pytest.raises(InvalidToken, match="missing or 'none'"):
        await verifier(key).verify(token)


async def test_an_issuer_that_is_not_a_string_is_untrusted(key: SigningKey) -> None:
    token = f"{b64url({'alg': 'RS256'})}.{b64url({'iss': [ISS]})}.c2ln"
    with pytest.raises(InvalidToken, match="issuer is not trusted"):
        await verifier(key).verify(token)


async def test_a_signed_token_without_exp_lacks_a_required_claim(key: SigningKey) -> None:
    with pytest.raises(InvalidToken, match="lacks the required claim 'exp'"):
        await verifier(key).verify(key.sign({"sub": "a"}, exp=None))


async def test_a_token_without_kid_verifies_against_static_keys(key: SigningKey) -> None:
    token = jwt.encode(
        {"iss": ISS, "aud": "litellm", "exp": int(time.time()) + 60, "sub": "a"},
        key._private,
        algorithm="RS256",
    )
    assert "kid" not in jwt.get_unverified_header(token)
    assert (await verifier(key).verify(token)).claims["sub"] == "a"


async def test_every_static_key_is_tried(key: SigningKey) -> None:
    other = SigningKey(ISS, kid="k2")
    out = await verifier(key, other).verify(other.sign({"sub": "b"}))
    assert out.claims["sub"] == "b"


async def test_a_key_of_another_family_never_verifies(key: SigningKey) -> None:
    es = SigningKey(ISS, kid="e1", alg="ES256")
    with pytest.raises(InvalidToken, match="no ES256 key of this issuer matches"):
        await verifier(key).verify(es.sign({"sub": "a"}))
    with pytest.raises(InvalidToken, match="no RS256 key of this issuer matches"):
        await verifier(es).verify(key.sign({"sub": "a"}))


async def test_ps256_uses_the_rsa_key(key: SigningKey) -> None:
    ps = SigningKey(ISS, kid="p1", alg="PS256")
    out = await verifier(ps, algorithms=["PS256"]).verify(ps.sign({"sub": "a"}))
    assert out.claims["sub"] == "a"


async def test_eddsa_keys_load_from_pem_and_verify() -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    body = {"iss": ISS, "aud": "litellm", "exp": int(time.time()) + 60, "sub": "ed"}
    token = jwt.encode(body, private, algorithm="EdDSA")
    out = await verifier(pem, algorithms=["EdDSA"]).verify(token)
    assert out.claims["sub"] == "ed"
    rsa = SigningKey(ISS, kid="r")
    with pytest.raises(InvalidToken, match="no EdDSA key"):
        await verifier(rsa, algorithms=["EdDSA"]).verify(token)


async def test_without_a_configured_audience_any_aud_is_accepted(key: SigningKey) -> None:
    out = await verifier(key, audience=None).verify(key.sign({"sub": "a"}, audience="x"))
    assert out.claims["aud"] == "x"


def test_the_size_limit_admits_exactly_16_kib() -> None:
    assert MAX_TOKEN_BYTES == 16 * 1024
    head, body = b64url({"alg": "RS256"}), b64url({"iss": ISS})
    filler = "A" * (MAX_TOKEN_BYTES - len(head) - len(body) - 2)
    header, payload = parse_unverified(f"{head}.{body}.{filler}")
    assert header == {"alg": "RS256"} and payload == {"iss": ISS}
    with pytest.raises(InvalidToken, match="too large"):
        parse_unverified(f"{head}.{body}.{filler}A")


@pytest.mark.parametrize("token", ["a.b.", ".b.c", "a..c"])
def test_every_segment_must_be_non_empty(token: str) -> None:
    with pytest.raises(InvalidToken, match="three non-empty segments"):
        parse_unverified(token)


def test_segments_without_padding_decode() -> None:
    # 1, 2 and 3 bytes of JSON need 3, 2 and 1 padding characters.
    for obj in ({}, {"a": 1}, {"ab": 12}, {"abc": 123}):
        segment = b64url(obj)
        assert parse_unverified(f"{segment}.{segment}.x") == (obj, obj)


async def test_a_cache_hit_returns_the_verified_token(key: SigningKey) -> None:
    v = verifier(key)
    token = key.sign({"sub": "alice"})
    first = await v.verify(token)
    again = await v.verify(token)
    assert again == first and again.claims["sub"] == "alice" and v.cache.stats.hits == 1
    assert first.issuer == ISS and first.expires_at == first.claims["exp"]


class SteppedClock(ManualClock):
    """A manual clock whose wall time can also be stepped alone, as NTP corrects a clock."""

    def __init__(self, start: dt.datetime) -> None:
        super().__init__(start)
        self.step = 0.0

    def now(self) -> dt.datetime:
        return super().now() + dt.timedelta(seconds=self.step)


@pytest.mark.parametrize(("step", "served_from_cache"), [(99, True), (100, False)])
async def test_a_cached_token_is_not_served_from_the_instant_of_its_exp(
    key: SigningKey, monkeypatch: pytest.MonkeyPatch, step: float, served_from_cache: bool
) -> None:
    # A JWT is expired from its exp on (RFC 7519 4.1.4). The cache keeps a verification for
    # at most exp - now of monotonic time, so only a step of the wall clock reaches that
    # instant while the entry lives; the cached verification must not answer then.
    exp = int(time.time()) + 3600
    clock = SteppedClock(dt.datetime.fromtimestamp(exp - 100, dt.UTC))
    settings = load_settings(None, issuers=[{"issuer": ISS, "public_keys": [key.public_pem]}])
    v = TokenVerifier(settings, clock=clock)
    token = key.sign({"sub": "a"}, audience=None, exp=exp)
    await v.verify(token)  # cached for 100 s of monotonic time
    decodes = 0
    real = jwt.decode

    def counting(*a: Any, **kw: Any) -> Any:
        nonlocal decodes
        decodes += 1
        return real(*a, **kw)

    monkeypatch.setattr(jwt, "decode", counting)
    clock.step = step  # the wall clock moves on; monotonic time does not
    assert (await v.verify(token)).claims["exp"] == exp
    assert decodes == (0 if served_from_cache else 1)


async def test_a_static_issuer_starts_without_a_session(key: SigningKey) -> None:
    v = verifier(key)
    await v.start()
    assert v.keysets[ISS].loaded and v.keysets[ISS].refreshes == 0


def test_a_bad_pem_names_the_issuer() -> None:
    with pytest.raises(ConfigError, match=f"issuer {ISS}: public key is not a PEM"):
        verifier("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
