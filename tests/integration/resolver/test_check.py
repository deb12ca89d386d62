"""The /check contract over HTTP, against the real database."""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from jwtkeymap.core.errors import ConfigError
from jwtkeymap.core.keys import fingerprint
from jwtkeymap.demo.ports import free_port
from jwtkeymap.demo.signing import SigningKey

IDENTITY = (
    "x-jwtkeymap-decision",
    "x-jwtkeymap-key-hash",
    "x-jwtkeymap-team-id",
    "x-jwtkeymap-user-id",
    "x-jwtkeymap-org-id",
    "x-jwtkeymap-assertion",
)
# Assertions are off in these tests: the unset assertion header is always named for removal.
UNSIGNED = {"x-jwtkeymap-assertion"}


def removed(resp: aiohttp.ClientResponse) -> set[str]:
    value = resp.headers.get("x-envoy-auth-headers-to-remove", "")
    return {h.strip() for h in value.split(",") if h.strip()}


async def error_of(resp: aiohttp.ClientResponse) -> dict:
    body = json.loads(await resp.read())
    assert body["error"]["type"] == "auth_error"
    assert body["error"]["code"] == resp.status
    return body["error"]


async def test_mapped_token_gets_200_with_identity_headers(
    make_settings, database_url, start_resolver, http, map_claim, signing_key: SigningKey
):
    rows = await map_claim("alice")
    r = await start_resolver(make_settings(database_url=database_url))
    token = signing_key.sign(sub="alice")

    async with http.post(
        f"{r.url}/check/v1/chat/completions?x=1", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["x-jwtkeymap-decision"] == "mapped"
        assert resp.headers["x-jwtkeymap-key-hash"] == rows.key.token_hash
        assert resp.headers["x-jwtkeymap-team-id"] == "team-a"
        assert resp.headers["x-jwtkeymap-user-id"] == "user-a"
        assert resp.headers["x-jwtkeymap-org-id"] == "org-a"
        assert removed(resp) == UNSIGNED
        assert await resp.read() == b""


async def test_unknown_ids_are_named_for_removal(
    make_settings, database_url, start_resolver, http, map_claim, signing_key
):
    await map_claim("bob", team_id="t", user_id=None, org_id=None)
    r = await start_resolver(make_settings(database_url=database_url))
    async with http.get(
        f"{r.url}/check", headers={"Authorization": f"Bearer {signing_key.sign(sub='bob')}"}
    ) as resp:
        assert resp.status == 200
        assert "x-jwtkeymap-user-id" not in resp.headers
        assert removed(resp) == {"x-jwtkeymap-user-id", "x-jwtkeymap-org-id"} | UNSIGNED


async def test_every_method_and_tail_is_a_check(
    make_settings, database_url, start_resolver, http, map_claim, signing_key
):
    await map_claim("carol")
    r = await start_resolver(make_settings(database_url=database_url))
    auth = {"Authorization": f"Bearer {signing_key.sign(sub='carol')}"}
    for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        for path in ("/check", "/check/", "/check/a/b%20c"):
            async with http.request(method, r.url + path, headers=auth, data=b"ignored") as resp:
                assert resp.status == 200, (method, path)
                assert resp.headers["x-jwtkeymap-decision"] == "mapped"


async def test_fallback_and_admin_allow_without_key(
    make_settings, database_url, start_resolver, http, signing_key
):
    settings = make_settings(
        database_url=database_url,
        unregistered_client_behavior="fallback_team_mapping",
        admin={"claim": "scope", "value": "litellm_proxy_admin"},
    )
    r = await start_resolver(settings)
    cases = [
        (signing_key.sign(sub="nobody"), "fallback"),
        (signing_key.sign(sub="root", scope="openid litellm_proxy_admin"), "admin"),
    ]
    for token, decision in cases:
        async with http.get(f"{r.url}/check", headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
            assert resp.headers["x-jwtkeymap-decision"] == decision
            assert "x-jwtkeymap-key-hash" not in resp.headers
            assert removed(resp) == set(IDENTITY[1:])


async def test_strip_authorization_names_it_for_removal(
    make_settings, database_url, start_resolver, http, map_claim, signing_key
):
    await map_claim("dave")
    r = await start_resolver(make_settings(database_url=database_url, strip_authorization=True))
    token = signing_key.sign(sub="dave")
    async with http.get(f"{r.url}/check", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200
        assert "authorization" in removed(resp)


async def test_bad_tokens_get_401_with_www_authenticate(
    make_settings, database_url, start_resolver, http, signing_key
):
    r = await start_resolver(make_settings(database_url=database_url))
    stranger = SigningKey(signing_key.issuer, kid="k1")
    cases = {
        "missing": None,
        "not bearer": "Basic dXNlcjpwYXNz",
        "empty bearer": "Bearer ",
        "malformed": "Bearer not.a.jwt",
        "expired": f"Bearer {signing_key.sign(sub='alice', ttl=-120)}",
        "badly signed": f"Bearer {stranger.sign(sub='alice')}",
        "wrong audience": f"Bearer {signing_key.sign(sub='alice', audience='other')}",
        "opaque without userinfo": "Bearer opaque-token-value",
    }
    for name, header in cases.items():
        headers = {"Authorization": header} if header is not None else {}
        async with http.get(f"{r.url}/check", headers=headers) as resp:
            assert resp.status == 401, name
            assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"', name
            error = await error_of(resp)
            assert error["reason"] == "invalid_token", name
            for h in IDENTITY:
                assert h not in resp.headers


async def test_policy_denials_have_status_and_reason(
    make_settings, database_url, start_resolver, http, map_claim, signing_key, db
):
    await map_claim("off@x", claim_name="email", active=False)
    blocked = await map_claim("blocked@x", claim_name="email")
    await db.execute(
        'UPDATE "LiteLLM_VerificationToken" SET blocked = true WHERE token = $1',
        blocked.key.token_hash,
    )
    expired = await map_claim("expired@x", claim_name="email")
    await db.execute(
        "UPDATE \"LiteLLM_VerificationToken\" SET expires = now() - interval '1 day' "
        "WHERE token = $1",
        expired.key.token_hash,
    )
    r = await start_resolver(
        make_settings(
            database_url=database_url, claim_field="email", unregistered_client_behavior="reject"
        )
    )
    cases = [
        ({"email": "stranger@x"}, 403, "unregistered_client"),
        ({"email": "off@x"}, 403, "mapping_inactive"),
        ({"email": "blocked@x"}, 403, "key_blocked"),
        ({"email": "expired@x"}, 403, "key_expired"),
        ({"email": ["a", "b"]}, 403, "claim_invalid"),
        ({"email": True}, 403, "claim_invalid"),
        ({"sub": "no-email"}, 403, "claim_missing"),
    ]
    for claims, status, reason in cases:
        token = signing_key.sign(claims)
        async with http.get(f"{r.url}/check", headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == status, claims
            error = await error_of(resp)
            assert error["reason"] == reason, claims
            assert error["message"], claims
            assert "x-jwtkeymap-decision" not in resp.headers


async def test_auto_register_creates_key_and_mapping(
    make_settings, database_url, start_resolver, http, signing_key, db
):
    r = await start_resolver(
        make_settings(
            database_url=database_url,
            unregistered_client_behavior="auto_register",
            auto_register={"team_id_claim": "team"},
        )
    )
    token = signing_key.sign(sub="newbie", team="blue")
    async with http.get(f"{r.url}/check", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200
        assert resp.headers["x-jwtkeymap-decision"] == "auto_registered"
        assert resp.headers["x-jwtkeymap-team-id"] == "blue"
        key_hash = resp.headers["x-jwtkeymap-key-hash"]
    assert await db.fetchval(
        'SELECT count(*) FROM "LiteLLM_JWTKeyMapping" WHERE token = $1', key_hash
    )
    async with http.get(f"{r.url}/check", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.headers["x-jwtkeymap-decision"] == "mapped"
        assert resp.headers["x-jwtkeymap-key-hash"] == key_hash
    no_team = signing_key.sign(sub="loner")
    async with http.get(f"{r.url}/check", headers={"Authorization": f"Bearer {no_team}"}) as resp:
        assert resp.status == 403
        assert (await error_of(resp))["reason"] == "team_required"


async def test_auto_register_without_database_is_500(
    make_settings, start_resolver, http, signing_key
):
    r = await start_resolver(make_settings(unregistered_client_behavior="auto_register"))
    token = signing_key.sign(sub="x")
    async with http.get(f"{r.url}/check", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 500
        assert (await error_of(resp))["reason"] == "database_required"


async def test_unreachable_database_is_503_and_not_ready(
    make_settings, start_resolver, http, signing_key
):
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    r = await start_resolver(
        make_settings(
            database_url=dead, db_timeout_seconds=0.5, unregistered_client_behavior="reject"
        )
    )
    token = signing_key.sign(sub="alice")
    async with http.get(f"{r.url}/check", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"].isdigit()
        assert (await error_of(resp))["reason"] == "database_unavailable"
    async with http.get(f"{r.url}/readyz") as resp:
        assert resp.status == 503
        body = await resp.json()
        assert body["ready"] is False
        assert body["checks"]["database"]["ok"] is False
        assert body["checks"]["invalidation"]["ok"] is False
    async with http.get(f"{r.url}/healthz") as resp:
        assert resp.status == 200


async def test_readyz_reports_database_jwks_and_channel(
    make_settings, database_url, start_resolver, http
):
    r = await start_resolver(make_settings(database_url=database_url))
    await r.wait_ready(http)
    async with http.get(f"{r.url}/readyz") as resp:
        body = await resp.json()
    assert body["checks"]["database"]["ok"] is True
    assert "issuer-scoped" in body["checks"]["database"]["schema"]
    assert all(body["checks"]["jwks"].values())
    assert body["checks"]["invalidation"]["postgres"]["connected"] is True


async def test_metrics_count_decisions_without_leaking_secrets(
    make_settings, database_url, start_resolver, http, map_claim, signing_key
):
    rows = await map_claim("erin")
    r = await start_resolver(make_settings(database_url=database_url))
    token = signing_key.sign(sub="erin")
    for _ in range(3):
        async with http.get(f"{r.url}/check", headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
    async with http.get(f"{r.url}/check") as resp:
        assert resp.status == 401
    async with http.get(f"{r.url}/metrics") as resp:
        text = (await resp.read()).decode()
    assert 'jwtkeymap_decisions_total{decision="mapped",reason=""} 3.0' in text
    assert 'jwtkeymap_decisions_total{decision="denied",reason="invalid_token"} 1.0' in text
    # The first check reads the database; the next two reuse the whole answer.
    assert 'jwtkeymap_cache_misses_total{cache="mapping"} 1.0' in text
    assert 'jwtkeymap_cache_hits_total{cache="answer"} 2.0' in text
    assert 'jwtkeymap_cache_misses_total{cache="answer"} 1.0' in text
    assert 'jwtkeymap_check_duration_seconds_bucket{le="+Inf"} 4.0' in text
    assert "jwtkeymap_check_duration_seconds_count 4.0" in text
    assert 'jwtkeymap_db_query_duration_seconds_count{operation="lookup"} 1.0' in text
    assert "jwtkeymap_invalidation_connected 1.0" in text
    for secret in (token, rows.key.token_hash):
        assert secret not in text
    assert fingerprint(rows.key.token_hash) not in text  # not even fingerprints per key


async def test_metrics_listen_moves_the_metrics_off_the_check_listener(
    make_settings, database_url, start_resolver, http, signing_key
):
    address = f"127.0.0.1:{free_port()}"
    r = await start_resolver(make_settings(database_url=database_url, metrics_listen=address))
    async with http.get(f"{r.url}/check") as resp:
        assert resp.status == 401
    async with http.get(f"{r.url}/metrics") as resp:
        assert resp.status == 404
    async with http.get(f"http://{address}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    assert 'jwtkeymap_decisions_total{decision="denied",reason="invalid_token"} 1.0' in text
    async with http.get(f"http://{address}/check") as resp:
        assert resp.status == 404


async def test_a_metrics_listen_address_taken_fails_the_start(
    make_settings, database_url, start_resolver
):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(ConfigError, match=f"metrics_listen {address}: "):
            await start_resolver(make_settings(database_url=database_url, metrics_listen=address))


async def test_pool_outage_is_503_not_allow(
    make_settings, database_url, start_resolver, http, signing_key, pg_server
):
    """A database dropped under a running resolver answers 503, never an allow."""
    r = await start_resolver(
        make_settings(database_url=database_url, unregistered_client_behavior="reject")
    )
    name = database_url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(pg_server.admin_url)
    try:
        await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await conn.close()
    token = signing_key.sign(sub="alice")
    async with http.get(f"{r.url}/check", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 503
        assert (await error_of(resp))["reason"] == "database_unavailable"


async def test_runner_fast_path_and_router_agree_on_every_path(
    make_settings, database_url, map_claim, signing_key, http, monkeypatch
):
    """ResolverRunner answers /check before the router; a plain AppRunner uses the routes.

    Both must give the same status for every path, so the fast path never widens
    (or narrows) what counts as a check.
    """
    from jwtkeymap.resolver.handlers import create_app
    from jwtkeymap.resolver.server import ResolverRunner
    from support.servers import serve

    await map_claim("dana")
    auth = {"Authorization": f"Bearer {signing_key.sign(sub='dana')}"}
    paths = (
        "/check", "/check/", "/check/v1/chat/completions?stream=true", "/check//x",
        "/check/a%2Fb", "/check/a%20b", "/%63heck/x", "/check%2Fx", "/checkx", "/check.json",
        "/CHECK", "/healthz", "/readyz", "/nope", "/",
    )  # fmt: skip
    routed: list[str] = []
    resolve = web.UrlDispatcher.resolve

    async def counting(self, request):
        routed.append(request.rel_url.path_safe)
        return await resolve(self, request)

    monkeypatch.setattr(web.UrlDispatcher, "resolve", counting)
    seen: dict[str, list[tuple[int, str | None]]] = {}
    for runner_class in (ResolverRunner, web.AppRunner):
        app = create_app(make_settings(database_url=database_url))
        async with serve(app, runner_class=runner_class) as url:
            for path in paths:
                async with http.get(url + path, headers=auth) as resp:
                    await resp.read()
                    seen.setdefault(path, []).append(
                        (resp.status, resp.headers.get("x-jwtkeymap-decision"))
                    )
        if runner_class is ResolverRunner:
            # The check never reached the router; everything else did.
            assert not [p for p in routed if p.startswith("/check/") or p == "/check"]
            assert "/healthz" in routed and "/checkx" in routed
            routed.clear()
    assert "/check" in routed  # the plain runner routes the check
    for path, (fast, slow) in seen.items():
        assert fast == slow, path
    assert seen["/check/v1/chat/completions?stream=true"][0] == (200, "mapped")
    assert seen["/checkx"][0] == (404, None)
    assert seen["/healthz"][0] == (200, None)


@pytest.mark.parametrize("stored", ["a" * 62 + "\r\n", "é" * 64, "sk-plaintext-pasted-in"])
async def test_a_malformed_stored_key_hash_is_a_clear_denial(
    make_settings, database_url, start_resolver, http, db, signing_key, stored
):
    """A hash is used only as 64 lowercase hex: anything else is a 500 with a reason, every
    time, for every concurrent caller, and counted (issue 14 F9)."""
    await db.execute('INSERT INTO "LiteLLM_VerificationToken" (token) VALUES ($1)', stored)
    await db.execute(
        'INSERT INTO "LiteLLM_JWTKeyMapping" (id, jwt_claim_name, jwt_claim_value, token) '
        "VALUES ('bad-1', 'sub', 'mallory', $1)",
        stored,
    )
    r = await start_resolver(make_settings(database_url=database_url))
    auth = {"Authorization": f"Bearer {signing_key.sign(sub='mallory')}"}

    async def check() -> tuple[int, str, dict[str, str]]:
        async with http.get(f"{r.url}/check", headers=auth) as resp:
            return resp.status, (await error_of(resp))["reason"], dict(resp.headers)

    for status, reason, headers in await asyncio.wait_for(
        asyncio.gather(*(check() for _ in range(6))), 10
    ):
        assert (status, reason) == (500, "key_hash_invalid")
        assert not any(h.lower().startswith("x-jwtkeymap-") for h in headers)
    async with http.get(f"{r.url}/metrics") as resp:
        text = await resp.text()
    assert 'jwtkeymap_decisions_total{decision="denied",reason="key_hash_invalid"} 6.0' in text
