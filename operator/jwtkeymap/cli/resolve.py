"""``jwtkeymap resolve``: one token through the real verifier and policy, once."""

from __future__ import annotations

import contextlib
import json
import sys

import aiohttp
import click

from jwtkeymap.cli.context import Command, Context, pass_ctx
from jwtkeymap.core.errors import ConfigError
from jwtkeymap.core.policy import PolicyEngine
from jwtkeymap.core.tokens import TokenVerifier


@click.command(cls=Command)
@click.option("--token", envvar="JWTKEYMAP_TOKEN", required=True, help="The JWT to resolve.")
@pass_ctx
async def resolve(ctx: Context, token: str) -> None:
    """Verify a token and print the policy's decision as JSON (exit 1 when denied)."""
    settings = ctx.settings
    if not settings.issuers:
        raise ConfigError("no trusted issuers configured: add `issuers:` to the config file")
    async with aiohttp.ClientSession() as session:
        verifier = TokenVerifier(settings, session=session)
        verified = await verifier.verify(token.strip())
    async with contextlib.AsyncExitStack() as stack:
        # Without a database the policy applies its no-database rule.
        store = await stack.enter_async_context(ctx.store()) if settings.database_url else None
        decision = await PolicyEngine(settings, store=store).resolve(
            verified.claims, verified.issuer
        )
    click.echo(json.dumps(decision.to_json(), indent=2))
    if not decision.allowed:
        sys.exit(1)
