"""Token sources through the resolver: a real JWKS server with key rotation, and opaque
tokens resolved by an OIDC userinfo endpoint."""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from jwtkeymap.core.clock import ManualClock
from jwtkeymap.demo.ports import free_port
from jwtkeymap.demo.signing import SigningKey
from support.servers import IdentityProvider, serve

ISSUER = "https://rotating-idp.test.example"


async def status_of(http, url: str, token: str) -> int:
    async with http.get(f"{url}/check", headers={"Authorization": f"Bearer {token}"}) as resp:
        await resp.read()
        return resp.status


async def test_jwks_rotation_new_kid_picked_up_removed_kid_rejected(
    make_settings, start_resolver, http
):
    k1, k2 = SigningKey(ISSUER, kid="k1"), SigningKey(ISSUER, kid="k2")
    idp = IdentityProvider(k1)
    clock = ManualClock(start=dt.datetime.now(dt.UTC))
    async with serve(idp.app) as idp_url:
        settings = make_settings(
            issuers=[{"issuer": ISSUER, "jwks_url": f"{idp_url}/jwks.json", "audience": "litellm"}],
            jwks_min_refresh_seconds=0,
            jwks_max_age_seconds=60,
        )
        r = await start_resolver(settings, clock=clock)
        await r.wait_ready(http)
        assert idp.jwks_fetches == 1
        old = k1.sign(sub="alice")
        assert await status_of(http, r.url, old) == 200

        # An unknown kid is refused while the IdP does not publish it ...
        assert await status_of(http, r.url, k2.sign(sub="alice")) == 401
        # ... and picked up as soon as it does, without a restart.
        idp.keys = [k1, k2]
        assert await status_of(http, r.url, k2.sign(sub="alice")) == 200
        fetches = idp.jwks_fetches

        # k1 is withdrawn: once the key set is refreshed, k1 tokens are refused,
        # including one that was verified (and cached) before.
        idp.keys = [k2]
        clock.advance(61)
        assert await status_of(http, r.url, k1.sign(sub="alice", jti="fresh")) == 401
        assert idp.jwks_fetches > fetches
        assert await status_of(http, r.url, old) == 401
        assert await status_of(http, r.url, k2.sign(sub="alice")) == 200


async def test_jwks_unreachable_at_start_is_not_ready_then_recovers(
    make_settings, start_resolver, http
):
    k1 = SigningKey(ISSUER, kid="k1")
    idp = IdentityProvider(k1)
    port = free_port()  # nothing listens there until the IdP starts below
    settings = make_settings(
        issuers=[
            {
                "issuer": ISSUER,
                "jwks_url": f"http://127.0.0.1:{port}/jwks.json",
                "audience": "litellm",
            }
        ],
        jwks_min_refresh_seconds=1,
    )
    r = await start_resolver(settings)
    assert not await r.ready(http)
    # Keys never loaded: a retryable outage (503), not a bad token (issue 14, F4).
    assert await status_of(http, r.url, k1.sign(sub="alice")) == 503
    async with serve(idp.app, port=port):
        await r.wait_ready(http)
        assert await status_of(http, r.url, k1.sign(sub="alice")) == 200


async def test_opaque_token_resolved_by_userinfo_and_cached(
    make_settings, database_url, start_resolver, http, map_claim
):
    idp = IdentityProvider()
    idp.opaque["opaque-alice"] = {"sub": "alice-opaque", "email": "alice@example.com"}
    clock = ManualClock(start=dt.datetime.now(dt.UTC))
    rows = await map_claim("alice-opaque")
    async with serve(idp.app) as idp_url:
        settings = make_settings(
            database_url=database_url,
            unregistered_client_behavior="reject",
            oidc_userinfo_url=f"{idp_url}/userinfo",
            oidc_userinfo_ttl_seconds=30,
        )
        r = await start_resolver(settings, clock=clock)
        for _ in range(3):
            async with http.get(
                f"{r.url}/check", headers={"Authorization": "Bearer opaque-alice"}
            ) as resp:
                assert resp.status == 200
                assert resp.headers["x-jwtkeymap-key-hash"] == rows.key.token_hash
        assert idp.userinfo_calls == 1  # cached by sha256(token)

        clock.advance(31)
        assert await status_of(http, r.url, "opaque-alice") == 200
        assert idp.userinfo_calls == 2  # the TTL ran out

        assert await status_of(http, r.url, "opaque-unknown") == 401
        # A JWT-shaped token still goes through signature verification, not userinfo.
        calls = idp.userinfo_calls
        assert await status_of(http, r.url, "a.b.c") == 401
        assert idp.userinfo_calls == calls

        idp.userinfo_status = 502
        async with http.get(
            f"{r.url}/check", headers={"Authorization": "Bearer opaque-other"}
        ) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"]
            assert (await resp.json())["error"]["reason"] == "identity_provider_unavailable"


async def test_one_issuers_broken_jwks_never_stops_the_resolver_or_the_others(
    make_settings, start_resolver, http
):
    good, broken = SigningKey(ISSUER, kid="k1"), SigningKey("https://broken.example", kid="b1")
    idp = IdentityProvider(good)
    documents = [{"keys": []}, None, [], {"keys": [broken.jwk()]}]
    bad = web.Application()

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response(documents[0])

    bad.router.add_get("/jwks.json", jwks)
    async with serve(idp.app) as idp_url, serve(bad) as bad_url:
        settings = make_settings(
            issuers=[
                {"issuer": ISSUER, "jwks_url": f"{idp_url}/jwks.json", "audience": "litellm"},
                {
                    "issuer": broken.issuer,
                    "jwks_url": f"{bad_url}/jwks.json",
                    "audience": "litellm",
                },
            ],
            jwks_min_refresh_seconds=0,
        )
        r = await start_resolver(settings)  # starts: one issuer's glitch is not fatal
        for _ in range(3):
            assert await status_of(http, r.url, good.sign(sub="alice")) == 200
            assert await status_of(http, r.url, broken.sign(sub="alice")) == 503
            documents.pop(0)
        async with http.get(f"{r.url}/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json())["checks"]["jwks"] == {ISSUER: True, broken.issuer: False}
        async with http.get(f"{r.url}/metrics") as resp:
            assert f'jwtkeymap_jwks_loaded{{issuer="{broken.issuer}"}} 0.0' in await resp.text()
        # The IdP recovers: its tokens are answered, and the others never noticed.
        assert await status_of(http, r.url, broken.sign(sub="alice")) == 200
        await r.wait_ready(http)
