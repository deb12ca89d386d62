"""The signed identity assertion over HTTP: check mode, reverse-proxy mode, JWKS, key rotation."""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric import ed25519

from jwtkeymap.core.assertion import verify, verifying_keys
from support.assertion_keys import write_signing_keys
from support.servers import BOTH_ENGINES

HEADER = "x-jwtkeymap-assertion"


async def jwks_of(http, url: str) -> dict:
    async with http.get(f"{url}/.well-known/jwks.json") as resp:
        assert resp.status == 200
        return json.loads(await resp.read())


async def test_check_answer_carries_a_verifiable_assertion(
    make_settings, database_url, start_resolver, http, map_claim, signing_key, tmp_path
):
    rows = await map_claim("alice")
    keys = write_signing_keys(tmp_path / "keys.pem", ed25519.Ed25519PrivateKey.generate())
    r = await start_resolver(
        make_settings(
            database_url=database_url, assertion={"signing_key_file": tmp_path / "keys.pem"}
        )
    )
    token = signing_key.sign(sub="alice")
    async with http.get(f"{r.url}/check", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200
        assertion = resp.headers[HEADER]
        assert "x-envoy-auth-headers-to-remove" not in resp.headers
    published = await jwks_of(http, r.url)
    assert [k["kid"] for k in published["keys"]] == [keys[0].kid]
    assert all("d" not in k for k in published["keys"])
    said = verify(
        assertion,
        verifying_keys(json.dumps(published)),
        audience="litellm",
        issuer="jwtkeymap",
        now=r.service.clock.now().timestamp(),
    )
    assert said.decision == "mapped" and said.key_hash == rows.key.token_hash
    assert (said.team_id, said.user_id, said.org_id) == ("team-a", "user-a", "org-a")
    assert said.claim_name == "sub" and said.identity_issuer == signing_key.issuer
    # A busy client's next checks reuse the same assertion: nothing is signed again.
    for _ in range(3):
        async with http.get(f"{r.url}/check", headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.headers[HEADER] == assertion
    assert r.service.signer.signed == 1


async def test_ephemeral_key_without_a_file_and_no_jwks_when_off(
    make_settings, database_url, start_resolver, http
):
    on = await start_resolver(make_settings(database_url=database_url, assertion={"enabled": True}))
    assert len((await jwks_of(http, on.url))["keys"]) == 1
    off = await start_resolver(make_settings(database_url=database_url))
    async with http.get(f"{off.url}/.well-known/jwks.json") as resp:
        assert resp.status == 404


@BOTH_ENGINES
async def test_proxy_mode_replaces_a_client_assertion_and_serves_no_check(
    make_settings, database_url, start_resolver, http, upstream, map_claim, signing_key
):
    echo, port = upstream
    await map_claim("alice")
    r = await start_resolver(
        make_settings(
            database_url=database_url,
            upstream=f"http://127.0.0.1:{port}",
            assertion={"enabled": True},
        )
    )
    token = signing_key.sign(sub="alice")
    headers = {
        "Authorization": f"Bearer {token}",
        "X-JWTKeyMap-Assertion": "forged",
        "x_jwtkeymap_assertion": "forged",
    }
    async with http.post(f"{r.url}/v1/chat/completions", headers=headers, data=b"{}") as resp:
        assert resp.status == 200
        assert HEADER not in resp.headers  # never to the client
    sent = echo.identity_of()[HEADER]
    assert len(sent) == 1 and sent[0] != "forged" and sent[0].count(".") == 2
    # It verifies against the keys the proxy's own listener publishes (what LiteLLM in the
    # pod reads over loopback), and that path is the resolver's, never forwarded.
    published = await jwks_of(http, r.url)
    said = verify(
        sent[0],
        verifying_keys(json.dumps(published)),
        audience="litellm",
        issuer="jwtkeymap",
        now=r.service.clock.now().timestamp(),
    )
    assert said.decision == "mapped"
    for path in ("/check", "/check/v1/models", "/check?x=1"):
        async with http.get(f"{r.url}{path}", headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 404
            assert HEADER not in resp.headers and "x-jwtkeymap-key-hash" not in resp.headers
    assert len(echo.requests) == 1  # /check was never forwarded


async def test_rotated_key_file_is_followed_without_a_gap(
    make_settings, database_url, start_resolver, http, map_claim, signing_key, tmp_path
):
    await map_claim("alice")
    old, new = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "keys.pem"
    first = write_signing_keys(path, old)
    r = await start_resolver(
        make_settings(database_url=database_url, assertion={"signing_key_file": path})
    )
    # Step 1: publish the new key second; the old one still signs.
    both = write_signing_keys(path, old, new)
    assert r.service.reload_signing_keys()
    assert [k["kid"] for k in (await jwks_of(http, r.url))["keys"]] == [k.kid for k in both]
    token = signing_key.sign(sub="alice")
    async with http.get(f"{r.url}/check", headers={"Authorization": f"Bearer {token}"}) as resp:
        kid_before = _kid(resp.headers[HEADER])
    assert kid_before == first[0].kid
    # Step 2: move it first; it signs from now on, the old one is still published.
    write_signing_keys(path, new, old)
    assert r.service.reload_signing_keys()
    assert not r.service.reload_signing_keys()  # unchanged file: nothing to do
    async with http.get(f"{r.url}/check", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert _kid(resp.headers[HEADER]) == both[1].kid


def _kid(token: str) -> str:
    import jwt

    return str(jwt.get_unverified_header(token)["kid"])
