"""Fixtures for fault tests: resolver processes, a private PostgreSQL that may be stopped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from jwtkeymap.demo.postgres import ThrowawayPostgres
from jwtkeymap.demo.resolver import ResolverProcess
from jwtkeymap.demo.signing import SigningKey
from support.integrity import leaked_secrets
from support.postgres import migrated_postgres
from support.servers import trusting_resolver

StartResolvers = Callable[..., Awaitable[list[ResolverProcess]]]


@pytest.fixture
def private_pg() -> Iterator[ThrowawayPostgres]:
    """A migrated PostgreSQL server of this test's own, so the test may stop it."""
    with migrated_postgres() as pg:
        yield pg


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session; generous connection limit for concurrent bursts."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


@pytest.fixture
async def start_resolvers(signing_key: SigningKey) -> AsyncIterator[StartResolvers]:
    """Start resolver processes (``count`` alike, or one per settings dict); stopped at the end."""
    started: list[ResolverProcess] = []

    async def start(
        database_url: str, *variants: dict[str, Any], count: int = 1, **extra: Any
    ) -> list[ResolverProcess]:
        configs = [dict(v) for v in variants] or [{} for _ in range(count)]
        procs = [trusting_resolver(signing_key, database_url, **extra, **v) for v in configs]
        started.extend(procs)
        await asyncio.gather(*(p.start() for p in procs))
        return procs

    yield start
    # Every fault run's logs are scanned too: no key or key hash, whatever happened.
    leaks = {p.name: leaked_secrets(p.full_output()) for p in started}
    await asyncio.gather(*(asyncio.to_thread(p.stop) for p in started))
    assert not any(leaks.values()), leaks
