"""JWT verification with static keys: algorithms, registered claims, the verified-token cache."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from jwtkeymap.core.clock import ManualClock
from jwtkeymap.core.errors import IdentityProviderUnavailable, InvalidToken
from jwtkeymap.core.policy import claims_read
from jwtkeymap.core.settings import load_settings
from jwtkeymap.core.tokens import (
    MAX_RETRY_SECONDS,
    KeptClaims,
    TokenVerifier,
    parse_unverified,
)
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
    assert held and all(isinstance(k.key, rsa.RSAPublicKey) for k in held)
    assert (
        held[0].key.public_numbers()
        == serialization.load_pem_public_key(key.public_pem.encode()).public_numbers()
    )
    assert (await v.verify(key.sign({"sub": "a"}))).claims["sub"] == "a"


# -- issue 14: what an attack pass found ---------------------------------------------------


class FakeJwks:
    """A stand-in for the HTTP session: each GET of the JWKS answers ``document``."""

    def __init__(self, document: Any) -> None:
        self.document = document
        self.fetches = 0

    def get(self, url: str, **_: Any) -> FakeJwks:
        self.fetches += 1
        return self

    async def __aenter__(self) -> FakeJwks:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def raise_for_status(self) -> None:
        return None

    async def json(self, **_: Any) -> Any:
        return self.document


def jwks_verifier(
    sessions: dict[str, FakeJwks], clock: ManualClock | None = None, **issuer: Any
) -> TokenVerifier:
    settings = load_settings(
        None,
        issuers=[
            {
                "issuer": name,
                "jwks_url": f"{name}/jwks.json",
                "audience": "litellm",
                "algorithms": ["RS256", "RS512", "PS256"],
                **issuer,
            }
            for name in sessions
        ],
        jwks_min_refresh_seconds=30,
        jwks_max_age_seconds=60,
    )
    # One fake session answers per issuer URL.
    by_url = {f"{name}/jwks.json": s for name, s in sessions.items()}

    class Router:
        def get(self, url: str, **kw: Any) -> FakeJwks:
            return by_url[url].get(url, **kw)

    return TokenVerifier(settings, session=Router(), clock=clock or ManualClock())  # type: ignore[arg-type]


def test_deeply_nested_segments_are_invalid_not_a_recursion_error() -> None:
    nested = b64url(b"[" * 3000 + b"]" * 3000)
    with pytest.raises(InvalidToken):
        parse_unverified(f"{b64url({'alg': 'RS256'})}.{nested}.x")
    with pytest.raises(InvalidToken):
        parse_unverified(f"{nested}.{b64url({})}.x")


@pytest.mark.parametrize("document", [{"keys": []}, None, [], "x", {"keys": "x"}, {"keys": [1]}])
async def test_one_issuers_bad_jwks_never_stops_the_others(key: SigningKey, document: Any) -> None:
    other = "https://idp.broken"
    good, bad = FakeJwks({"keys": [key.jwk()]}), FakeJwks(document)
    v = jwks_verifier({ISS: good, other: bad})
    await v.start()  # never raises
    assert v.keysets[ISS].loaded and not v.keysets[other].loaded
    assert (await v.verify(key.sign({"sub": "a"}))).issuer == ISS
    # A token of the issuer whose keys never loaded: a retryable outage, not a bad token.
    stray = SigningKey(other, kid=key.kid)
    with pytest.raises(IdentityProviderUnavailable):
        await v.verify(stray.sign({"sub": "a"}))


async def test_a_bad_refresh_keeps_the_previous_keys_and_backs_off(key: SigningKey) -> None:
    clock = ManualClock()
    source = FakeJwks({"keys": [key.jwk()]})
    v = jwks_verifier({ISS: source}, clock)
    await v.start()
    keyset = v.keysets[ISS]
    source.document = {"keys": []}
    delays = []
    for _ in range(4):
        await keyset.refresh()
        assert keyset.loaded
        delays.append(keyset.retry_delay())
    assert delays == sorted(delays) and delays[-1] > delays[0]
    assert not keyset.retry_due()
    clock.advance(delays[-1])
    assert keyset.retry_due()
    assert (await v.verify(key.sign({"sub": "a"}))).issuer == ISS
    source.document = {"keys": [key.jwk()]}
    await keyset.refresh()
    assert not keyset.retry_due()
    # A healthy key set is never due for a retry, however long it has been.
    clock.advance(3600)
    assert not keyset.retry_due()


async def test_retries_of_a_failing_key_set_back_off_to_five_minutes_at_most(
    key: SigningKey,
) -> None:
    source = FakeJwks({"keys": []})
    v = jwks_verifier({ISS: source})
    await v.start()
    keyset = v.keysets[ISS]
    for _ in range(12):
        await keyset.refresh()
    # Doubling from the refresh interval, capped at exactly MAX_RETRY_SECONDS (300 s).
    assert keyset.retry_delay() == MAX_RETRY_SECONDS == 300.0


@pytest.mark.parametrize(("min_refresh", "expected"), [(30, [10, 20, 40, 80]), (0.5, [1, 2, 4, 8])])
async def test_retry_delays_double_from_the_refresh_interval(
    min_refresh: float, expected: list[float]
) -> None:
    # The first delay is the refresh interval, kept within 1..10 s; each failure doubles it.
    settings = load_settings(
        None,
        issuers=[{"issuer": ISS, "jwks_url": f"{ISS}/jwks.json", "audience": "litellm"}],
        jwks_min_refresh_seconds=min_refresh,
    )
    source = FakeJwks({"keys": []})
    v = TokenVerifier(settings, session=source, clock=ManualClock())  # type: ignore[arg-type]
    await v.start()  # the first failure
    keyset = v.keysets[ISS]
    delays = [keyset.retry_delay()]
    for _ in range(3):
        await keyset.refresh()
        delays.append(keyset.retry_delay())
    assert delays == expected


async def test_a_key_replaced_behind_its_kid_drops_tokens_it_verified(key: SigningKey) -> None:
    clock = ManualClock()
    source = FakeJwks({"keys": [key.jwk()]})
    v = jwks_verifier({ISS: source}, clock)
    await v.start()
    token = key.sign({"sub": "a"})
    await v.verify(token)
    # Same kid, other key material: the token verified with the old key must not stay valid.
    source.document = {"keys": [SigningKey(ISS, kid=key.kid).jwk()]}
    await v.keysets[ISS].refresh()
    with pytest.raises(InvalidToken):
        await v.verify(token)


def _small_rsa_jwk(kid: str, bits: int) -> tuple[Any, dict[str, Any]]:
    import json

    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    data: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    data.update(kid=kid, use="sig")
    return private, data


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_short_rsa_keys_are_never_trusted() -> None:
    # 1024 bits: the shortest cryptography still generates (512 was accepted as well).
    private, jwk = _small_rsa_jwk("short", 1024)
    v = jwks_verifier({ISS: FakeJwks({"keys": [jwk]})})
    await v.start()
    token = jwt.encode(
        {"iss": ISS, "aud": "litellm", "sub": "a", "exp": int(time.time()) + 60},
        private,
        algorithm="RS256",
        headers={"kid": "short"},
    )
    with pytest.raises((InvalidToken, IdentityProviderUnavailable)):
        await v.verify(token)


def test_short_static_rsa_key_is_a_config_error() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from jwtkeymap.core.errors import ConfigError

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - on purpose
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    settings = load_settings(None, issuers=[{"issuer": ISS, "public_keys": [pem]}])
    with pytest.raises(ConfigError, match="2048"):
        TokenVerifier(settings)


@pytest.mark.parametrize("alg", ["RS256", "PS256"])
async def test_a_jwks_keys_own_alg_is_enforced(alg: str) -> None:
    signer = SigningKey(ISS, kid="k512", alg=alg)
    jwk = signer.jwk() | {"alg": "RS512"}
    v = jwks_verifier({ISS: FakeJwks({"keys": [jwk]})})
    await v.start()
    with pytest.raises(InvalidToken):
        await v.verify(signer.sign({"sub": "a"}))


async def test_typ_allow_list_per_issuer(key: SigningKey) -> None:
    v = verifier(key, typ=["at+jwt"])
    assert await v.verify(key.sign({"sub": "a"}, headers={"typ": "at+JWT"}))
    for headers in ({"typ": "JWT"}, {"typ": None}):
        with pytest.raises(InvalidToken, match="typ"):
            await v.verify(key.sign({"sub": "b"}, headers=headers))
    # Without the setting any typ is accepted, as before.
    assert await verifier(key).verify(key.sign({"sub": "c"}, headers={"typ": "JWT"}))


def test_the_claims_a_decision_reads_are_the_top_of_each_configured_path() -> None:
    assert claims_read(load_settings(None)) == {"sub"}
    settings = load_settings(
        None,
        claim_field="realm.client\\.id",
        admin={"claim": "roles", "value": "admin"},
        auto_register={"team_id_claim": "org.team", "user_id_claim": None, "org_id_claim": "o"},
    )
    assert claims_read(settings) == {"realm", "roles", "org", "o"}


async def test_a_verifier_told_which_claims_are_read_keeps_only_those(key: SigningKey) -> None:
    settings = load_settings(
        None,
        issuers=[{"issuer": ISS, "public_keys": [key.public_pem], "audience": "litellm"}],
        claim_field="realm.user",
    )
    v = TokenVerifier(settings, keep_claims=["realm", "sub", "absent"])
    token = key.sign({"realm": {"user": "u", "x": 1}, "sub": "s", "email": "e@example.com"})
    first = await v.verify(token)
    assert dict(first.claims) == {"realm": {"user": "u", "x": 1}, "sub": "s"}
    assert first.expires_at == parse_unverified(token)[1]["exp"]
    again = await v.verify(token)
    assert again is first and v.cache.stats.hits == 1
    # Without keep_claims every claim stays (what `jwtkeymap resolve` shows).
    assert set((await TokenVerifier(settings).verify(token)).claims) >= {"email", "aud", "exp"}


def test_kept_claims_read_like_the_claims_they_keep() -> None:
    claims = {"sub": "s", "team": None, "n": 0, "email": "e@example.com"}
    kept = KeptClaims(("absent", "n", "sub", "team"), claims)
    assert dict(kept) == {"n": 0, "sub": "s", "team": None} and len(kept) == 3
    assert kept["n"] == 0 and kept.get("team", "default") is None
    assert "absent" not in kept and "email" not in kept and kept.get("email") is None
    with pytest.raises(KeyError):
        kept["absent"]
    assert kept == {"n": 0, "sub": "s", "team": None} and "e@example.com" not in repr(kept)
