"""`jwtkeymap apply` / `diff` on the example manifests, against a real PostgreSQL, with golden output."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner, Result

from jwtkeymap.cli.main import cli
from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.core.db.store import Store
from jwtkeymap.core.keys import hash_key
from jwtkeymap.core.owners import AUTO_REGISTERED

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples" / "mappings"
GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("JWTKEYMAP_UPDATE_GOLDEN") == "1"

DEMO_KEYS = (
    "sk-demo-alpha-alice-7b2e91c4d0a8f356",
    "sk-demo-alpha-bob-e4c81d2f95a07b63",
    "sk-demo-beta-ci-5a09f3e8b1d47c26",
    "sk-demo-beta-carol-3d1f6c0e9a5b4c27",
)


def golden(name: str, text: str) -> None:
    """Compare with tests/integration/operator/golden/NAME (JWTKEYMAP_UPDATE_GOLDEN=1 rewrites)."""
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert text == path.read_text(), f"output differs from {path.name}"


async def run(
    database_url: str, *args: str, env: dict[str, str] | None = None, input: str | None = None
) -> Result:
    """Invoke the CLI in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(
        CliRunner().invoke, cli, ["--database-url", database_url, *args], env=env, input=input
    )


@pytest.fixture
async def demo_keys(db: asyncpg.Connection) -> None:
    for plaintext in DEMO_KEYS:
        await db.execute(
            'INSERT INTO "LiteLLM_VerificationToken" (token, key_alias) VALUES ($1, $2)',
            hash_key(plaintext),
            plaintext[:-4],
        )
    # A hand-made mapping the ci-robot manifest adopts.
    await db.execute(
        'INSERT INTO "LiteLLM_JWTKeyMapping" (id, jwt_claim_name, jwt_claim_value, token, '
        "created_by) VALUES ('manual-1', 'azp', 'beta-ci', $1, 'admin@litellm-ui')",
        hash_key(DEMO_KEYS[2]),
    )


@pytest.fixture
def examples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of examples/mappings, under a stable relative path."""
    shutil.copytree(EXAMPLES, tmp_path / "mappings")
    monkeypatch.chdir(tmp_path)
    return Path("mappings")


async def mapping_rows(db: asyncpg.Connection) -> list[tuple[str, str, str, bool, str | None]]:
    rows = await db.fetch(
        "SELECT m.jwt_issuer, m.jwt_claim_name, m.jwt_claim_value, m.is_active, o.owner "
        'FROM "LiteLLM_JWTKeyMapping" m LEFT JOIN jwtkeymap_mapping_owner o ON o.mapping_id = m.id '
        "ORDER BY 2, 3"
    )
    return [tuple(r) for r in rows]  # type: ignore[misc]


async def test_diff_then_apply_then_nothing_to_do(
    database_url: str, db: asyncpg.Connection, demo_keys: None, examples: Path
) -> None:
    planned = await run(database_url, "diff", "-f", str(examples))
    assert planned.exit_code == 0, planned.output
    golden("diff-initial.txt", planned.stdout)
    assert await db.fetchval("SELECT count(*) FROM jwtkeymap_mapping_owner") == 0

    applied = await run(database_url, "apply", "-f", str(examples))
    assert applied.exit_code == 0, applied.output
    golden("apply-initial.txt", applied.stdout)
    assert await mapping_rows(db) == [
        ("", "azp", "beta-ci", True, "offline:team-beta/ci-robot"),
        ("", "email", "alice@alpha.example.com", True, "offline:team-alpha/alice"),
        ("", "email", "bob@alpha.example.com", False, "offline:team-alpha/bob"),
        (
            "https://idp.example.com",
            "email",
            "carol@beta.example.com",
            True,
            "offline:team-beta/carol",
        ),
    ]

    again = await run(database_url, "apply", "-f", str(examples))
    assert again.exit_code == 0
    golden("apply-again.txt", again.stdout)
    assert "4 unchanged" in again.stderr


async def test_prune_removes_only_vanished_offline_rows(
    database_url: str, db: asyncpg.Connection, demo_keys: None, examples: Path
) -> None:
    assert (await run(database_url, "apply", "-f", str(examples))).exit_code == 0
    alpha = examples / "team-alpha.yaml"
    text = alpha.read_text()
    # Drop bob, and change alice's description.
    alpha.write_text(
        text.split(
            "---\napiVersion: jwtkeymap.io/v1alpha1\nkind: JWTKeyMapping\nmetadata:\n  name: bob"
        )[0].replace("production key", "production key (rotated)")
    )
    planned = await run(database_url, "diff", "--prune", "-f", str(examples))
    assert planned.exit_code == 0, planned.output
    golden("diff-prune.txt", planned.stdout)
    assert len(await mapping_rows(db)) == 4

    applied = await run(database_url, "apply", "--prune", "-f", str(examples))
    assert applied.exit_code == 0, applied.output
    golden("apply-prune.txt", applied.stdout)
    values = [r[2] for r in await mapping_rows(db)]
    assert values == ["beta-ci", "alice@alpha.example.com", "carol@beta.example.com"]


async def test_conflict_across_namespaces_exits_nonzero(
    database_url: str, db: asyncpg.Connection, demo_keys: None, examples: Path
) -> None:
    assert (await run(database_url, "apply", "-f", str(examples))).exit_code == 0
    rival = Path("rival.yaml")
    rival.write_text(
        "apiVersion: jwtkeymap.io/v1alpha1\nkind: JWTKeyMapping\n"
        "metadata: {name: alice, namespace: team-gamma}\n"
        "spec:\n  issuer: '*'\n  claim: {name: email, value: alice@alpha.example.com}\n"
        f"  key: {{hash: {hash_key(DEMO_KEYS[1])}}}\n"
    )
    result = await run(database_url, "apply", "-f", str(rival))
    assert result.exit_code == 1
    golden("apply-conflict.txt", result.stdout)
    owner = await db.fetchval(
        'SELECT o.owner FROM jwtkeymap_mapping_owner o JOIN "LiteLLM_JWTKeyMapping" m '
        "ON m.id = o.mapping_id WHERE m.jwt_claim_value = 'alice@alpha.example.com'"
    )
    assert owner == "offline:team-alpha/alice"


async def test_missing_key_and_secret_are_reported(
    database_url: str, db: asyncpg.Connection, examples: Path
) -> None:
    # No keys in the database at all.
    result = await run(database_url, "apply", "-f", str(examples / "team-beta.yaml"))
    assert result.exit_code == 1
    golden("apply-missing-keys.txt", result.stdout)
    assert await mapping_rows(db) == []


async def test_secret_from_env(
    database_url: str, db: asyncpg.Connection, demo_keys: None, tmp_path: Path
) -> None:
    manifest = tmp_path / "env.yaml"
    manifest.write_text(
        "apiVersion: jwtkeymap.io/v1alpha1\nkind: JWTKeyMapping\n"
        "metadata: {name: dave, namespace: ops}\n"
        "spec:\n  issuer: '*'\n  claim: {name: sub, value: '1234'}\n"
        "  key: {secretRef: {name: ops-keys, key: dave.key}}\n"
    )
    without = await run(database_url, "apply", "-f", str(manifest))
    assert without.exit_code == 1
    assert "Secret ops/ops-keys is in none of the given manifests" in without.stdout
    env = {"JWTKEYMAP_SECRET_OPS_KEYS_DAVE_KEY": DEMO_KEYS[0] + "\n"}
    applied = await run(database_url, "apply", "--secret-from-env", "-f", str(manifest), env=env)
    assert applied.exit_code == 0, applied.output
    assert "ops/dave" in applied.stdout and "created" in applied.stdout
    token = await db.fetchval(
        "SELECT token FROM \"LiteLLM_JWTKeyMapping\" WHERE jwt_claim_value = '1234'"
    )
    assert token == hash_key(DEMO_KEYS[0])
    assert DEMO_KEYS[0] not in applied.output and token not in applied.output


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (
            "kind: JWTKeyMapping\napiVersion: jwtkeymap.io/v1alpha1\nmetadata: {name: x}\n"
            "spec: {issuer: '*', claim: {name: email, value: a@b}, key: {hash: NOTHEX}}\n",
            "bad.yaml: document 2 (default/x): spec.key.hash: must be the sha256",
        ),
        (
            "kind: JWTKeyMapping\napiVersion: jwtkeymap.io/v1alpha1\nmetadata: {name: x}\n"
            "spec: {issuer: '*', claim: {name: email}, key: {hash: '" + "0" * 64 + "'}}\n",
            "bad.yaml: document 2 (default/x): spec.claim.value: Field required",
        ),
        (
            "kind: JWTKeyMapping\napiVersion: jwtkeymap.io/v1alpha1\nmetadata: {name: x}\n"
            "spec: {issuer: '*', claim: {name: email, value: a}, key: {}}\n",
            "bad.yaml: document 2 (default/x): spec.key: exactly one of key.secretRef or key.hash",
        ),
        (
            "kind: JWTKeyMapping\napiVersion: jwtkeymap.io/v1alpha1\nmetadata: {name: x}\n"
            "spec: {issuer: '*', claim: {name: email, value: a}, key: {hash: '"
            + "0" * 64
            + "'}, colour: red}\n",
            "bad.yaml: document 2 (default/x): spec.colour: Extra inputs are not permitted",
        ),
        (
            "kind: JWTKeyMapping\napiVersion: jwtkeymap.io/v1alpha1\nmetadata: {name: x}\n"
            "spec: {claim: {name: sub, value: a}, key: {hash: '" + "0" * 64 + "'}}\n",
            "bad.yaml: document 2 (default/x): spec.issuer: required: set an issuer URL "
            '(e.g. https://idp.example.com), or "*" for any trusted issuer',
        ),
        (
            "kind: JWTKeyMapping\napiVersion: jwtkeymap.io/v1\nmetadata: {name: x}\nspec: {}\n",
            "bad.yaml: document 2: apiVersion: expected jwtkeymap.io/v1alpha1",
        ),
        (
            "kind: JWTKeyMapping\napiVersion: jwtkeymap.io/v1alpha1\nmetadata: {name: Not_A_Name}\n",
            "bad.yaml: document 2: metadata.name: must be a DNS subdomain name",
        ),
        ("key: [unclosed\n", "bad.yaml: not valid YAML (line 7)"),
    ],
)
async def test_malformed_manifest_names_file_document_and_field(
    database_url: str,
    db: asyncpg.Connection,
    demo_keys: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    document: str,
    expected: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    valid = (
        "apiVersion: jwtkeymap.io/v1alpha1\nkind: JWTKeyMapping\nmetadata: {name: ok}\n"
        f"spec: {{issuer: '*', claim: {{name: email, value: ok@x}}, key: {{hash: {hash_key(DEMO_KEYS[0])}}}}}\n"
    )
    Path("bad.yaml").write_text(valid + "---\n" + document)
    result = await run(database_url, "apply", "--prune", "-f", "bad.yaml")
    assert result.exit_code == 1
    assert expected in result.stderr
    assert "nothing was applied" in result.stderr
    # The valid document in the same file was not applied either.
    assert await db.fetchval("SELECT count(*) FROM jwtkeymap_mapping_owner") == 0


async def test_stdin_and_unrelated_kinds(
    database_url: str, demo_keys: None, tmp_path: Path
) -> None:
    manifest = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: unrelated}\n---\n"
        "apiVersion: jwtkeymap.io/v1alpha1\nkind: JWTKeyMapping\nmetadata: {name: eve}\n"
        f"spec: {{issuer: '*', claim: {{name: email, value: eve@x}}, key: {{hash: {hash_key(DEMO_KEYS[3])}}}}}\n"
    )
    result = await run(database_url, "apply", "-f", "-", input=manifest)
    assert result.exit_code == 0, result.output
    assert "<stdin>: document 1: skipped ConfigMap" in result.stderr
    assert "default/eve" in result.stdout


async def test_policies_beside_the_mappings_are_enforced(
    database_url: str, db: asyncpg.Connection, demo_keys: None, examples: Path
) -> None:
    # The resolver auto-registered someone on team Alpha's domain.
    store = await Store.open(database_url)
    try:
        await store.register(
            MappingIdentity("", "email", "zoe@alpha.example.com"), NewKey(team_id="sandbox")
        )
    finally:
        await store.close()
    alice_key = hash_key(DEMO_KEYS[1])
    (examples / "rivals.yaml").write_text(
        "apiVersion: jwtkeymap.io/v1alpha1\nkind: JWTKeyMapping\n"
        "metadata: {name: grab, namespace: team-mallory}\n"
        f"spec: {{issuer: '*', claim: {{name: email, value: eve@alpha.example.com}}, "
        f"key: {{hash: {alice_key}}}}}\n---\n"
        "apiVersion: jwtkeymap.io/v1alpha1\nkind: JWTKeyMapping\n"
        "metadata: {name: zoe, namespace: team-alpha, annotations: {jwtkeymap.io/adopt: 'true'}}\n"
        f"spec: {{issuer: '*', claim: {{name: email, value: zoe@alpha.example.com}}, "
        f"key: {{hash: {alice_key}}}}}\n"
    )
    result = await run(database_url, "apply", "-f", str(examples))
    assert result.exit_code == 1, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert "policy-denied" in lines["team-mallory/grab"]
    assert "no JWTKeyMappingPolicy selects namespace team-mallory" in lines["team-mallory/grab"]
    assert "policy-denied" in lines["team-alpha/zoe"]
    assert "adopt auto-registered mappings" in lines["team-alpha/zoe"]
    assert "created" in lines["team-alpha/alice"] and "adopted" in lines["team-beta/ci-robot"]
    owners = {(name, value): owner for _, name, value, _, owner in await mapping_rows(db)}
    assert ("email", "eve@alpha.example.com") not in owners  # no row written
    assert owners["email", "zoe@alpha.example.com"] == AUTO_REGISTERED
