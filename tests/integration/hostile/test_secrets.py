"""No plaintext key and no key hash in anything a representative run leaves behind.

One run through every surface that talks about keys: the CLI (key create, map add,
map list, resolve, apply, diff), a resolver process at debug level (mapped, denied,
auto-registered, database errors) with its /metrics and /readyz, and its refusals.
A key is allowed to appear only as a short fingerprint; the one exception is the
plaintext `key create` prints once, which is what that command is for. (Operator
logs, CR status, Events and operator metrics are scanned in tests/controlplane/faults.)
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys

import aiohttp
import pytest

from jwtkeymap.core.keys import fingerprint
from jwtkeymap.demo.resolver import check_token
from support.integrity import leaked_secrets
from support.servers import trusting_resolver, wait_ready

pytestmark = pytest.mark.slow


async def cli(config: str, *args: str, stdin: str | None = None) -> str:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "jwtkeymap", "--config", config, *args],
        capture_output=True, text=True, timeout=60, input=stdin,
    )  # fmt: skip
    return f"$ {' '.join(args[:2])} -> {done.returncode}\n{done.stdout}\n{done.stderr}"


async def test_no_key_or_hash_in_logs_cli_output_or_metrics(
    database_url, db, signing_key, tmp_path
) -> None:
    resolver = trusting_resolver(
        signing_key,
        database_url,
        log_level="debug",
        unregistered_client_behavior="auto_register",
        auto_register={"team_id_default": "sandbox"},
    )
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(resolver.settings))
    cfg = str(config)
    made = await cli(cfg, "key", "create", "--team-id", "team-a", "--alias", "ci")
    plaintexts = re.findall(r"sk-[A-Za-z0-9_\-]{16,}", made)
    assert len(plaintexts) == 1, made
    plaintext = plaintexts[0]
    exposed = [made.replace(plaintext, "<shown once>")]
    exposed.append(await cli(cfg, "map", "add", "alice", "--key", plaintext, "--any-issuer"))
    exposed.append(
        await cli(cfg, "map", "add", "alice", "--key", plaintext, "--any-issuer")
    )  # a conflict
    exposed.append(await cli(cfg, "map", "list"))
    exposed.append(await cli(cfg, "map", "list", "-o", "json"))
    manifest = f"""\
apiVersion: v1
kind: Secret
metadata: {{name: bob-key, namespace: ns}}
stringData: {{apiKey: "{plaintext}"}}
---
apiVersion: jwtkeymap.io/v1alpha1
kind: JWTKeyMapping
metadata: {{name: bob, namespace: ns}}
spec:
  issuer: "*"
  claim: {{name: sub, value: bob}}
  key: {{secretRef: {{name: bob-key, key: apiKey}}}}
"""
    exposed.append(await cli(cfg, "diff", "-f", "-", stdin=manifest))
    exposed.append(await cli(cfg, "apply", "-f", "-", stdin=manifest))
    exposed.append(await cli(cfg, "resolve", "--token", signing_key.sign({"sub": "alice"})))

    try:
        await resolver.start()
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, [resolver])
            for sub in ("alice", "bob", "carol", "carol", "", "x" * 2000):
                got = await check_token(http, resolver.url, signing_key.sign({"sub": sub}))
                assert got.status in (200, 403), got
            await db.execute('UPDATE "LiteLLM_VerificationToken" SET blocked = true')
            for _ in range(3):
                got = await check_token(http, resolver.url, signing_key.sign({"sub": "alice"}))
                if got.reason == "key_blocked":
                    exposed.append(json.dumps(got.headers))
                    break
            for path in ("/metrics", "/readyz", "/healthz"):
                async with http.get(resolver.url + path) as resp:
                    exposed.append(await resp.text())
        exposed.append(resolver.full_output())
    finally:
        await asyncio.to_thread(resolver.stop)
    exposed.append(await cli(cfg, "map", "list"))

    hashes = [r["token"] for r in await db.fetch('SELECT token FROM "LiteLLM_VerificationToken"')]
    assert len(hashes) == 2  # the created key, and carol's auto-registered one
    text = "\n".join(exposed)
    assert "decision" in text and "fingerprint" in text.lower()  # the scan saw real output
    assert plaintext not in text
    for token_hash in hashes:
        assert token_hash not in text
        assert fingerprint(token_hash) in text  # what is shown instead
    assert leaked_secrets(text) == []
