"""A resolver process shared by a module of hostile-input tests, over its own database."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.core.db.store import Store
from jwtkeymap.demo.resolver import ResolverProcess
from jwtkeymap.demo.signing import SigningKey
from support.integrity import leaked_secrets
from support.servers import trusting_resolver

# The claim that identifies clients (not ``sub``: PyJWT itself refuses a non-string sub).
CLAIM = "email"
# Claim values that are mapped (to distinct keys) in the module's database.
MAPPED = ("alice", "a", "a:b", "b", "ü" * 300, "x" * 1024)  # 1024: the longest value accepted


@dataclasses.dataclass
class Target:
    """The running resolver and the key hash each mapped value resolves to."""

    proc: ResolverProcess
    database_url: str
    keys: dict[str, str]


def _database(pg_server: Any, template: str) -> Iterator[str]:
    name = f"jkm_hostile_{uuid.uuid4().hex[:8]}"
    asyncio.run(pg_server.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    yield pg_server.url_for(name)
    asyncio.run(pg_server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _map_all(url: str) -> dict[str, str]:
    store = await Store.open(url, min_size=1, max_size=2)
    keys = {}
    try:
        for value in MAPPED:
            _, key = await store.create_key(NewKey(team_id="t", user_id="u"), actor="test")
            await store.add_mapping(MappingIdentity("", CLAIM, value), key.token_hash, actor="t")
            keys[value] = key.token_hash
    finally:
        await store.close()
    return keys


@pytest.fixture(scope="module")
def target(pg_server: Any, migrated_template: str, signing_key: SigningKey) -> Iterator[Target]:
    """A resolver process (reject) with every value of MAPPED mapped; alive check at the end."""
    for url in _database(pg_server, migrated_template):
        keys = asyncio.run(_map_all(url))
        proc = trusting_resolver(
            signing_key, url, unregistered_client_behavior="reject", claim_field=CLAIM
        )
        asyncio.run(proc.start())
        try:
            yield Target(proc, url, keys)
            assert proc.alive(), proc.output()
            assert leaked_secrets(proc.full_output()) == []
        finally:
            proc.stop()
