"""An https upstream: verified as any TLS client verifies it, or not spoken to at all.

The resolver's upstream connections (resolver/upstream.py) use Python's default TLS
context: the system's CAs (``SSL_CERT_FILE`` names a private one), the host name checked.
A certificate that does not verify is a 502 to the client and nothing reaches the upstream:
the identity headers and the client's token are never sent to a server that is not the
one configured. Both lanes are driven: a plain request (the fast lane) and one with an
escaped path (left to the application).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from support.pki import issue_tls
from support.servers import BOTH_ENGINES, EchoUpstream, serve

# A request each lane takes: the second's escaped path is the application's (fastlane.py).
PATHS = {"fast lane": "/v1/models", "application": "/v1/a%20b"}


@pytest.fixture
def tls_upstream(tmp_path: Path) -> Callable[..., Any]:
    """Serve an echo upstream over TLS with a certificate for ``hosts``: (echo, url, CA file)."""

    @contextlib.asynccontextmanager
    async def start(hosts: tuple[str, ...] = ("127.0.0.1",)) -> AsyncIterator[Any]:
        tls = issue_tls(tmp_path / "-".join(hosts), "upstream", hosts=hosts)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.cert_file, tls.key_file)
        echo = EchoUpstream()
        async with serve(echo.app, ssl_context=context) as url:
            yield echo, url, tls.ca_file
        echo.hold.set()

    return start


async def _through(make_settings, database_url, start_resolver, upstream_url: str) -> Any:
    settings = make_settings(database_url=database_url, upstream=upstream_url)
    return await start_resolver(settings)


def _host(proxy_engine: str) -> str:
    """The name the upstream is given: nginx matches a certificate by DNS name only."""
    return "localhost" if proxy_engine == "nginx" else "127.0.0.1"


@BOTH_ENGINES
@pytest.mark.parametrize("lane", sorted(PATHS))
async def test_an_upstream_whose_certificate_verifies_is_served(
    lane, tls_upstream, make_settings, database_url, start_resolver, http, map_claim, signing_key,
    monkeypatch, proxy_engine,
):  # fmt: skip
    await map_claim("alice")
    host = _host(proxy_engine)
    async with tls_upstream((host,)) as (echo, url, ca_file):
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # a private CA, as a pod mounts one
        url = url.replace("127.0.0.1", host)
        resolver = await _through(make_settings, database_url, start_resolver, url)
        token = signing_key.sign(sub="alice")
        async with http.get(
            f"{resolver.url}{PATHS[lane]}", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["X-Upstream"] == "echo"
        (seen,) = echo.requests
        assert seen["path"] == PATHS[lane]
        assert echo.identity_of()["x-jwtkeymap-decision"] == ["mapped"]
        if proxy_engine == "resolver":
            lane_took = resolver.service.metrics.fast_lane
            assert lane_took == (1 if lane == "fast lane" else 0)


@BOTH_ENGINES
@pytest.mark.parametrize("lane", sorted(PATHS))
@pytest.mark.parametrize(
    "why", ["an unknown CA", "another host's certificate"], ids=["unknown-ca", "other-host"]
)
async def test_an_upstream_whose_certificate_does_not_verify_gets_nothing(
    lane, why, tls_upstream, make_settings, database_url, start_resolver, http, map_claim,
    signing_key, monkeypatch, proxy_engine,
):  # fmt: skip
    await map_claim("alice")
    host = _host(proxy_engine)
    hosts = (host,) if why == "an unknown CA" else ("upstream.example",)
    async with tls_upstream(hosts) as (echo, url, ca_file):
        if why == "another host's certificate":
            monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # trusted, but not for this host
        url = url.replace("127.0.0.1", host)
        resolver = await _through(make_settings, database_url, start_resolver, url)
        token = signing_key.sign(sub="alice")
        async with http.get(
            f"{resolver.url}{PATHS[lane]}", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.status == 502
            assert (await resp.json())["error"]["reason"] == "upstream_unavailable"
        assert echo.requests == []
