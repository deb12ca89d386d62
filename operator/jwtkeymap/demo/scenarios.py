"""Part 1 of the demo: sample requests decided by the policy engine under every behaviour.

It seeds virtual keys and mappings, signs one token per scenario, and decides each token
under each unregistered-client behaviour, in process (no HTTP): a table of decisions.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import asyncpg

from jwtkeymap.cli.output import format_table
from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.core.db.schema import migrate
from jwtkeymap.core.db.store import Store
from jwtkeymap.core.errors import InvalidToken
from jwtkeymap.core.policy import Decision, PolicyEngine, Verdict
from jwtkeymap.core.settings import Settings, load_settings
from jwtkeymap.core.tokens import TokenVerifier
from jwtkeymap.demo.signing import SigningKey

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
    if decision.outcome is Verdict.DENIED:
        return f"{decision.status} {decision.reason.value if decision.reason else ''}"
    team = f" ({decision.key.team_id})" if decision.key and decision.key.team_id else ""
    return f"{decision.status} {decision.outcome.value}{team}"


async def decide_all(url: str) -> list[list[str]]:
    """Seed the database and decide every scenario under every behaviour."""
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn, channel="jwtkeymap_invalidate")
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
            resolver = PolicyEngine(settings, store=store)
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
