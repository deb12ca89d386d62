"""``jwtkeymap resolver``: run the sidecar."""

from __future__ import annotations

import click

from jwtkeymap.cli import Context, describe_error, pass_ctx
from jwtkeymap.core.errors import JwtKeyMapError
from jwtkeymap.core.logs import configure_logging
from jwtkeymap.core.settings import load_settings


@click.command()
@click.option(
    "--listen",
    metavar="HOST:PORT",
    envvar="JWTKEYMAP_LISTEN",
    help="Address to serve on (default 0.0.0.0:8080).",
)
@click.option(
    "--upstream",
    metavar="URL",
    envvar="JWTKEYMAP_UPSTREAM",
    help="Reverse-proxy mode: check every request, then proxy it to this URL.",
)
@pass_ctx
def resolver(ctx: Context, listen: str | None, upstream: str | None) -> None:
    """Serve /check for Envoy ext_authz and nginx auth_request (or proxy to --upstream)."""
    from jwtkeymap.resolver.server import parse_listen, run

    settings = load_settings(
        ctx.config,
        database_url=ctx.database_url,
        log_level=ctx.log_level,
        listen=listen,
        upstream=upstream,
    )
    try:
        parse_listen(settings.listen)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None
    if settings.upstream and not settings.upstream.startswith(("http://", "https://")):
        raise click.BadParameter("must be an http:// or https:// URL", param_hint="--upstream")
    if not settings.issuers and not settings.oidc_userinfo_url:
        raise click.UsageError(
            "no trusted issuers configured: add `issuers:` (or oidc_userinfo_url) to the config"
        )
    configure_logging(settings.log_level)
    try:
        run(settings)
    except JwtKeyMapError as exc:  # a startup failure: one line, not a traceback
        raise click.ClickException(describe_error(exc)) from None
