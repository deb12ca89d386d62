"""Signed identity assertions: keys, thumbprints, reuse, and every refusal of ``verify``."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from jwtkeymap.core.assertion import (
    AssertionSigner,
    SigningKey,
    jwks,
    load_signing_keys,
    thumbprint,
    verify,
    verifying_keys,
)
from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.clock import ManualClock
from jwtkeymap.core.errors import ConfigError, InvalidAssertion
from jwtkeymap.core.keys import KeyIdentity
from jwtkeymap.core.settings import load_settings

KEY = KeyIdentity("a" * 64, team_id="t", user_id="u", org_id=None)
WHO = MappingIdentity("https://idp", "email", "alice@example.com")


def pkcs8(private: object) -> bytes:
    return private.private_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_thumbprint_of_rfc8037_example() -> None:
    # RFC 8037, appendix A.3: the thumbprint of its Ed25519 example key.
    jwk = {"crv": "Ed25519", "kty": "OKP", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert thumbprint(jwk) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_key_file_holds_ed25519_and_p256_in_order() -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    p256 = ec.generate_private_key(ec.SECP256R1())
    keys = load_signing_keys(pkcs8(ed) + b"\n" + pkcs8(p256))
    assert [k.algorithm for k in keys] == ["EdDSA", "ES256"]
    published = jwks(keys)["keys"]
    assert [k["kid"] for k in published] == [k.kid for k in keys]
    assert all("d" not in k for k in published)  # never a private member
    assert verifying_keys(json.dumps(jwks(keys))).keys() == {k.kid for k in keys}
    pem = ed.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert list(verifying_keys(pem)) == [keys[0].kid]


@pytest.mark.parametrize(
    ("pem", "message"),
    [
        (lambda: pkcs8(rsa.generate_private_key(65537, 2048)), "use Ed25519 or EC P-256"),
        (lambda: pkcs8(ec.generate_private_key(ec.SECP384R1())), "unsupported curve"),
        (
            lambda: ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            ),
            "must be unencrypted PKCS#8",
        ),
        (lambda: b"not a key", "holds no PEM private key"),
    ],
)
def test_unusable_key_files_are_refused(pem, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_signing_keys(pem())


def test_assertion_is_reused_until_a_third_of_its_life_is_left() -> None:
    clock = ManualClock()
    signer = AssertionSigner([SigningKey.generate()], ttl_seconds=30, clock=clock)
    first = signer.assertion("mapped", KEY, WHO)
    assert signer.assertion("mapped", KEY, WHO) is first
    clock.advance(19)
    assert signer.assertion("mapped", KEY, WHO) is first
    assert signer.signed == 1
    other = signer.assertion("mapped", KeyIdentity("b" * 64), WHO)
    assert other != first and signer.signed == 2
    clock.advance(1.5)
    renewed = signer.assertion("mapped", KEY, WHO)
    assert renewed != first and signer.signed == 3


def test_claims_name_the_decision_and_never_a_token() -> None:
    clock = ManualClock()
    key = SigningKey.generate()
    signer = AssertionSigner([key], issuer="me", audience="gw", ttl_seconds=60, clock=clock)
    token = signer.assertion("mapped", KEY, WHO)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "EdDSA", "kid": key.kid, "typ": "JWT"}
    claims = jwt.decode(token, options={"verify_signature": False})
    now = int(clock.now().timestamp())
    assert claims == {
        "iss": "me",
        "aud": "gw",
        "iat": now,
        "exp": now + 60,
        "decision": "mapped",
        "key_hash": "a" * 64,
        "team_id": "t",
        "user_id": "u",
        "identity_issuer": "https://idp",
        "claim_name": "email",
    }
    admin = jwt.decode(signer.assertion("admin", None, None), options={"verify_signature": False})
    assert "key_hash" not in admin and admin["decision"] == "admin"


def _verify(token: str, keys: list[SigningKey], clock: ManualClock, **kw: object) -> object:
    options = {"audience": "litellm", "issuer": None, "now": clock.now().timestamp(), **kw}
    return verify(token, verifying_keys(json.dumps(jwks(keys))), **options)  # type: ignore[arg-type]


def test_verify_accepts_its_own_assertion() -> None:
    clock = ManualClock()
    key = SigningKey.of(ec.generate_private_key(ec.SECP256R1()))
    token = AssertionSigner([key], clock=clock).assertion("auto_registered", KEY, WHO)
    said = _verify(token, [key], clock, issuer="jwtkeymap")
    assert said.decision == "auto_registered" and said.key_hash == "a" * 64  # type: ignore[attr-defined]
    assert said.team_id == "t" and said.org_id is None  # type: ignore[attr-defined]


def _forge(claims: dict[str, object], key: SigningKey, **header: str) -> str:
    return jwt.encode(
        claims, key.private, algorithm=key.algorithm, headers={"kid": key.kid, **header}
    )


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda k, c, now: "not.a.jws", "malformed"),
        (lambda k, c, now: AssertionSigner([SigningKey.generate()], clock=c).assertion(
            "mapped", KEY, WHO), "unknown_kid"),
        (lambda k, c, now: AssertionSigner([k], clock=c, audience="other").assertion(
            "mapped", KEY, WHO), "wrong_audience"),
        (lambda k, c, now: _forge({"iss": "x", "aud": "litellm", "iat": now - 100,
                                   "exp": now - 60, "decision": "admin"}, k), "expired"),
        (lambda k, c, now: _forge({"iss": "x", "aud": "litellm", "iat": now,
                                   "decision": "admin"}, k), "malformed"),
        (lambda k, c, now: _forge({"iss": "x", "aud": "litellm", "iat": now, "exp": now + 30,
                                   "decision": "fallback", "key_hash": "a" * 64}, k), "malformed"),
        (lambda k, c, now: _forge({"iss": "x", "aud": "litellm", "iat": now, "exp": now + 30,
                                   "decision": "mapped"}, k), "malformed"),
        (lambda k, c, now: _forge({"iss": "x", "aud": "litellm", "iat": now, "exp": now + 3600,
                                   "decision": "admin"}, k), "malformed"),
    ],
)  # fmt: skip
def test_verify_refuses_with_a_reason(make, reason: str) -> None:
    clock = ManualClock()
    key = SigningKey.generate()
    token = make(key, clock, int(clock.now().timestamp()))
    with pytest.raises(InvalidAssertion) as caught:
        _verify(token, [key], clock)
    assert caught.value.reason == reason


def test_verify_refuses_a_bad_signature_and_another_issuer() -> None:
    clock = ManualClock()
    key = SigningKey.generate()
    token = AssertionSigner([key], clock=clock).assertion("mapped", KEY, WHO)
    head, body, sig = token.split(".")
    flipped = base64.urlsafe_b64decode(sig + "==")
    tampered = f"{head}.{body}.{base64.urlsafe_b64encode(bytes([flipped[0] ^ 1]) + flipped[1:]).rstrip(b'=').decode()}"
    with pytest.raises(InvalidAssertion) as caught:
        _verify(tampered, [key], clock)
    assert caught.value.reason == "bad_signature"
    with pytest.raises(InvalidAssertion) as caught:
        _verify(token, [key], clock, issuer="someone-else")
    assert caught.value.reason == "wrong_issuer"
    clock.advance(36)  # 30 s life, 5 s leeway
    with pytest.raises(InvalidAssertion) as caught:
        _verify(token, [key], clock)
    assert caught.value.reason == "expired"


def test_assertion_settings() -> None:
    assert not load_settings(None).assertion.enabled
    on = load_settings(None, assertion={"signing_key_file": "/k.pem"}).assertion
    assert on.enabled and on.ttl_seconds == 30 and on.audience == "litellm"
    assert on.issuer == "jwtkeymap"
    with pytest.raises(ConfigError, match=r"assertion\.ttl_seconds"):
        load_settings(None, assertion={"enabled": True, "ttl_seconds": 301})


def test_assertions_past_reuse_are_dropped_not_kept_for_every_client_seen() -> None:
    clock = ManualClock()
    signer = AssertionSigner([SigningKey.generate()], ttl_seconds=30, clock=clock)
    for n in range(5):
        signer.assertion("mapped", KeyIdentity(f"{n:064x}"), WHO)
    assert len(signer._issued) == 5
    clock.advance(21)  # past reuse (20 s) and past the sweep interval (10 s)
    kept = signer.assertion("mapped", KEY, WHO)
    assert list(signer._issued) == [("mapped", KEY, WHO)]
    assert signer.assertion("mapped", KEY, WHO) is kept and signer.signed == 6
