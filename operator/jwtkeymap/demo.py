"""``jwtkeymap demo``: the whole decision flow on a throwaway PostgreSQL, no cluster needed.

It starts a private PostgreSQL, migrates it, creates virtual keys and mappings,
signs sample JWTs with a freshly generated key, and prints what each
unregistered-client behaviour decides for each of them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import click

from jwtkeymap.cli.output import format_table
from jwtkeymap.core import schema
from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.errors import InvalidToken
from jwtkeymap.core.policy import Decision, Outcome, Resolver
from jwtkeymap.core.settings import Settings, load_settings
from jwtkeymap.core.store import NewKey, Store
from jwtkeymap.core.tokens import TokenVerifier
from jwtkeymap.testing.postgres import PostgresNotInstalled, throwaway_postgres
from jwtkeymap.testing.tokens import SigningKey

CORP = "https://login.corp.example"
PARTNER = "https://idp.partner.example"
BEHAVIORS = ("reject", "fallback_team_mapping", "auto_register")


@dataclasses.dataclass
class Scenario:
    """One sample request: a label and the token it carries."""

    label: str
    token: Callable[[], str]


def _scenarios(corp: SigningKey, partner: SigningKey) -> list[Scenario]:
    now = int(time.time())
    return [
        Scenario("alice (mapped, team alpha)", lambda: corp.sign({"email": "alice@corp.example"})),
        Scenario(
            "carol via corp IdP (issuer-scoped)", lambda: corp.sign({"email": "carol@x.example"})
        ),
        Scenario(
            "carol via partner IdP (no mapping there)",
            lambda: partner.sign({"email": "carol@x.example"}),
        ),
        Scenario("bob (mapping disabled)", lambda: corp.sign({"email": "bob@corp.example"})),
        Scenario("dave (key blocked)", lambda: corp.sign({"email": "dave@corp.example"})),
        Scenario(
            "erin (unregistered, team claim)",
            lambda: corp.sign({"email": "erin@corp.example", "team": "team-gamma"}),
        ),
        Scenario("no email claim", lambda: corp.sign({"sub": "svc-123"})),
        Scenario("email is a list", lambda: corp.sign({"email": ["a@x", "b@x"]})),
        Scenario(
            "platform admin (scope)",
            lambda: corp.sign(
                {"email": "root@corp.example", "scope": "openid litellm_proxy_admin"}
            ),
        ),
        Scenario(
            "expired token", lambda: corp.sign({"email": "alice@corp.example"}, exp=now - 600)
        ),
        Scenario(
            "forged (unknown signer)",
            lambda: SigningKey(CORP).sign({"email": "alice@corp.example"}),
        ),
    ]


def _settings(url: str, behavior: str, corp: SigningKey, partner: SigningKey) -> Settings:
    return load_settings(
        None,
        database_url=url,
        claim_field="email",
        unregistered_client_behavior=behavior,
        issuers=[
            {"issuer": CORP, "public_keys": [corp.public_pem], "audience": "litellm"},
            {"issuer": PARTNER, "public_keys": [partner.public_pem], "audience": "litellm"},
        ],
        admin={"claim": "scope", "value": "litellm_proxy_admin"},
        auto_register={
            "team_id_claim": "team",
            "team_id_default": "team-sandbox",
            "user_id_claim": "email",
            "key_defaults": {"models": ["gpt-4o-mini"], "max_budget": 10, "rpm_limit": 60},
        },
    )


async def _seed(store: Store) -> dict[str, str]:
    teams = {}
    for team in ("team-alpha", "team-beta"):
        _, key = await store.create_key(NewKey(team_id=team, alias=team), actor="demo")
        teams[team] = key.token_hash
    _, blocked = await store.create_key(NewKey(team_id="team-beta"), actor="demo")
    add = store.add_mapping
    await add(MappingIdentity("", "email", "alice@corp.example"), teams["team-alpha"], actor="demo")
    await add(MappingIdentity(CORP, "email", "carol@x.example"), teams["team-beta"], actor="demo")
    await add(
        MappingIdentity("", "email", "bob@corp.example"),
        teams["team-alpha"],
        active=False,
        actor="demo",
    )
    await add(MappingIdentity("", "email", "dave@corp.example"), blocked.token_hash, actor="demo")
    async with store.connection("demo") as conn:
        await conn.execute(
            'UPDATE "LiteLLM_VerificationToken" SET blocked = true WHERE token = $1',
            blocked.token_hash,
        )
    return teams


def describe(decision: Decision) -> str:
    """A short cell for the table."""
    if decision.outcome is Outcome.DENIED:
        return f"{decision.status} {decision.reason.value if decision.reason else ''}"
    team = f" ({decision.key.team_id})" if decision.key and decision.key.team_id else ""
    return f"{decision.status} {decision.outcome.value}{team}"


async def run(url: str) -> list[list[str]]:
    """Seed the database and decide every scenario under every behaviour."""
    conn = await asyncpg.connect(url)
    try:
        await schema.migrate(conn, channel="jwtkeymap_invalidate")
    finally:
        await conn.close()
    corp, partner = SigningKey(CORP, kid="corp-1"), SigningKey(PARTNER, kid="partner-1")
    store = await Store.open(url)
    try:
        await _seed(store)
        scenarios = _scenarios(corp, partner)
        tokens = [s.token() for s in scenarios]
        rows = [[s.label] for s in scenarios]
        for behavior in BEHAVIORS:
            settings = _settings(url, behavior, corp, partner)
            verifier = TokenVerifier(settings)
            resolver = Resolver(settings, store=store)
            for row, token in zip(rows, tokens, strict=True):
                try:
                    verified = await verifier.verify(token)
                except InvalidToken:
                    row.append("401 invalid_token")
                    continue
                row.append(describe(await resolver.resolve(verified.claims, verified.issuer)))
        return rows
    finally:
        await store.close()


def render(rows: list[list[str]]) -> str:
    """Format the decision table."""
    header = ("REQUEST", *(b.upper() for b in BEHAVIORS))
    return format_table([header, *(tuple(r) for r in rows)])


EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "mappings"
EXAMPLE_ISSUER = "https://idp.example.com"
# The virtual keys the example manifests refer to (demo values, as in their Secrets).
EXAMPLE_KEYS = {
    "sk-demo-alpha-alice-7b2e91c4d0a8f356": "team-alpha",
    "sk-demo-alpha-bob-e4c81d2f95a07b63": "team-alpha",
    "sk-demo-beta-ci-5a09f3e8b1d47c26": "team-beta",
}
CAROL_KEY_HASH = "4163396471d8434d8cac0db62c21575af24d5a8cfa9681145afffa631e550ba0"


def _cli(url: str, *args: str) -> str:
    """Run the real ``jwtkeymap`` command line; return what it printed."""
    out = subprocess.run(
        [sys.executable, "-m", "jwtkeymap", "--database-url", url, "--log-level", "warning", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    return (out.stdout + out.stderr).rstrip()


async def _seed_example_keys(url: str) -> None:
    from jwtkeymap.core.keys import hash_key

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


async def _through_the_resolver(url: str) -> list[tuple[str, str, str]]:
    """Start a real resolver process and send signed JWTs through ``/check``."""
    import aiohttp

    from jwtkeymap.testing.servers import ResolverProcess, check_token, wait_until

    idp, partner = SigningKey(EXAMPLE_ISSUER, kid="idp-1"), SigningKey(PARTNER, kid="p-1")
    resolver = ResolverProcess(
        {
            "database_url": url,
            "claim_field": "email",
            "unregistered_client_behavior": "reject",
            "log_level": "warning",
            "issuers": [
                {"issuer": k.issuer, "public_keys": [k.public_pem], "audience": "litellm"}
                for k in (idp, partner)
            ],
        }
    )
    requests = [
        ("alice@alpha (any issuer)", idp.sign({"email": "alice@alpha.example.com"})),
        ("alice@alpha via partner IdP", partner.sign({"email": "alice@alpha.example.com"})),
        ("bob@alpha (inactive)", idp.sign({"email": "bob@alpha.example.com"})),
        ("carol@beta via corporate IdP", idp.sign({"email": "carol@beta.example.com"})),
        ("carol@beta via partner IdP", partner.sign({"email": "carol@beta.example.com"})),
        ("eve (no mapping)", idp.sign({"email": "eve@example.com"})),
        ("no Authorization header", None),
        ("forged signature", SigningKey(EXAMPLE_ISSUER).sign({"email": "alice@alpha.example.com"})),
    ]
    out: list[tuple[str, str, str]] = []
    await resolver.start()
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                return bool((await resolver.readiness(http))["status"] == 200)

            await wait_until(ready, timeout=30, what="resolver readiness")
            for label, token in requests:
                got = await check_token(http, resolver.url, token)
                detail = got.headers.get("x-jwtkeymap-decision") or got.reason or ""
                team = got.headers.get("x-jwtkeymap-team-id", "")
                out.append((label, f"{got.status} {detail}", team))
            # Revoke alice behind everyone's back, in plain SQL: the trigger's NOTIFY evicts
            # the resolver's cached allow at once (no TTL wait).
            conn = await asyncpg.connect(url)
            try:
                await conn.execute(
                    'UPDATE "LiteLLM_JWTKeyMapping" SET is_active = false '
                    "WHERE jwt_claim_value = 'alice@alpha.example.com'"
                )
            finally:
                await conn.close()
            alice = requests[0][1]
            start = time.monotonic()

            async def revoked() -> bool:
                return (await check_token(http, resolver.url, alice)).status == 403

            await wait_until(revoked, timeout=10, what="revocation")
            ms = (time.monotonic() - start) * 1000
            out.append(
                (f"alice after an SQL UPDATE (seen in {ms:.0f} ms)", "403 mapping_inactive", "")
            )
    finally:
        resolver.stop()
    return out


def _cluster_free_flow(url: str) -> None:
    if not EXAMPLES.is_dir():
        click.echo("(examples/ not found next to the package: skipping the manifest flow)")
        return
    click.echo("\n== 2. The manifests in examples/mappings, applied without a cluster")
    asyncio.run(_seed_example_keys(url))
    click.echo("$ jwtkeymap diff -f examples/mappings")
    click.echo(_cli(url, "diff", "-f", str(EXAMPLES)))
    click.echo("$ jwtkeymap apply -f examples/mappings")
    click.echo(_cli(url, "apply", "-f", str(EXAMPLES)))
    click.echo("$ jwtkeymap apply -f examples/mappings   # again: nothing to do")
    click.echo(_cli(url, "apply", "-f", str(EXAMPLES)))
    click.echo("\n== 3. A resolver sidecar answering /check (claim: email, behaviour: reject)")
    rows = asyncio.run(_through_the_resolver(url))
    click.echo(format_table([("REQUEST", "/check", "TEAM"), *rows]))


def show() -> None:
    """Show every policy's decision for sample JWTs, on a throwaway PostgreSQL."""
    try:
        with throwaway_postgres() as pg:
            pg.psql("CREATE DATABASE examples")
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "jwtkeymap",
                    "--database-url",
                    pg.url_for("examples"),
                    "migrate",
                ],
                check=True,
                capture_output=True,
            )
            click.echo(f"started a throwaway PostgreSQL on 127.0.0.1:{pg.port}")
            click.echo("\n== 1. The policy engine, for each unregistered-client behaviour")
            click.echo("seeded:")
            click.echo("  alice -> team-alpha key, carol (corp IdP only) -> team-beta key,")
            click.echo(
                "  bob -> disabled mapping, dave -> blocked key; admin = scope litellm_proxy_admin"
            )
            click.echo("")
            rows: Any = asyncio.run(run(pg.url))
            click.echo(render(rows))
            click.echo("")
            click.echo(
                "auto_register created erin's key in team-gamma (from the token's team claim);\n"
                "tokens from an untrusted signer or past exp never reach the policy (401)."
            )
            _cluster_free_flow(pg.url_for("examples"))
    except PostgresNotInstalled as exc:
        raise click.ClickException(str(exc)) from None
