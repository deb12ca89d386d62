"""``jwtkeymap resolver``: run the sidecar."""

from __future__ import annotations

import click

from jwtkeymap.cli.context import Command, Context, pass_ctx
from jwtkeymap.core.logs import configure_logging
from jwtkeymap.core.settings import PROXY_ENGINES


@click.command(cls=Command)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    envvar="JWTKEYMAP_LISTEN",
    help="Address to serve on (default 0.0.0.0:8080).",
)
@click.option(
    "--metrics-listen",
    metavar="HOST:PORT",
    envvar="JWTKEYMAP_METRICS_LISTEN",
    help="Serve /metrics on this address alone (a reverse proxy serves it nowhere else).",
)
@click.option(
    "--upstream",
    metavar="URL",
    envvar="JWTKEYMAP_UPSTREAM",
    help="Reverse-proxy mode: check every request, then proxy it to this URL.",
)
@click.option(
    "--proxy-engine",
    type=click.Choice(PROXY_ENGINES),
    envvar="JWTKEYMAP_PROXY_ENGINE",
    help="What carries --upstream's bytes: the resolver, or an nginx it runs (default resolver).",
)
@pass_ctx
def resolver(
    ctx: Context,
    listen: str | None,
    metrics_listen: str | None,
    upstream: str | None,
    proxy_engine: str | None,
) -> None:
    """Serve /check for Envoy ext_authz and nginx auth_request (or proxy to --upstream)."""
    # The HTTP server is imported only when it is about to run.
    from jwtkeymap.resolver.handlers import parse_listen
    from jwtkeymap.resolver.server import run

    settings = ctx.load(
        listen=listen, metrics_listen=metrics_listen, upstream=upstream, proxy_engine=proxy_engine
    )
    addresses = [("--listen", settings.listen)]
    if settings.metrics_listen:
        addresses.append(("--metrics-listen", settings.metrics_listen))
    ports = set()
    for hint, address in addresses:
        try:
            ports.add(parse_listen(address)[1])
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=hint) from None
    if len(ports) < len(addresses):
        raise click.BadParameter(
            f"must be another port than --listen {settings.listen}", param_hint="--metrics-listen"
        )
    if settings.upstream and not settings.upstream.startswith(("http://", "https://")):
        raise click.BadParameter("must be an http:// or https:// URL", param_hint="--upstream")
    if not settings.issuers and not settings.oidc_userinfo_url:
        raise click.UsageError(
            "no trusted issuers configured: add `issuers:` (or oidc_userinfo_url) to the config"
        )
    configure_logging(settings.log_level)
    run(settings)  # a startup failure is a core error: one line, not a traceback
