"""The command line, run as a user runs it (a subprocess), against a real database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from jwtkeymap.core.keys import fingerprint, hash_key
from jwtkeymap.demo.ports import free_port
from jwtkeymap.demo.signing import SigningKey
from support.commands import run_jwtkeymap as jwtkeymap

ISS = "https://idp.test.example"


@pytest.fixture
def config(tmp_path: Path, signing_key: SigningKey) -> Path:
    path = tmp_path / "jwtkeymap.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "claim_field": "email",
                "unregistered_client_behavior": "reject",
                "issuers": [
                    {"issuer": ISS, "public_keys": [signing_key.public_pem], "audience": "litellm"}
                ],
            }
        )
    )
    return path


async def test_migrate_is_idempotent_from_the_cli(empty_database_url: str) -> None:
    first = await jwtkeymap("--database-url", empty_database_url, "migrate")
    assert first.returncode == 0, first.stderr
    assert "LiteLLM_JWTKeyMapping" in first.stdout and "issuer-scoped" in first.stdout
    second = await jwtkeymap("migrate", env={"JWTKEYMAP_DATABASE_URL": empty_database_url})
    assert second.returncode == 0 and "already up to date" in second.stdout


async def test_key_create_shows_the_key_once_and_stores_only_its_hash(
    database_url: str, db: asyncpg.Connection
) -> None:
    out = await jwtkeymap(
        "--database-url", database_url, "key", "create", "--team-id", "t1", "--alias", "ci"
    )
    assert out.returncode == 0, out.stderr
    plaintext = out.stdout.strip()
    assert plaintext.startswith("sk-")
    assert fingerprint(hash_key(plaintext)) in out.stderr
    row = await db.fetchrow('SELECT token, team_id, key_alias FROM "LiteLLM_VerificationToken"')
    assert row["token"] == hash_key(plaintext) and row["team_id"] == "t1"
    dump = await db.fetchval("SELECT string_agg(t::text, '') FROM \"LiteLLM_VerificationToken\" t")
    assert plaintext not in dump


async def test_map_lifecycle_and_decisions(
    database_url: str, config: Path, signing_key: SigningKey
) -> None:
    base = ("--config", str(config), "--database-url", database_url)
    key = (await jwtkeymap(*base, "key", "create", "--team-id", "team-a")).stdout.strip()
    added = await jwtkeymap(
        *base, "map", "add", "alice@example.com", "--key", key, "--description", "Alice",
        "--any-issuer",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    mapping_id = added.stdout.split()[2]

    listing = await jwtkeymap(*base, "map", "list")
    assert "alice@example.com" in listing.stdout and fingerprint(hash_key(key)) in listing.stdout
    # The global scope is listed as "*", as manifests spell it.
    assert listing.stdout.splitlines()[1].split()[1] == "*"
    assert hash_key(key) not in listing.stdout and key not in listing.stdout
    rows = json.loads((await jwtkeymap(*base, "map", "list", "-o", "json")).stdout)
    assert rows[0]["id"] == mapping_id and rows[0]["active"] is True and "token" not in rows[0]

    token = signing_key.sign({"email": "alice@example.com"})
    ok = await jwtkeymap(*base, "resolve", "--token", token)
    assert ok.returncode == 0, ok.stderr
    decision = json.loads(ok.stdout)
    assert decision["decision"] == "mapped" and decision["key"]["team_id"] == "team-a"
    assert hash_key(key) not in ok.stdout

    assert (await jwtkeymap(*base, "map", "disable", mapping_id)).returncode == 0
    denied = await jwtkeymap(*base, "resolve", "--token", token)
    assert denied.returncode == 1 and json.loads(denied.stdout)["reason"] == "mapping_inactive"
    assert (await jwtkeymap(*base, "map", "enable", mapping_id)).returncode == 0
    assert (await jwtkeymap(*base, "map", "remove", mapping_id)).returncode == 0
    gone = await jwtkeymap(*base, "resolve", "--token", token)
    assert json.loads(gone.stdout)["reason"] == "unregistered_client"
    again = await jwtkeymap(*base, "map", "remove", mapping_id)
    assert again.returncode != 0 and "not found" in again.stderr
    for verb in ("disable", "enable"):
        missing = await jwtkeymap(*base, "map", verb, mapping_id)
        assert missing.returncode == 1 and "not found" in missing.stderr


async def test_duplicate_mapping_is_a_conflict(database_url: str) -> None:
    base = ("--database-url", database_url)
    key = (await jwtkeymap(*base, "key", "create")).stdout.strip()
    scope = ("--issuer", "https://idp.example.com")
    assert (await jwtkeymap(*base, "map", "add", "bob", "--key", key, *scope)).returncode == 0
    dup = await jwtkeymap(*base, "map", "add", "bob", "--key", key, *scope)
    assert dup.returncode == 1 and "conflict" in dup.stderr
    # The same sub from another issuer is someone else: a mapping of its own.
    other = await jwtkeymap(
        *base, "map", "add", "bob", "--key", key, "--issuer", "https://b.example"
    )
    assert other.returncode == 0, other.stderr
    unknown = await jwtkeymap(
        *base, "map", "add", "carol", "--key", "sk-does-not-exist", "--any-issuer"
    )
    assert unknown.returncode == 1 and "key not found" in unknown.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("map", "add", "x", "--key-hash", "ABC", "--any-issuer"), "64 lowercase hex"),
        (("map", "add", "x", "--any-issuer"), "exactly one of --key"),
        # No silent default scope: the error names both ways to give one.
        (("map", "add", "x", "--key", "sk-x"), "--issuer URL (tokens of that issuer only) or"),
        (("map", "add", "x", "--key", "sk-x"), "--any-issuer (any trusted issuer)"),
        (("map", "add", "x", "--key", "sk-x", "--issuer", "https://i", "--any-issuer"), "--issuer"),
        (("map", "add", "x", "--key", "sk-x", "--issuer", "idp.example"), "an issuer URL"),
    ],
)
async def test_usage_errors(database_url: str, args: tuple[str, ...], fragment: str) -> None:
    out = await jwtkeymap("--database-url", database_url, *args)
    assert out.returncode == 2 and fragment in out.stderr


async def test_clear_errors(config: Path, database_url: str) -> None:
    cases: list[tuple[tuple[str, ...], str]] = [
        (("--database-url", "mysql://x", "migrate"), "database_url"),
        (
            ("--database-url", f"postgresql://postgres@127.0.0.1:{free_port()}/x", "migrate"),
            "database unavailable",
        ),
        (("migrate",), "no database configured"),
        (("--config", str(config), "resolve", "--token", "not.a.jwt"), "invalid token"),
        (("--config", str(config), "resolve", "--token", "nodots"), "invalid token"),
        (("--config", "/nonexistent.yaml", "migrate"), "does not exist"),
    ]
    for args, fragment in cases:
        out = await jwtkeymap(*args)
        assert out.returncode != 0, args
        assert fragment in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr
        errors = [line for line in out.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and fragment in errors[0], out.stderr


async def test_resolve_without_a_database_applies_the_no_database_rule(
    config: Path, signing_key: SigningKey
) -> None:
    token = signing_key.sign({"email": "x@y"})
    out = await jwtkeymap("--config", str(config), "resolve", "--token", token)
    decision: dict[str, Any] = json.loads(out.stdout)
    assert out.returncode == 1 and decision["status"] == 403
