"""LiteLLM's own cache keys, channel and lookup, from the pinned LiteLLM, against what jwtkeymap does.

An enterprise LiteLLM reads ``LiteLLM_JWTKeyMapping`` with its built-in JWT auth
and no hook: the rows jwtkeymap writes (``map add``, the Reconciler, offline
``apply``) must be found by LiteLLM's own ``get_jwt_key_mapping_object``, and a
change must evict exactly the cache key LiteLLM stored the row under.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from litellm_harness import Install, run_litellm_python

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.core.db.store import Store
from jwtkeymap.core.litellm import CHANNEL, LiteLLMCache, cache_key
from jwtkeymap.core.reconcile.desired import DesiredMapping, ReconcileOutcome
from jwtkeymap.core.reconcile.writer import Reconciler

ISSUER = "https://idp.test.example"

# Prints LiteLLM's cache key of each (issuer, claim, value) of argv[1], and its channel
# for each namespace of argv[2].
_LITELLM_KEYS = """
import json, sys, types
from litellm.proxy.auth.auth_checks import jwt_key_mapping_cache_key
from litellm.proxy.common_utils.auth_cache_invalidation_pubsub import (
    auth_cache_invalidation_channel,
)
identities = json.loads(sys.argv[1])
namespaces = json.loads(sys.argv[2])
keys = [jwt_key_mapping_cache_key(name, value, issuer) for issuer, name, value in identities]
channels = [
    auth_cache_invalidation_channel(types.SimpleNamespace(namespace=ns)) for ns in namespaces
]
print(json.dumps({"keys": keys, "channels": channels}))
"""

# Looks up each (issuer, claim, value) of argv[1] with LiteLLM's own function, through
# LiteLLM's own PrismaClient (and so the generated Prisma client and its engine).
_LITELLM_LOOKUP = """
import asyncio, json, os, sys
from litellm.caching.dual_cache import DualCache
from litellm.proxy.auth.auth_checks import get_jwt_key_mapping_object
from litellm.proxy.utils import PrismaClient, ProxyLogging

async def main():
    client = PrismaClient(
        database_url=os.environ["DATABASE_URL"],
        proxy_logging_obj=ProxyLogging(user_api_key_cache=DualCache()),
    )
    await client.connect()
    try:
        found = [
            await get_jwt_key_mapping_object(name, value, client, jwt_issuer=issuer or None)
            for issuer, name, value in json.loads(sys.argv[1])
        ]
    finally:
        await client.disconnect()
    print(json.dumps(found))

asyncio.run(main())
"""


class _RecordingRedis:
    """Enough of ``redis.asyncio.Redis`` to see what an eviction deletes and publishes."""

    def __init__(self) -> None:
        self.deleted: list[str] = []
        self.published: list[tuple[str, str]] = []

    async def delete(self, *keys: str) -> int:
        self.deleted.extend(keys)
        return len(keys)

    async def publish(self, channel: str, message: str) -> int:
        self.published.append((channel, message))
        return 0


def _triples(identities: list[MappingIdentity]) -> str:
    return json.dumps([[i.issuer, i.claim_name, i.claim_value] for i in identities])


async def test_evictions_use_litellms_own_cache_keys_and_channel(
    litellm_install: Install, litellm_database_url: str
) -> None:
    identities = [
        MappingIdentity("", "email", "alice@example.com"),
        MappingIdentity(ISSUER, "email", "alice@example.com"),
        MappingIdentity("", "sub", "a:b:c"),
        MappingIdentity("https://idp.example:8443/realms/x", "sub", "1234"),
    ]
    namespaces = [None, "prod"]
    theirs = await asyncio.to_thread(
        run_litellm_python,
        litellm_install,
        litellm_database_url,
        _LITELLM_KEYS,
        _triples(identities),
        json.dumps(namespaces),
    )
    assert [cache_key(i) for i in identities] == theirs["keys"]
    assert theirs["channels"][0] == CHANNEL

    for namespace, channel in zip(namespaces, theirs["channels"], strict=True):
        fake = _RecordingRedis()
        await LiteLLMCache("redis://unused", client=fake, namespace=namespace).evict(identities)
        assert fake.deleted == theirs["keys"]
        assert fake.published == [(channel, json.dumps({"cache_key": k})) for k in theirs["keys"]]


async def _map_add(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JWTKEYMAP_")}
    env["JWTKEYMAP_DATABASE_URL"] = database_url
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "jwtkeymap", "map", "add", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


async def _apply_offline(database_url: str, manifest: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JWTKEYMAP_")}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "jwtkeymap", "--database-url", database_url, "apply", "-f",
         str(manifest)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )  # fmt: skip


@pytest.fixture
async def litellm_store(litellm_database_url: str) -> Any:
    """A jwtkeymap store on LiteLLM's database."""
    store = await Store.open(litellm_database_url, min_size=1, max_size=2)
    yield store
    await store.close()


async def test_rows_jwtkeymap_writes_are_found_by_litellms_lookup(
    litellm_install: Install, litellm_database_url: str, litellm_store: Store, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    hashes: dict[str, str] = {}
    for writer in ("cli", "reconciler", "offline"):
        _, key = await litellm_store.create_key(NewKey(alias=f"{writer}-{run}"), actor="test")
        hashes[writer] = key.token_hash

    def identity(writer: str, issuer: str) -> MappingIdentity:
        return MappingIdentity(issuer, "email", f"{writer}-{run}@example.com")

    # map add: one global row, one issuer-scoped row.
    for issuer in ("", ISSUER):
        ident = identity("cli", issuer)
        scope = ("--issuer", issuer) if issuer else ("--any-issuer",)
        added = await _map_add(
            litellm_database_url, ident.claim_value, "--claim", "email", *scope,
            "--key-hash", hashes["cli"],
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
    # The Reconciler (what the operator's handlers call).
    reconciler = Reconciler(litellm_store)
    for n, issuer in enumerate(("", ISSUER)):
        want = DesiredMapping(
            identity("reconciler", issuer), hashes["reconciler"], owner=f"k8s:u{n}",
            ref=f"ns/r{n}-{run}",
        )  # fmt: skip
        assert (await reconciler.apply(want)).outcome is ReconcileOutcome.CREATED
    # Offline apply of manifests.
    manifest = tmp_path / "mappings.yaml"
    manifest.write_text(
        "".join(
            "---\napiVersion: jwtkeymap.io/v1alpha1\nkind: JWTKeyMapping\n"
            f"metadata: {{name: offline-{n}-{run}, namespace: team}}\n"
            f"spec:\n  issuer: '{issuer or '*'}'\n"
            f"  claim: {{name: email, value: '{identity('offline', issuer).claim_value}'}}\n"
            f"  key: {{hash: '{hashes['offline']}'}}\n"
            for n, issuer in enumerate(("", ISSUER))
        )
    )
    applied = await _apply_offline(litellm_database_url, manifest)
    assert applied.returncode == 0, applied.stdout + applied.stderr

    lookups = [identity(w, issuer) for w in hashes for issuer in ("", ISSUER)]
    # Each scope is one exact lookup in LiteLLM; another issuer finds nothing.
    strangers = [MappingIdentity("https://stranger.example", "email", lookups[0].claim_value)]
    found = await asyncio.to_thread(
        run_litellm_python,
        litellm_install,
        litellm_database_url,
        _LITELLM_LOOKUP,
        _triples(lookups + strangers),
    )
    assert found == [hashes[w] for w in hashes for _ in ("", ISSUER)] + [None]
