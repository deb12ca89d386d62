"""Every command that reads settings honours the global options before or after its name.

``jwtkeymap --database-url URL migrate`` and ``jwtkeymap migrate --database-url URL``
must do the same thing, against a real database; JWTKEYMAP_DATABASE_URL is unset so
only the option can have told the command where the database is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import asyncpg
import pytest
import yaml
from click.testing import CliRunner, Result

from jwtkeymap.cli.main import cli
from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.core.db.rows import MappingRow
from jwtkeymap.core.db.store import Store
from jwtkeymap.demo.ports import free_port
from jwtkeymap.demo.signing import SigningKey
from support.commands import run_jwtkeymap


@pytest.fixture(params=["before", "after"])
def spelling(request: pytest.FixtureRequest) -> str:
    """Where the global options go: before the subcommand or after it (and its arguments)."""
    return str(request.param)


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """Commands configure the root logger; give it back to the test run afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def argv(spelling: str, options: Sequence[str], command: Sequence[str]) -> list[str]:
    return [*options, *command] if spelling == "before" else [*command, *options]


async def jwtkeymap(args: list[str]) -> Result:
    """Run the command line in a thread (a command runs its own event loop)."""
    return await asyncio.to_thread(
        CliRunner().invoke, cli, args, env={"JWTKEYMAP_DATABASE_URL": None}
    )


@pytest.fixture
def config(tmp_path: Path, signing_key: SigningKey) -> Path:
    path = tmp_path / "jwtkeymap.yaml"
    issuer = {"issuer": signing_key.issuer, "public_keys": [signing_key.public_pem]}
    path.write_text(
        yaml.safe_dump(
            {
                "claim_field": "email",
                "unregistered_client_behavior": "reject",
                "issuers": [{**issuer, "audience": "litellm"}],
            }
        )
    )
    return path


async def seed_mapping(store: Store, value: str = "alice@example.com") -> MappingRow:
    _, key = await store.create_key(NewKey(team_id="team-a"), actor="test")
    identity = MappingIdentity("", "email", value)
    return await store.add_mapping(identity, key.token_hash, actor="test")


async def test_migrate(spelling: str, empty_database_url: str) -> None:
    options = ("--database-url", empty_database_url, "--log-level", "error")
    result = await jwtkeymap(argv(spelling, options, ["migrate"]))
    assert result.exit_code == 0, result.output
    assert "migrated: created" in result.output and "LiteLLM_JWTKeyMapping" in result.output
    assert logging.getLogger().level == logging.ERROR  # --log-level reached the command too


async def test_key_create(spelling: str, database_url: str, db: asyncpg.Connection) -> None:
    options = ("--database-url", database_url)
    result = await jwtkeymap(argv(spelling, options, ["key", "create", "--team-id", "t-9"]))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("sk-")
    assert await db.fetchval('SELECT team_id FROM "LiteLLM_VerificationToken"') == "t-9"


async def test_map_add(spelling: str, database_url: str, store: Store) -> None:
    _, key = await store.create_key(NewKey(team_id="team-a"), actor="test")
    command = ["map", "add", "bob@example.com", "--claim", "email", "--key-hash", key.token_hash]
    command.append("--any-issuer")
    result = await jwtkeymap(argv(spelling, ("--database-url", database_url), command))
    assert result.exit_code == 0, result.output
    assert "added mapping" in result.output and "email=bob@example.com" in result.output


async def test_map_list(spelling: str, database_url: str, config: Path, store: Store) -> None:
    row = await seed_mapping(store)
    options = ("--config", str(config), "--database-url", database_url)
    result = await jwtkeymap(argv(spelling, options, ["map", "list", "--claim", "email"]))
    assert result.exit_code == 0, result.output
    assert row.id in result.output and "alice@example.com" in result.output


@pytest.mark.parametrize(
    ("verb", "done"), [("disable", "disabled"), ("enable", "enabled"), ("remove", "removed")]
)
async def test_map_change(
    spelling: str, verb: str, done: str, database_url: str, store: Store
) -> None:
    row = await seed_mapping(store)
    result = await jwtkeymap(
        argv(spelling, ("--database-url", database_url), ["map", verb, row.id])
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{done} mapping {row.id}")


async def test_resolve(
    spelling: str, database_url: str, config: Path, store: Store, signing_key: SigningKey
) -> None:
    await seed_mapping(store)
    token = signing_key.sign({"email": "alice@example.com"})
    options = ("--config", str(config), "--database-url", database_url)
    result = await jwtkeymap(argv(spelling, options, ["resolve", "--token", token]))
    # A mapped decision needs both: the issuer from the file, the mapping from the database.
    assert result.exit_code == 0, result.output
    assert '"decision": "mapped"' in result.stdout


@pytest.mark.parametrize(("verb", "outcome"), [("apply", "created"), ("diff", "create")])
async def test_apply_and_diff(
    spelling: str, verb: str, outcome: str, database_url: str, store: Store, tmp_path: Path
) -> None:
    _, key = await store.create_key(NewKey(team_id="team-a"), actor="test")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "apiVersion: jwtkeymap.io/v1alpha1\nkind: JWTKeyMapping\n"
        "metadata: {name: carol, namespace: team-a}\n"
        f"spec: {{issuer: '*', claim: {{name: email, value: carol@example.com}}, key: {{hash: {key.token_hash}}}}}\n"
    )
    options = ("--database-url", database_url)
    result = await jwtkeymap(argv(spelling, options, [verb, "-f", str(manifest)]))
    assert result.exit_code == 0, result.output
    assert "team-a/carol" in result.stdout and outcome in result.stdout


async def test_operator_reads_them(spelling: str, database_url: str) -> None:
    # With the database known, the next check (namespaces) is the one that fails.
    result = await jwtkeymap(argv(spelling, ("--database-url", database_url), ["operator"]))
    assert result.exit_code == 2
    assert "give --namespace NS (repeatable) or --all-namespaces" in result.output
    missing = "/nonexistent/operator.yaml"
    result = await jwtkeymap(argv(spelling, ("--config", missing), ["operator", "-n", "x"]))
    assert result.exit_code == 1
    assert f"configuration file {missing} does not exist" in result.output


async def test_resolver_reads_them(spelling: str, config: Path, pg_server) -> None:
    missing = "/nonexistent/resolver.yaml"
    result = await run_jwtkeymap(*argv(spelling, ("--config", missing), ["resolver"]))
    assert result.returncode != 0
    assert f"configuration file {missing} does not exist" in result.stderr
    unusable = pg_server.url_for("no_such_database")
    listen = ["--listen", f"127.0.0.1:{free_port()}"]
    options = ("--config", str(config), "--database-url", unusable)
    result = await run_jwtkeymap(*argv(spelling, options, ["resolver", *listen]))
    assert result.returncode == 1
    assert "no_such_database" in result.stderr and "Traceback" not in result.stderr
