"""Fixtures for the LiteLLM tier: the install, a LiteLLM database, a running LiteLLM proxy.

A missing install fails the run: this tier is part of the default test run
(``make test`` builds it with ``make litellm``). Set JWTKEYMAP_SKIP_LITELLM=1
to skip it knowingly.

LiteLLM takes tens of seconds to start, so one proxy serves the whole session,
on one database; tests keep apart by using their own keys and claim values.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

# litellm_harness.py sits next to this file; with --import-mode=importlib it is not on sys.path by itself.
sys.path.insert(0, str(Path(__file__).parent))

from litellm_harness import (
    Install,
    LiteLLMProxy,
    NotInstalled,
    find_install,
    prepare_database,
    proxy_config,
)

from jwtkeymap.core.assertion import jwks
from support.assertion_keys import write_signing_keys

SKIP_ENV = "JWTKEYMAP_SKIP_LITELLM"
CHANNEL = "jwtkeymap_invalidate"

_timings: dict[str, str] = {}


@pytest.fixture(scope="session")
def litellm_install() -> Install:
    """LiteLLM's install; fails (never skips silently) when it has not been built."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"!!! {SKIP_ENV}=1: the real-LiteLLM tests are SKIPPED on purpose !!!")
    try:
        return find_install()
    except NotInstalled as err:
        problem = str(err)
    pytest.fail(
        f"the LiteLLM install is missing (run `make litellm`; set {SKIP_ENV}=1 to skip"
        f" this tier knowingly):\n{problem}",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def litellm_database_url(pg_server) -> str:
    """A database holding LiteLLM's schema (its own migrations) and jwtkeymap's objects."""
    name = f"jkm_litellm_{uuid.uuid4().hex[:8]}"

    async def build() -> None:
        await pg_server.execute(f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(pg_server.url_for(name))
        try:
            await prepare_database(conn, CHANNEL)
        finally:
            await conn.close()

    asyncio.run(build())
    return str(pg_server.url_for(name))


@dataclasses.dataclass
class AssertionKeys:
    """The assertion signing keys the resolvers use and the JWKS file LiteLLM's hook reads."""

    key_file: Path
    jwks_file: Path

    def write(self, *privates: ed25519.Ed25519PrivateKey) -> list[str]:
        """Put ``privates`` in the key file (first signs) and publish all; return their kids."""
        keys = write_signing_keys(self.key_file, *privates)
        self.jwks_file.write_text(json.dumps(jwks(keys)))
        return [k.kid for k in keys]


@pytest.fixture(scope="session")
def assertion_keys(tmp_path_factory: pytest.TempPathFactory) -> AssertionKeys:
    """One signing key for the session, published in a JWKS file."""
    root = tmp_path_factory.mktemp("assertion-keys")
    keys = AssertionKeys(root / "signing.pem", root / "jwks.json")
    keys.write(ed25519.Ed25519PrivateKey.generate())
    return keys


@pytest.fixture(scope="session")
def litellm_proxy(
    litellm_install: Install, litellm_database_url: str, assertion_keys: AssertionKeys
) -> Iterator[LiteLLMProxy]:
    """A LiteLLM proxy with mock models and jwtkeymap's hook, on the session's database."""
    proxy = LiteLLMProxy(
        litellm_install,
        litellm_database_url,
        config=proxy_config(hook=True),
        env={
            "JWTKEYMAP_HOOK_JWKS": str(assertion_keys.jwks_file),
            # Rotation tests must not wait long for a re-read of the JWKS file.
            "JWTKEYMAP_HOOK_JWKS_REFRESH_SECONDS": "0.2",
        },
    )
    proxy.start()
    _timings["litellm"] = f"LiteLLM proxy start-to-live {proxy.startup_seconds:.1f} s"
    try:
        yield proxy
    finally:
        proxy.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Report how long LiteLLM took to start (it dominates this tier's time)."""
    for line in _timings.values():
        terminalreporter.write_line(f"litellm tier: {line}")
