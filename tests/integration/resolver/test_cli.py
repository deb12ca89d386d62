"""`jwtkeymap resolver` as a process: config file, JSON logs, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from jwtkeymap.demo.polling import wait_until
from jwtkeymap.demo.ports import free_port, port_open

JWTKEYMAP = str(Path(sys.executable).parent / "jwtkeymap")


def write_config(tmp_path: Path, signing_key, **extra) -> Path:
    config = {
        "issuers": [
            {
                "issuer": signing_key.issuer,
                "public_keys": [signing_key.public_pem],
                "audience": "litellm",
            }
        ],
        "unregistered_client_behavior": "reject",
        **extra,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def test_resolver_process_serves_logs_json_and_drains_on_sigterm(
    tmp_path, database_url, upstream, http, map_claim, signing_key
):
    echo, upstream_port = upstream
    rows = await map_claim("alice")
    port = free_port()
    config = write_config(tmp_path, signing_key, shutdown_grace_seconds=20)
    log = (tmp_path / "stderr.log").open("wb")
    proc = subprocess.Popen(
        [JWTKEYMAP, "--config", str(config), "--log-level", "debug", "resolver",
         "--listen", f"127.0.0.1:{port}", "--upstream", f"http://127.0.0.1:{upstream_port}"],
        env={**os.environ, "JWTKEYMAP_DATABASE_URL": database_url},
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    token = signing_key.sign(sub="alice")
    auth = {"Authorization": f"Bearer {token}"}
    try:

        async def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError((tmp_path / "stderr.log").read_text())
            try:
                async with http.get(f"{base}/readyz") as resp:
                    return resp.status == 200
            except OSError:
                return False

        await wait_until(ready, timeout=20, what="resolver process ready")
        # Proxy mode: /check is not served to clients (F2); the identity goes upstream only.
        async with http.get(f"{base}/check", headers=auth) as resp:
            assert resp.status == 404
        async with http.get(f"{base}/v1/models", headers=auth) as resp:
            assert resp.status == 200
            assert "x-jwtkeymap-key-hash" not in resp.headers
        assert echo.identity_of()["x-jwtkeymap-key-hash"] == [rows.key.token_hash]

        # A request in flight when SIGTERM arrives is finished, new ones are refused.
        held = asyncio.ensure_future(http.get(f"{base}/hold", headers=auth))
        await wait_until(lambda: echo.held == 1, what="request held upstream")
        proc.send_signal(signal.SIGTERM)
        await wait_until(lambda: not port_open(port), what="listener closed")
        assert proc.poll() is None  # still draining
        echo.hold.set()
        resp = await asyncio.wait_for(held, 10)
        assert resp.status == 200
        assert await resp.text() == "released"
        resp.release()
        await wait_until(lambda: proc.poll() is not None, timeout=15, what="process exit")
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()

    lines = (tmp_path / "stderr.log").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    assert any(r.get("message") == "check decision" for r in records)
    text = "\n".join(lines)
    assert token not in text
    assert rows.key.token_hash not in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "nonsense"], "for --listen: listen address 'nonsense' is not HOST:PORT"),
        (["--metrics-listen", "9100"], "for --metrics-listen: listen address '9100' is not"),
        (
            ["--listen", "127.0.0.1:9100", "--metrics-listen", "0.0.0.0:9100"],
            "for --metrics-listen: must be another port than --listen 127.0.0.1:9100",
        ),
        (["--proxy-engine", "envoy"], "Invalid value for '--proxy-engine'"),
    ],
)
async def test_bad_listen_address_is_a_usage_error(tmp_path, signing_key, args, message):
    config = write_config(tmp_path, signing_key)
    result = await asyncio.to_thread(
        subprocess.run,
        [JWTKEYMAP, "--config", str(config), "resolver", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert message in " ".join(result.stderr.split())


async def test_the_nginx_engine_without_an_upstream_is_a_startup_error(tmp_path, signing_key):
    config = write_config(tmp_path, signing_key)
    result = await asyncio.to_thread(
        subprocess.run,
        [JWTKEYMAP, "--config", str(config), "resolver", "--proxy-engine", "nginx"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "proxy_engine: nginx is reverse-proxy mode's: set upstream too" in result.stderr
    assert "Traceback" not in result.stderr


async def test_unknown_setting_is_a_startup_error(tmp_path, signing_key):
    config = write_config(tmp_path, signing_key, stale_while_disconected_seconds=5)
    result = await asyncio.to_thread(
        subprocess.run,
        [JWTKEYMAP, "--config", str(config), "resolver"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "stale_while_disconected_seconds" in result.stderr


async def test_sigterm_cuts_requests_still_running_after_the_grace(
    tmp_path, database_url, upstream, http, map_claim, signing_key
):
    echo, upstream_port = upstream
    await map_claim("alice")
    port = free_port()
    config = write_config(tmp_path, signing_key, shutdown_grace_seconds=1)
    proc = subprocess.Popen(
        [JWTKEYMAP, "--config", str(config), "resolver", "--listen", f"127.0.0.1:{port}",
         "--upstream", f"http://127.0.0.1:{upstream_port}"],
        env={**os.environ, "JWTKEYMAP_DATABASE_URL": database_url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await wait_until(lambda: port_open(port), timeout=20, what="resolver listening")
        auth = {"Authorization": f"Bearer {signing_key.sign(sub='alice')}"}
        held = asyncio.ensure_future(http.get(f"http://127.0.0.1:{port}/hold", headers=auth))
        await wait_until(lambda: echo.held == 1, what="request held upstream")
        proc.send_signal(signal.SIGTERM)
        # The upstream never answers: the process still exits, soon after the grace.
        await wait_until(lambda: proc.poll() is not None, timeout=15, what="process exit")
        assert proc.returncode == 0
        try:
            resp = await asyncio.wait_for(held, 10)
            assert resp.status != 200 or await resp.read() != b"released"
        except (TimeoutError, aiohttp.ClientError):
            pass  # the connection was cut: what a request past the grace gets
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_unusable_database_is_a_one_line_startup_error(tmp_path, signing_key, pg_server):
    config = write_config(tmp_path, signing_key)
    result = await asyncio.to_thread(
        subprocess.run,
        [JWTKEYMAP, "--config", str(config), "resolver", "--listen", f"127.0.0.1:{free_port()}"],
        env={**os.environ, "JWTKEYMAP_DATABASE_URL": pg_server.url_for("no_such_database")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "no_such_database" in result.stderr
