"""Fixtures shared by every tier: a real PostgreSQL, fresh databases, signing keys.

PostgreSQL: a throwaway cluster started for the session (as an unprivileged OS
user when running as root), or the server named by JWTKEYMAP_TEST_DATABASE_URL.
Each test that asks for ``database_url`` gets its own database, cloned from a
migrated template, so tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from jwtkeymap.core.db import schema
from jwtkeymap.core.db.store import Store
from jwtkeymap.core.settings import Settings, load_settings
from jwtkeymap.demo.postgres import ThrowawayPostgres
from jwtkeymap.demo.signing import SigningKey
from support.integrity import leaked_secrets

ISSUER = "https://idp.test.example"
OTHER_ISSUER = "https://other-idp.test.example"
CHANNEL = "jwtkeymap_invalidate"


class _SecretScan(logging.Handler):
    """Collects every log line any test makes the product emit, for one scan at the end."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(("jwtkeymap", "kopf", "aiohttp", "asyncpg")):
            return
        text = f"{record.getMessage()} {record.__dict__}"
        found = leaked_secrets(text)
        if found:
            self.leaks.append(f"{record.name}: {found[0][:8]}… in {record.getMessage()[:120]!r}")


@pytest.fixture(scope="session", autouse=True)
def no_secrets_in_logs() -> Iterator[None]:
    """Across the whole run, no log record carries a plaintext key or a key hash."""
    scan = _SecretScan()
    root = logging.getLogger()
    root.addHandler(scan)
    yield
    root.removeHandler(scan)
    assert not scan.leaks, "secrets in logs:\n" + "\n".join(scan.leaks[:20])


class PgServer:
    """A PostgreSQL server the tests may create and drop databases on."""

    def __init__(self, admin_url: str, throwaway: ThrowawayPostgres | None = None) -> None:
        self.admin_url = admin_url
        self.throwaway = throwaway

    def url_for(self, database: str) -> str:
        """URL of another database on the same server."""
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path=f"/{database}"))

    async def execute(self, sql: str) -> None:
        """Run one statement on the admin database."""
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server."""
    external = os.environ.get("JWTKEYMAP_TEST_DATABASE_URL")
    if external:
        yield PgServer(external)
        return
    pg = ThrowawayPostgres()
    try:
        pg.init()
        pg.start()
        yield PgServer(pg.url, pg)
    finally:
        pg.destroy()


@pytest.fixture(scope="session")
def migrated_template(pg_server: PgServer) -> str:
    """Name of a database migrated once, cloned for each test."""
    name = f"jkm_tpl_{uuid.uuid4().hex[:8]}"

    async def build() -> None:
        await pg_server.execute(f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(pg_server.url_for(name))
        try:
            await schema.migrate(conn, channel=CHANNEL)
        finally:
            await conn.close()

    asyncio.run(build())
    return name


async def _fresh_database(pg_server: PgServer, template: str | None) -> str:
    name = f"jkm_{uuid.uuid4().hex[:12]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    await pg_server.execute(f'CREATE DATABASE "{name}"{clause}')
    return name


async def _drop_database(pg_server: PgServer, name: str) -> None:
    await pg_server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def database_url(pg_server: PgServer, migrated_template: str) -> AsyncIterator[str]:
    """URL of a fresh, migrated database of this test's own."""
    name = await _fresh_database(pg_server, migrated_template)
    yield pg_server.url_for(name)
    await _drop_database(pg_server, name)


@pytest.fixture
async def empty_database_url(pg_server: PgServer) -> AsyncIterator[str]:
    """URL of a fresh database with no tables at all."""
    name = await _fresh_database(pg_server, None)
    yield pg_server.url_for(name)
    await _drop_database(pg_server, name)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """A store on this test's database."""
    s = await Store.open(database_url, min_size=1, max_size=8)
    yield s
    await s.close()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A raw connection to this test's database, for arranging and asserting rows."""
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture(scope="session")
def signing_key() -> SigningKey:
    """An RSA key that signs tokens for ISSUER."""
    return SigningKey(ISSUER, kid="k1")


@pytest.fixture(scope="session")
def other_signing_key() -> SigningKey:
    """An RSA key that signs tokens for OTHER_ISSUER."""
    return SigningKey(OTHER_ISSUER, kid="o1")


@pytest.fixture
def make_settings(signing_key: SigningKey, other_signing_key: SigningKey) -> Any:
    """Build Settings trusting both test issuers, with keyword overrides."""

    def build(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "issuers": [
                {"issuer": ISSUER, "public_keys": [signing_key.public_pem], "audience": "litellm"},
                {
                    "issuer": OTHER_ISSUER,
                    "public_keys": [other_signing_key.public_pem],
                    "audience": "litellm",
                },
            ],
        }
        base.update(overrides)
        return load_settings(None, **base)

    return build
