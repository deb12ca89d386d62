"""The last hop: a real LiteLLM proxy serves each JWT client as its mapped virtual key.

Clients send a JWT; the resolver (reverse-proxy mode, or check mode behind real
Envoy ext_authz or real nginx auth_request; or nginx as its own engine) resolves it to a key and sends a signed assertion upstream;
jwtkeymap's hook in LiteLLM loads that key with LiteLLM's own validation. So
LiteLLM's own answers (model access, budget, rate limit) reach the client
unchanged, and spend lands on the mapped key.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from litellm_harness import MASTER_KEY, REQUEST_COST, LiteLLMProxy

from jwtkeymap.core.assertion import AssertionSigner, SigningKey
from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.core.db.store import Store
from jwtkeymap.core.keys import KeyIdentity, hash_key
from jwtkeymap.core.settings import KeyDefaults
from jwtkeymap.demo.polling import wait_until
from jwtkeymap.demo.ports import free_port
from jwtkeymap.resolver.handlers import SERVICE, create_app
from jwtkeymap.resolver.server import ResolverRunner, served_by_nginx
from support.servers import FRONT_PROXIES, serve

HEADER = "x-jwtkeymap-assertion"


@pytest.fixture
async def litellm_store(litellm_database_url: str) -> AsyncIterator[Store]:
    """A jwtkeymap store on LiteLLM's database."""
    store = await Store.open(litellm_database_url, min_size=1, max_size=4)
    yield store
    await store.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session."""
    async with aiohttp.ClientSession() as session:
        yield session


class Gateway:
    """What a client talks to: the resolver in front of LiteLLM, one way or the other."""

    def __init__(self, url: str, store: Store, litellm: LiteLLMProxy) -> None:
        self.url = url
        self.store = store
        self.litellm = litellm

    async def key(self, **limits: Any) -> tuple[str, KeyIdentity]:
        """A new virtual key with ``limits`` (KeyDefaults fields)."""
        alias = f"hop-{uuid.uuid4().hex[:8]}"
        return await self.store.create_key(
            NewKey(alias=alias, defaults=KeyDefaults(**limits)), actor="test"
        )

    async def client(self, key: KeyIdentity) -> str:
        """A claim value mapped to ``key``."""
        sub = f"client-{uuid.uuid4().hex[:8]}"
        await self.store.add_mapping(MappingIdentity("", "sub", sub), key.token_hash, actor="test")
        return sub


async def chat(
    http: aiohttp.ClientSession,
    url: str,
    bearer: str,
    model: str = "fake",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """One chat completion: (status, JSON body)."""
    async with http.post(
        f"{url}/chat/completions",
        headers={"Authorization": f"Bearer {bearer}", **(headers or {})},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
    ) as resp:
        return resp.status, json.loads(await resp.read() or b"{}")


@pytest.fixture(params=["proxy", "proxy-nginx", "envoy", "nginx"])
async def gateway(
    request, litellm_proxy, litellm_store, litellm_database_url, assertion_keys, make_settings
) -> AsyncIterator[Gateway]:
    """The resolver in reverse-proxy mode (its own engine, or nginx as its engine), or in
    check mode behind Envoy or nginx, in front of LiteLLM."""
    proxy_mode = request.param.startswith("proxy")
    port = free_port()
    settings = make_settings(
        database_url=litellm_database_url,
        unregistered_client_behavior="reject",
        upstream=litellm_proxy.url if proxy_mode else None,
        proxy_engine="nginx" if request.param == "proxy-nginx" else "resolver",
        listen=f"127.0.0.1:{port}",
        assertion={"signing_key_file": assertion_keys.key_file},
    )
    if request.param == "proxy-nginx":
        async with served_by_nginx(settings):
            yield Gateway(f"http://127.0.0.1:{port}", litellm_store, litellm_proxy)
        return
    async with serve(create_app(settings), port=port, runner_class=ResolverRunner) as url:
        if proxy_mode:
            yield Gateway(url, litellm_store, litellm_proxy)
            return
        front = FRONT_PROXIES[request.param](resolver_port=port, upstream_port=litellm_proxy.port)
        await front.start()
        try:
            yield Gateway(front.url, litellm_store, litellm_proxy)
        finally:
            await asyncio.to_thread(front.stop)


async def spend_of(database_url: str, key: KeyIdentity) -> tuple[float, int, float]:
    """(key row spend, number of spend logs, their total) of a key."""
    conn = await asyncpg.connect(database_url)
    try:
        spend = await conn.fetchval(
            'SELECT spend FROM "LiteLLM_VerificationToken" WHERE token = $1', key.token_hash
        )
        logs = await conn.fetchrow(
            'SELECT count(*) AS n, coalesce(sum(spend), 0) AS total FROM "LiteLLM_SpendLogs" '
            "WHERE api_key = $1",
            key.token_hash,
        )
    finally:
        await conn.close()
    return float(spend), int(logs["n"]), float(logs["total"])


async def test_mapped_client_is_served_and_charged(
    gateway, http, signing_key, litellm_database_url
):
    _, key = await gateway.key(models=["fake"])
    token = signing_key.sign(sub=await gateway.client(key))
    status, body = await chat(http, gateway.url, token)
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "hello from fake"

    async def charged() -> bool:
        spend, logs, _total = await spend_of(litellm_database_url, key)
        return logs == 1 and spend == pytest.approx(REQUEST_COST)

    await wait_until(charged, timeout=30, what="spend on the mapped key")
    assert (await spend_of(litellm_database_url, key))[2] == pytest.approx(REQUEST_COST)


async def test_a_clients_own_assertion_is_replaced_not_passed_on(
    gateway, http, signing_key, assertion_keys, litellm_database_url
):
    _, mine = await gateway.key(models=["fake"])
    _, other = await gateway.key(models=["fake"])
    token = signing_key.sign(sub=await gateway.client(mine))
    # Even a genuine assertion for another key (replayed from a log, say) goes no further
    # than the resolver's side: LiteLLM gets the one made for this client's own key.
    signer = AssertionSigner([_session_key(assertion_keys.key_file.read_bytes())])
    replayed = signer.assertion("mapped", other, None)
    status, body = await chat(http, gateway.url, token, headers={HEADER: replayed})
    assert status == 200, body

    async def charged() -> bool:
        return (await spend_of(litellm_database_url, mine))[1] == 1

    await wait_until(charged, timeout=30, what="spend on the client's own key")
    assert await spend_of(litellm_database_url, other) == (0.0, 0, 0.0)


async def test_litellms_own_refusals_reach_the_client_unchanged(
    gateway, http, signing_key, litellm_database_url
):
    # The same limits on two keys: one used plainly, one through the resolver.
    plain, _ = await gateway.key(models=["fake"], max_budget=0.01)
    _, mapped = await gateway.key(models=["fake"], max_budget=0.01)
    token = signing_key.sign(sub=await gateway.client(mapped))
    direct = gateway.litellm.url

    # A model outside the key's models.
    want = await chat(http, direct, plain, model="other")
    got = await chat(http, gateway.url, token, model="other")
    assert want[0] in (401, 403) and got[0] == want[0]
    assert got[1]["error"]["type"] == want[1]["error"]["type"]

    # An exhausted budget (0.05 per request, 0.01 allowed): the first passes, then refused.
    for bearer, url in ((plain, direct), (token, gateway.url)):
        assert (await chat(http, url, bearer))[0] == 200
    conn = await asyncpg.connect(litellm_database_url)
    try:
        await conn.execute(
            'UPDATE "LiteLLM_VerificationToken" SET spend = 1 WHERE token = ANY($1::text[])',
            [mapped.token_hash, hash_key(plain)],
        )
    finally:
        await conn.close()
    await wait_until(
        lambda: _refused(http, direct, plain), timeout=90, what="LiteLLM's own budget refusal"
    )
    want = await chat(http, direct, plain)
    got = await chat(http, gateway.url, token)
    assert want[0] >= 400 and got[0] == want[0], (want, got)
    assert got[1]["error"]["type"] == want[1]["error"]["type"]


async def test_rpm_limit_is_litellms(gateway, http, signing_key):
    _, key = await gateway.key(models=["fake"], rpm_limit=1)
    token = signing_key.sign(sub=await gateway.client(key))
    statuses = [(await chat(http, gateway.url, token))[0] for _ in range(3)]
    assert statuses[0] == 200 and 429 in statuses[1:], statuses


async def _refused(http: aiohttp.ClientSession, url: str, key: str) -> bool:
    return (await chat(http, url, key))[0] != 200


# -- spoofing: everything that is not the resolver's signed assertion is refused ----------


def _session_key(pem: bytes) -> SigningKey:
    private = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    return SigningKey.of(private)


def _assertion(signer_key: SigningKey, key_hash: str | None, **overrides: Any) -> str:
    now = int(time.time())
    claims = {"iss": "jwtkeymap", "aud": "litellm", "iat": now, "exp": now + 30,
              "decision": "mapped", **overrides}  # fmt: skip
    if key_hash is not None:
        claims["key_hash"] = key_hash
    return jwt.encode(
        claims, signer_key.private, algorithm=signer_key.algorithm, headers={"kid": signer_key.kid}
    )


async def test_spoofed_identity_never_reaches_a_key(
    litellm_proxy, litellm_store, http, signing_key, assertion_keys
):
    plaintext, key = await litellm_store.create_key(
        NewKey(alias=f"spoof-{uuid.uuid4().hex[:8]}", defaults=KeyDefaults(models=["fake"])),
        actor="test",
    )
    url = litellm_proxy.url
    real = _session_key(assertion_keys.key_file.read_bytes())
    stranger = SigningKey.generate()
    jwt_token = signing_key.sign(sub="whoever")
    forged = {
        "unknown kid": _assertion(stranger, key.token_hash),
        "expired": _assertion(real, key.token_hash, iat=int(time.time()) - 100,
                              exp=int(time.time()) - 60),
        "wrong audience": _assertion(real, key.token_hash, aud="someone-else"),
        "fallback naming a key": _assertion(real, key.token_hash, decision="fallback"),
        "not a JWS": "forged",
    }  # fmt: skip
    for name, value in forged.items():
        status, body = await chat(http, url, jwt_token, headers={HEADER: value})
        assert status == 401, (name, body)
        assert "jwtkeymap" in body["error"]["message"], (name, body)
    # Unsigned identity headers, a JWT alone, a bare key hash: LiteLLM's own auth refuses.
    unsigned = {"x-jwtkeymap-decision": "mapped", "x-jwtkeymap-key-hash": key.token_hash}
    assert (await chat(http, url, jwt_token, headers=unsigned))[0] == 401
    assert (await chat(http, url, jwt_token))[0] == 401
    assert (await chat(http, url, key.token_hash))[0] == 401
    # An admin assertion grants nothing without the master key.
    admin = _assertion(real, None, decision="admin")
    assert (await chat(http, url, jwt_token, headers={HEADER: admin}))[0] == 401
    # The plain key and the master key still work, with or without the hook.
    assert (await chat(http, url, plaintext))[0] == 200
    assert (await chat(http, url, MASTER_KEY))[0] == 200
    # A genuine assertion for the key is served as that key.
    signer = AssertionSigner([real])
    good = signer.assertion("mapped", key, None)
    assert (await chat(http, url, jwt_token, headers={HEADER: good}))[0] == 200


async def test_assertion_key_rotation_refuses_nothing(
    litellm_proxy, litellm_store, litellm_database_url, assertion_keys, make_settings, http,
    signing_key,
):  # fmt: skip
    _, key = await litellm_store.create_key(
        NewKey(alias=f"rot-{uuid.uuid4().hex[:8]}", defaults=KeyDefaults(models=["fake"])),
        actor="test",
    )
    sub = f"rot-{uuid.uuid4().hex[:8]}"
    await litellm_store.add_mapping(MappingIdentity("", "sub", sub), key.token_hash, actor="test")
    settings = make_settings(
        database_url=litellm_database_url,
        unregistered_client_behavior="reject",
        upstream=litellm_proxy.url,
        assertion={"signing_key_file": assertion_keys.key_file},
    )
    app = create_app(settings)
    token = signing_key.sign(sub=sub)
    old = serialization.load_pem_private_key(assertion_keys.key_file.read_bytes(), password=None)
    new = ed25519.Ed25519PrivateKey.generate()
    async with serve(app, runner_class=ResolverRunner) as url:
        service = app[SERVICE]
        statuses: list[int] = []
        stop = asyncio.Event()

        async def traffic() -> None:
            while not stop.is_set():
                statuses.append((await chat(http, url, token))[0])

        runners = [asyncio.create_task(traffic()) for _ in range(3)]
        try:
            await wait_until(lambda: len(statuses) >= 3, timeout=30, what="traffic")
            assertion_keys.write(old, new)  # 1: publish the new key second
            assert service.reload_signing_keys()
            seen = len(statuses)
            await wait_until(lambda: len(statuses) >= seen + 3, timeout=30, what="traffic")
            assertion_keys.write(new, old)  # 2: the new key signs
            assert service.reload_signing_keys()
            seen = len(statuses)
            await wait_until(lambda: len(statuses) >= seen + 3, timeout=30, what="traffic")
        finally:
            stop.set()
            await asyncio.gather(*runners)
            assertion_keys.write(old)  # the session's key again, for the other tests
    assert statuses and set(statuses) == {200}, statuses


async def test_auto_registered_key_limits_are_enforced_by_litellm(
    litellm_proxy, litellm_store, litellm_database_url, make_settings, http, signing_key
):
    settings = make_settings(
        database_url=litellm_database_url,
        unregistered_client_behavior="auto_register",
        upstream=litellm_proxy.url,
        assertion={"enabled": True},
        auto_register={
            "user_id_claim": None,
            "key_defaults": {"models": ["fake"], "max_budget": 10, "rpm_limit": 2},
        },
    )
    app = create_app(settings)
    # The hook trusts the session's key file only: publish this resolver's ephemeral key there.
    async with serve(app, runner_class=ResolverRunner) as url:
        signer = app[SERVICE].signer
        assert signer is not None
        jwks_file = Path(litellm_proxy.extra_env["JWTKEYMAP_HOOK_JWKS"])
        original = jwks_file.read_text()
        published = json.loads(original)
        published["keys"] += [dict(k.jwk) for k in signer.keys]
        jwks_file.write_text(json.dumps(published))
        try:
            # The hook re-reads its key file at a bounded rate: wait until it knows the
            # new key, with a client of its own (so the one under test starts fresh).
            probe = signing_key.sign(sub=f"probe-{uuid.uuid4().hex[:8]}")

            async def key_known() -> bool:
                _, body = await chat(http, url, probe)
                return "unknown_kid" not in json.dumps(body)

            await wait_until(key_known, timeout=30, what="the hook to load the new key")
            token = signing_key.sign(sub=f"new-{uuid.uuid4().hex[:8]}")
            first = await chat(http, url, token)
            assert first[0] == 200, first
            assert (await chat(http, url, token, model="other"))[0] in (401, 403)
            statuses = [(await chat(http, url, token))[0] for _ in range(3)]
            assert 429 in statuses, statuses
        finally:
            jwks_file.write_text(original)


async def test_disabled_mapping_and_blocked_key_are_refused_within_the_bound(
    gateway, http, signing_key, litellm_database_url
):
    _, key = await gateway.key(models=["fake"])
    sub = await gateway.client(key)
    token = signing_key.sign(sub=sub)
    assert (await chat(http, gateway.url, token))[0] == 200
    conn = await asyncpg.connect(litellm_database_url)
    try:
        await conn.execute(
            'UPDATE "LiteLLM_VerificationToken" SET blocked = true WHERE token = $1',
            key.token_hash,
        )
        await wait_until(
            lambda: _refused(http, gateway.url, token), timeout=5, what="blocked key refused"
        )
        await conn.execute(
            'UPDATE "LiteLLM_VerificationToken" SET blocked = false WHERE token = $1',
            key.token_hash,
        )
        await wait_until(
            lambda: _served(http, gateway.url, token), timeout=5, what="unblocked key served"
        )
        await conn.execute(
            'UPDATE "LiteLLM_JWTKeyMapping" SET is_active = false WHERE token = $1 '
            "AND jwt_claim_value = $2",
            key.token_hash,
            sub,
        )
        await wait_until(
            lambda: _refused(http, gateway.url, token), timeout=5, what="disabled mapping refused"
        )
    finally:
        await conn.close()


async def _served(http: aiohttp.ClientSession, url: str, bearer: str) -> bool:
    return (await chat(http, url, bearer))[0] == 200
