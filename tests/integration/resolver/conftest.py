"""Fixtures for the resolver: a running resolver, an echo upstream, keys and mappings."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import pytest

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.clock import SYSTEM_CLOCK, Clock
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.core.db.store import Store
from jwtkeymap.core.keys import KeyIdentity
from jwtkeymap.core.settings import Settings
from jwtkeymap.demo.polling import wait_until
from jwtkeymap.demo.ports import free_port
from jwtkeymap.resolver.handlers import SERVICE, create_app
from jwtkeymap.resolver.server import ResolverRunner, served_by_nginx
from jwtkeymap.resolver.service import Service
from support.servers import EchoUpstream, serve

ISSUER = "https://idp.test.example"


@dataclasses.dataclass
class Running:
    """A resolver served on a real port."""

    url: str
    port: int
    service: Service

    async def ready(self, http: aiohttp.ClientSession) -> bool:
        """Tell whether /readyz says ready."""
        async with http.get(f"{self.url}/readyz") as resp:
            return resp.status == 200

    async def wait_ready(self, http: aiohttp.ClientSession, timeout: float = 15) -> None:
        """Poll /readyz until ready."""
        await wait_until(lambda: self.ready(http), timeout=timeout, what="resolver ready")


StartResolver = Callable[..., Awaitable[Running]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session with no automatic decompression (we check bytes)."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


@pytest.fixture
def proxy_engine() -> str:
    """What carries reverse-proxy mode's bytes; tests of what both engines promise
    parametrize it (``support.servers.BOTH_ENGINES``)."""
    return "resolver"


@pytest.fixture
async def start_resolver(proxy_engine: str) -> AsyncIterator[StartResolver]:
    """Start resolvers on free ports (a reverse proxy with ``proxy_engine``); all are
    stopped at the end of the test."""
    stack: list[Any] = []

    async def start(settings: Settings, *, clock: Clock = SYSTEM_CLOCK) -> Running:
        port = free_port()
        if settings.upstream and proxy_engine == "nginx":
            settings = settings.model_copy(update={"proxy_engine": "nginx"})
        if settings.proxy_engine == "nginx":
            # The resolver's check on its socket, nginx on the port (what `run` serves).
            settings = settings.model_copy(update={"listen": f"127.0.0.1:{port}"})
            served = served_by_nginx(settings, clock=clock)
            _, app = await served.__aenter__()
            stack.append(served)
            return Running(url=f"http://127.0.0.1:{port}", port=port, service=app[SERVICE])
        app = create_app(settings, clock=clock)
        cm = serve(app, port=port, runner_class=ResolverRunner)
        url = await cm.__aenter__()
        stack.append(cm)
        return Running(url=url, port=port, service=app[SERVICE])

    yield start
    for cm in reversed(stack):
        await cm.__aexit__(None, None, None)


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[EchoUpstream, int]]:
    """An echo upstream on a free port: (server, port)."""
    echo = EchoUpstream()
    port = free_port()
    async with serve(echo.app, port=port):
        yield echo, port
    echo.hold.set()


@dataclasses.dataclass
class Fixture:
    """Rows created for a test: a key and the mapping of a claim value to it."""

    key: KeyIdentity
    mapping_id: str


@pytest.fixture
def map_claim(store: Store) -> Callable[..., Awaitable[Fixture]]:
    """Create a key (with team/user/org) and map ``claim_value`` to it."""

    async def make(
        claim_value: str,
        *,
        claim_name: str = "sub",
        issuer: str = "",
        team_id: str | None = "team-a",
        user_id: str | None = "user-a",
        org_id: str | None = "org-a",
        active: bool = True,
    ) -> Fixture:
        _, key = await store.create_key(
            NewKey(team_id=team_id, user_id=user_id, org_id=org_id), actor="test"
        )
        row = await store.add_mapping(
            MappingIdentity(issuer, claim_name, claim_value),
            key.token_hash,
            active=active,
            actor="test",
        )
        return Fixture(key=key, mapping_id=row.id)

    return make


@pytest.fixture
def kill_listen(db: asyncpg.Connection) -> Callable[[], Awaitable[int]]:
    """Terminate the resolver's LISTEN connections on this database; return how many."""

    async def kill() -> int:
        return int(
            await db.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'jwtkeymap-listen' AND datname = current_database()"
            )
        )

    return kill
