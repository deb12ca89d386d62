"""``jwtkeymap key``: manage virtual keys."""

from __future__ import annotations

import click

from jwtkeymap.cli.context import ACTOR, Context, Group, pass_ctx
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.core.settings import KeyDefaults


@click.group(cls=Group)
def key() -> None:
    """Manage virtual keys."""


@key.command("create")
@click.option("--team-id")
@click.option("--user-id")
@click.option("--org-id")
@click.option("--alias")
@click.option("--models", help="Comma-separated model names the key may use.")
@pass_ctx
async def key_create(
    ctx: Context,
    team_id: str | None,
    user_id: str | None,
    org_id: str | None,
    alias: str | None,
    models: str | None,
) -> None:
    """Create a virtual key; its plaintext is printed once and never stored."""
    defaults = KeyDefaults(models=[m for m in (models or "").split(",") if m])
    spec = NewKey(team_id=team_id, user_id=user_id, org_id=org_id, alias=alias, defaults=defaults)
    async with ctx.store() as store:
        plaintext, identity = await store.create_key(spec, actor=ACTOR)
    click.echo(plaintext)
    click.echo(
        f"created key {identity.fingerprint} (store the value above now: it is not shown again)",
        err=True,
    )
