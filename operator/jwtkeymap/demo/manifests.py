"""Part 2 of the demo: the example JWTKeyMapping manifests, diffed and applied without a cluster.

The manifests are the ones in the repository's ``examples/mappings``, shipped with the
package (``data/mappings``) so the demo works from an installed wheel; a test keeps the
two copies identical. They are applied by the real ``jwtkeymap`` command line.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import asyncpg

from jwtkeymap.core.keys import hash_key

# The virtual keys the example manifests refer to (demo values, as in their Secrets).
EXAMPLE_KEYS = {
    "sk-demo-alpha-alice-7b2e91c4d0a8f356": "team-alpha",
    "sk-demo-alpha-bob-e4c81d2f95a07b63": "team-alpha",
    "sk-demo-beta-ci-5a09f3e8b1d47c26": "team-beta",
}
CAROL_KEY_HASH = "4163396471d8434d8cac0db62c21575af24d5a8cfa9681145afffa631e550ba0"


@contextlib.contextmanager
def manifests() -> Iterator[Path]:
    """The directory of the shipped example manifests, as a path ``jwtkeymap apply -f`` reads."""
    with resources.as_file(resources.files("jwtkeymap.demo") / "data" / "mappings") as path:
        yield path


def run_cli(url: str, *args: str) -> str:
    """Run the real ``jwtkeymap`` command line; return what it printed."""
    out = subprocess.run(
        [sys.executable, "-m", "jwtkeymap", "--database-url", url, "--log-level", "warning", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    return (out.stdout + out.stderr).rstrip()


async def seed_example_keys(url: str) -> None:
    """Create the virtual keys the manifests point at, and one mapping made by hand."""
    conn = await asyncpg.connect(url)
    try:
        rows = [(hash_key(k), team, "demo") for k, team in EXAMPLE_KEYS.items()]
        rows.append((CAROL_KEY_HASH, "team-beta", "created in LiteLLM's UI"))
        await conn.executemany(
            'INSERT INTO "LiteLLM_VerificationToken"(token, team_id, key_alias) '
            "VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            rows,
        )
        # A mapping made by hand before the team moved to manifests (ci-robot adopts it).
        await conn.execute(
            'INSERT INTO "LiteLLM_JWTKeyMapping"(id, jwt_claim_name, jwt_claim_value, token, '
            "created_by) VALUES ('hand-made-1', 'azp', 'beta-ci', $1, 'psql') "
            "ON CONFLICT DO NOTHING",
            hash_key("sk-demo-beta-ci-5a09f3e8b1d47c26"),
        )
    finally:
        await conn.close()
