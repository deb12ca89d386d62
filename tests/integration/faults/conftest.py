"""Fixtures for fault tests: resolver processes, a private PostgreSQL that may be stopped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from jwtkeymap.core import schema
from jwtkeymap.testing.postgres import ThrowawayPostgres, throwaway_postgres
from jwtkeymap.testing.servers import ResolverProcess
from jwtkeymap.testing.tokens import SigningKey

ISSUER = "https://idp.test.example"
CHANNEL = "jwtkeymap_invalidate"

StartResolvers = Callable[..., Awaitable[list[ResolverProcess]]]


@pytest.fixture
def private_pg() -> Iterator[ThrowawayPostgres]:
    """A migrated PostgreSQL server of this test's own, so the test may stop it."""
    with throwaway_postgres() as pg:

        async def migrate() -> None:
            conn = await asyncpg.connect(pg.url)
            try:
                await schema.migrate(conn, channel=CHANNEL)
            finally:
                await conn.close()

        asyncio.run(migrate())
        yield pg


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session; generous connection limit for concurrent bursts."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


def resolver_settings(signing_key: SigningKey, database_url: str, **extra: Any) -> dict[str, Any]:
    """Settings of a resolver process: long TTLs (so only invalidation can evict) and
    quick reconnects (so recovery is observed in seconds)."""
    return {
        "database_url": database_url,
        "claim_field": "sub",
        "issuers": [
            {"issuer": ISSUER, "public_keys": [signing_key.public_pem], "audience": "litellm"}
        ],
        "positive_ttl_seconds": 300,
        "negative_ttl_seconds": 300,
        "db_timeout_seconds": 1,
        "invalidation_liveness_seconds": 0.5,
        "invalidation_reconnect_max_seconds": 0.3,
        **extra,
    }


@pytest.fixture
async def start_resolvers(signing_key: SigningKey) -> AsyncIterator[StartResolvers]:
    """Start resolver processes (``count`` alike, or one per settings dict); stopped at the end."""
    started: list[ResolverProcess] = []

    async def start(
        database_url: str, *variants: dict[str, Any], count: int = 1, **extra: Any
    ) -> list[ResolverProcess]:
        configs = [dict(v) for v in variants] or [{} for _ in range(count)]
        procs = [
            ResolverProcess(resolver_settings(signing_key, database_url, **extra, **v))
            for v in configs
        ]
        started.extend(procs)
        await asyncio.gather(*(p.start() for p in procs))
        return procs

    yield start
    await asyncio.gather(*(asyncio.to_thread(p.stop) for p in started))
