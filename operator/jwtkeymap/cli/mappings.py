"""``jwtkeymap map``: manage claim → key mappings directly in the database."""

from __future__ import annotations

import json
import re

import click

from jwtkeymap.cli.context import ACTOR, Context, Group, pass_ctx
from jwtkeymap.cli.output import format_table
from jwtkeymap.core.claims import ISSUER_URL, MappingIdentity, canonicalize
from jwtkeymap.core.errors import ClaimError, MappingNotFound
from jwtkeymap.core.keys import hash_key, is_key_hash


@click.group("map", cls=Group)
def map_group() -> None:
    """Manage claim → key mappings directly in the database."""


def _identity(ctx: Context, issuer: str, claim: str | None, value: str) -> MappingIdentity:
    name = claim or ctx.settings.claim_field
    try:
        canonical = canonicalize(value, field=name, casefold=ctx.settings.casefold_claim)
    except ClaimError as exc:
        raise click.BadParameter(str(exc), param_hint="VALUE") from None
    return MappingIdentity(issuer=issuer, claim_name=name, claim_value=canonical)


@map_group.command("add")
@click.argument("value")
@click.option("--claim", help="Claim name (default: the configured claim_field).")
@click.option("--issuer", help="Issuer URL this mapping applies to (tokens of other issuers miss).")
@click.option(
    "--any-issuer", is_flag=True, help="Apply to tokens of any trusted issuer (the global scope)."
)
@click.option("--key", "key_plain", envvar="JWTKEYMAP_KEY", help="Plaintext virtual key.")
@click.option("--key-hash", help="sha256 hex of an existing virtual key.")
@click.option("--description")
@click.option("--inactive", is_flag=True, help="Create the mapping disabled.")
@pass_ctx
async def map_add(
    ctx: Context,
    value: str,
    claim: str | None,
    issuer: str | None,
    any_issuer: bool,
    key_plain: str | None,
    key_hash: str | None,
    description: str | None,
    inactive: bool,
) -> None:
    """Map a claim VALUE to a key (give exactly one of --key or --key-hash, and a scope)."""
    # No default scope: a sub is unique only within one issuer, so a silent "any issuer"
    # would hand one user's key to a namesake at another trusted issuer.
    if (issuer is None) == (not any_issuer):
        raise click.UsageError(
            "give the scope: --issuer URL (tokens of that issuer only) or --any-issuer "
            "(any trusted issuer)"
        )
    if issuer is not None and not re.fullmatch(ISSUER_URL, issuer):
        raise click.BadParameter("must be an issuer URL (https://…)", param_hint="--issuer")
    if bool(key_plain) == bool(key_hash):
        raise click.UsageError("give exactly one of --key (plaintext) or --key-hash (its sha256)")
    if key_hash is not None and not is_key_hash(key_hash):
        raise click.BadParameter(
            "must be 64 lowercase hex characters; pass the plaintext with --key instead",
            param_hint="--key-hash",
        )
    token_hash = key_hash or hash_key(key_plain or "")
    identity = _identity(ctx, issuer or "", claim, value)
    async with ctx.store() as store:
        row = await store.add_mapping(
            identity, token_hash, description=description, active=not inactive, actor=ACTOR
        )
    click.echo(f"added mapping {row.id} ({row.identity.label()} -> key {row.key_fingerprint})")


@map_group.command("list")
@click.option("--claim", help="Only this claim name.")
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table")
@pass_ctx
async def map_list(ctx: Context, claim: str | None, output: str) -> None:
    """List mappings; keys appear only as fingerprints."""
    async with ctx.store() as store:
        rows = await store.list_mappings(claim_name=claim)
    if output == "json":
        click.echo(
            json.dumps(
                [
                    {
                        "id": r.id,
                        **r.identity.to_json(),
                        "key_fingerprint": r.key_fingerprint,
                        "active": r.is_active,
                        "description": r.description,
                        "owner": r.owner,
                        "created_by": r.created_by,
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
        return
    table = [("ID", "ISSUER", "CLAIM", "VALUE", "KEY", "ACTIVE", "OWNER")]
    for r in rows:
        table.append(
            (
                r.id,
                r.identity.issuer or "*",
                r.identity.claim_name,
                r.identity.claim_value,
                r.key_fingerprint,
                "yes" if r.is_active else "no",
                r.owner or r.created_by or "",
            )
        )
    click.echo(format_table(table))


@map_group.command("disable")
@click.argument("mapping_id")
@pass_ctx
async def map_disable(ctx: Context, mapping_id: str) -> None:
    """Disable a mapping (its client is then denied, never re-registered)."""
    async with ctx.store() as store:
        row = await store.set_active(mapping_id, False, actor=ACTOR)
    click.echo(f"disabled mapping {row.id} ({row.identity.label()})")


@map_group.command("enable")
@click.argument("mapping_id")
@pass_ctx
async def map_enable(ctx: Context, mapping_id: str) -> None:
    """Enable a disabled mapping."""
    async with ctx.store() as store:
        row = await store.set_active(mapping_id, True, actor=ACTOR)
    click.echo(f"enabled mapping {row.id} ({row.identity.label()})")


@map_group.command("remove")
@click.argument("mapping_id")
@pass_ctx
async def map_remove(ctx: Context, mapping_id: str) -> None:
    """Delete a mapping (the key itself is kept)."""
    async with ctx.store() as store:
        removed = await store.remove_mapping(mapping_id)
    if not removed:
        raise MappingNotFound(f"mapping {mapping_id} not found")
    click.echo(f"removed mapping {mapping_id}")
