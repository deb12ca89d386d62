"""``proxy_engine: nginx``: nginx carrying reverse-proxy mode's bytes as the resolver's child.

What both engines promise runs against each in test_proxy.py, test_public_listener.py,
test_upstream_tls.py and test_assertion.py (``BOTH_ENGINES``). Here: the configuration,
checked by nginx itself, and the process, run by the resolver's own command: nginx's end
is the resolver's (fail closed), SIGTERM drains, a missing nginx is a one-line error.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from jwtkeymap.core.errors import ConfigError
from jwtkeymap.core.settings import load_settings
from jwtkeymap.demo.polling import wait_until
from jwtkeymap.demo.ports import free_port, port_open
from jwtkeymap.resolver.nginx import NginxEngine, render
from support.servers import trusting_resolver

NGINX = "/usr/sbin/nginx"


def _render(make_settings: Any, tmp_path: Path, **settings: Any) -> Path:
    text = render(
        make_settings(proxy_engine="nginx", **settings),
        run_dir=tmp_path,
        check_socket=tmp_path / "check.sock",
        as_root=os.geteuid() == 0,
    )
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / kind).mkdir(exist_ok=True)
    return conf


VARIANTS = {
    "plain": ({"upstream": "http://127.0.0.1:4000", "listen": "127.0.0.1:8080"}, []),
    "tls, prefix, stripped": (
        {
            "upstream": "https://localhost:8443/api/",
            "listen": "[::1]:8080",
            "strip_authorization": True,
            "keepalive_timeout_seconds": 2.5,
        },
        [
            "proxy_ssl_verify on;",
            'proxy_set_header Authorization "";',
            "proxy_pass https://jwtkeymap_gateway/api$request_uri;",
            'proxy_set_header Host "localhost:8443";',
            "listen [::1]:8080;",
            "keepalive_timeout 2500ms;",
        ],
    ),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_nginx_accepts_the_rendered_configuration(variant, make_settings, tmp_path):
    settings, expected = VARIANTS[variant]
    conf = _render(make_settings, tmp_path, **settings)
    text = conf.read_text()
    for line in expected:
        assert line in text, line
    stripped = 'proxy_set_header Authorization "";' in text
    assert stripped is bool(settings.get("strip_authorization"))
    checked = subprocess.run(
        [NGINX, "-t", "-p", f"{tmp_path}/", "-e", "stderr", "-c", str(conf)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr


def test_an_https_upstream_named_by_its_address_is_refused(make_settings, tmp_path):
    # nginx matches a certificate by DNS name only: it would refuse every request.
    with pytest.raises(ConfigError, match="by a DNS name"):
        _render(make_settings, tmp_path, upstream="https://127.0.0.1:8443")


def test_a_tmpdir_too_long_for_the_checks_socket_is_refused(make_settings, tmp_path, monkeypatch):
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    settings = make_settings(upstream="http://127.0.0.1:4000", proxy_engine="nginx")
    with pytest.raises(ConfigError, match="point TMPDIR at a shorter directory"):
        NginxEngine(settings)
    assert list(deep.iterdir()) == []  # nothing left behind


def test_the_nginx_engine_needs_an_upstream(signing_key):
    with pytest.raises(ConfigError, match="proxy_engine: nginx is reverse-proxy mode's"):
        load_settings(None, proxy_engine="nginx")


async def test_without_its_check_nginx_refuses_everything(make_settings, upstream, http):
    # nginx alone, its check's socket unanswered: fail closed, in the resolver's JSON.
    echo, port = upstream
    listen = f"127.0.0.1:{free_port()}"
    engine = NginxEngine(
        make_settings(upstream=f"http://127.0.0.1:{port}", proxy_engine="nginx", listen=listen)
    )
    await engine.start()
    try:
        async with http.get(
            f"http://{listen}/v1/models", headers={"Authorization": "Bearer x"}
        ) as resp:
            assert resp.status == 500
            assert resp.headers["jwtkeymap-denial-reason"] == "internal_error"
            error = (await resp.json())["error"]
            assert (error["code"], error["reason"]) == (500, "internal_error")
    finally:
        await engine.stop(0)
    assert echo.requests == []


def _nginx_master(resolver_pid: int) -> int:
    """The resolver's child: nginx's master process."""
    children = Path(f"/proc/{resolver_pid}/task/{resolver_pid}/children").read_text().split()
    for child in children:
        if "nginx" in Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace"):
            return int(child)
    raise AssertionError(f"no nginx among the resolver's children {children}")


def _group_alive(pgid: int) -> bool:
    """Tell whether a process of group ``pgid`` runs (a zombie waiting for its reaper
    does not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # pid (comm) state ppid pgrp ...: split after the command's closing parenthesis.
            state, _, group = stat.read_text().rpartition(")")[2].split()[:3]
        except OSError:
            continue
        if int(group) == pgid and state != "Z":
            return True
    return False


@pytest.fixture
async def engine(signing_key, database_url, upstream, map_claim) -> Any:
    """The resolver's own command with ``proxy_engine: nginx`` in front of the echo upstream."""
    echo, port = upstream
    await map_claim("alice")
    proc = trusting_resolver(
        signing_key,
        database_url,
        upstream=f"http://127.0.0.1:{port}",
        proxy_engine="nginx",
        shutdown_grace_seconds=20,
    )
    await proc.start()
    try:
        yield proc, echo, {"Authorization": f"Bearer {signing_key.sign(sub='alice')}"}
    finally:
        await asyncio.to_thread(proc.stop)


async def test_nginx_dying_stops_the_resolver_and_closes_its_port(engine, http):
    proc, echo, auth = engine
    async with http.get(f"{proc.url}/v1/models", headers=auth) as resp:
        assert resp.status == 200
    master = _nginx_master(proc.proc.pid)
    os.kill(master, signal.SIGKILL)  # its workers are left serving, unless stopped too
    status = await asyncio.to_thread(proc.proc.wait, 20)
    assert status == 1
    assert "nginx, the proxy engine, exited" in proc.output()
    assert "Traceback" not in proc.output()
    await wait_until(lambda: not _group_alive(master), what="no nginx worker left")
    assert not port_open(proc.port)
    assert len(echo.requests) == 1


async def test_no_token_reaches_the_log(engine, http):
    # nginx quotes the start of an oversized header line, but at its "info" level, below
    # the "error" the engine logs at; no access log; a refused token is never echoed.
    proc, echo, _ = engine
    secret = "eyJsecret" + "s" * 20000
    for token in (secret, secret[:300], "eyJsecret.not.a.jwt"):
        auth = {"Authorization": f"Bearer {token}"}
        async with http.get(f"{proc.url}/v1/models", headers=auth) as resp:
            assert resp.status in (401, 431)
    assert echo.requests == []
    assert "eyJsecret" not in proc.full_output()


async def test_sigterm_drains_a_request_in_flight_then_exits(engine, http):
    proc, echo, auth = engine
    held = asyncio.ensure_future(http.get(f"{proc.url}/hold", headers=auth))
    await wait_until(lambda: echo.held == 1, what="the request upstream")
    master = _nginx_master(proc.proc.pid)
    proc.proc.send_signal(signal.SIGTERM)
    # No new connection is taken while the one in flight finishes.
    await wait_until(lambda: not port_open(proc.port), what="the listener closed")
    assert proc.alive()
    echo.hold.set()
    async with await held as resp:
        assert resp.status == 200
    assert await asyncio.to_thread(proc.proc.wait, 20) == 0
    await wait_until(lambda: not _group_alive(master), what="no nginx worker left")


async def test_a_missing_nginx_is_a_one_line_error(signing_key, database_url):
    proc = trusting_resolver(
        signing_key,
        database_url,
        upstream=f"http://127.0.0.1:{free_port()}",
        proxy_engine="nginx",
        nginx_binary="/nonexistent/nginx",
    )
    with pytest.raises(RuntimeError, match="resolver exited"):
        await proc.start(timeout=20)
    try:
        assert proc.proc.wait(10) == 1
        out = proc.output()
        assert "'/nonexistent/nginx' not found" in out
        assert "Traceback" not in out
    finally:
        proc.stop()
