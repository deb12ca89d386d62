"""The demo from start to end: a throwaway PostgreSQL, then the three parts, printed in order."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import click

from jwtkeymap.cli.output import format_table
from jwtkeymap.demo.checks import through_the_resolver
from jwtkeymap.demo.manifests import manifests, run_cli, seed_example_keys
from jwtkeymap.demo.postgres import PostgresNotInstalled, throwaway_postgres
from jwtkeymap.demo.scenarios import decide_all, render


def _cluster_free_flow(url: str) -> None:
    click.echo("\n== 2. The manifests in examples/mappings, applied without a cluster")
    asyncio.run(seed_example_keys(url))
    with manifests() as examples:
        click.echo("$ jwtkeymap diff -f examples/mappings")
        click.echo(run_cli(url, "diff", "-f", str(examples)))
        click.echo("$ jwtkeymap apply -f examples/mappings")
        click.echo(run_cli(url, "apply", "-f", str(examples)))
        click.echo("$ jwtkeymap apply -f examples/mappings   # again: nothing to do")
        click.echo(run_cli(url, "apply", "-f", str(examples)))
    click.echo("\n== 3. A resolver sidecar answering /check (claim: email, behaviour: reject)")
    rows = asyncio.run(through_the_resolver(url))
    click.echo(format_table([("REQUEST", "/check", "TEAM"), *rows]))


def tour() -> None:
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
            rows = asyncio.run(decide_all(pg.url))
            click.echo(render(rows))
            click.echo("")
            click.echo(
                "auto_register created erin's key in team-gamma (from the token's team claim);\n"
                "tokens from an untrusted signer or past exp never reach the policy (401)."
            )
            _cluster_free_flow(pg.url_for("examples"))
    except PostgresNotInstalled as exc:
        raise click.ClickException(str(exc)) from None
