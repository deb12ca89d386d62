"""The harness itself: a real LiteLLM proxy on the test PostgreSQL serves its own keys."""

from __future__ import annotations

import aiohttp
import pytest
from litellm_harness import MASTER_KEY, REQUEST_COST, LiteLLMProxy

from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.core.db.store import Store
from jwtkeymap.core.settings import KeyDefaults


@pytest.fixture
async def litellm_store(litellm_database_url: str):
    """A jwtkeymap store on LiteLLM's database."""
    store = await Store.open(litellm_database_url, min_size=1, max_size=2)
    yield store
    await store.close()


async def chat(session: aiohttp.ClientSession, proxy: LiteLLMProxy, key: str, model: str = "fake"):
    """POST one chat completion; return (status, JSON body)."""
    async with session.post(
        f"{proxy.url}/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
    ) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_master_key_and_plain_key_are_served(
    litellm_proxy, litellm_store, litellm_database_url
):
    plaintext, _key = await litellm_store.create_key(
        NewKey(alias="harness-smoke", defaults=KeyDefaults(models=["fake"])), actor="test"
    )
    async with aiohttp.ClientSession() as session:
        status, body = await chat(session, litellm_proxy, MASTER_KEY)
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] == "hello from fake"
        status, body = await chat(session, litellm_proxy, plaintext)
        assert status == 200, body
        assert body["usage"]["total_tokens"] == 30
        # The key's own models bound it, as LiteLLM enforces for any sk- key.
        status, body = await chat(session, litellm_proxy, plaintext, model="other")
        assert status in (401, 403), body
        status, body = await chat(session, litellm_proxy, "sk-not-a-key")
        assert status == 401, body
    assert REQUEST_COST > 0
