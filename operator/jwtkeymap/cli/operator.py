"""``jwtkeymap operator``: run the kopf operator until interrupted."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import click

from jwtkeymap.cli.context import Command, Context, pass_ctx
from jwtkeymap.core.logs import configure_logging

# kopf's random priorities: with equal priorities every replica pauses (kopf's rule).
_PRIORITY_RANGE = (1, 32767)


@click.command(cls=Command)
@click.option(
    "-n", "--namespace", "namespaces", multiple=True, help="Serve only these namespaces (repeat)."
)
@click.option("-A", "--all-namespaces", is_flag=True, help="Serve the whole cluster.")
@click.option(
    "--standalone", is_flag=True, help="No peering: for a single replica (or development)."
)
@click.option(
    "--peering",
    "peering_name",
    envvar="JWTKEYMAP_PEERING",
    default=None,
    help="kopf peering object shared by the replicas (default: kopf's auto-detection).",
)
@click.option(
    "--priority",
    type=int,
    default=None,
    help="Peering priority (default: random, so replicas never tie).",
)
@click.option(
    "--liveness",
    default="http://0.0.0.0:8081/healthz",
    show_default=True,
    help="Liveness endpoint URL ('' to disable).",
)
@click.option("--webhook-port", type=int, default=None, help="Serve the validating webhook.")
@click.option("--webhook-addr", default="0.0.0.0", show_default=True)  # noqa: S104 - in a pod
@click.option("--webhook-cert", type=click.Path(dir_okay=False), help="TLS certificate (PEM).")
@click.option("--webhook-key", type=click.Path(dir_okay=False), help="TLS private key (PEM).")
@click.option("--webhook-host", default=None, help="Host name the apiserver uses to call us.")
@click.option(
    "--webhook-managed",
    default=None,
    help="Let kopf create this ValidatingWebhookConfiguration (otherwise the chart ships it).",
)
@pass_ctx
def operator(
    ctx: Context,
    namespaces: tuple[str, ...],
    all_namespaces: bool,
    standalone: bool,
    peering_name: str | None,
    priority: int | None,
    liveness: str,
    webhook_port: int | None,
    webhook_addr: str,
    webhook_cert: str | None,
    webhook_key: str | None,
    webhook_host: str | None,
    webhook_managed: str | None,
) -> None:
    """Run the JWTKeyMapping operator (kopf) until interrupted."""
    # kopf is imported only here, so that no other command pays for it (or needs it).
    import kopf

    from jwtkeymap.operator.handlers.wiring import register

    settings = ctx.settings
    configure_logging(settings.log_level)
    if not settings.database_url:
        raise click.UsageError("no database configured: pass --database-url or set it in config")
    if not namespaces and not all_namespaces:
        raise click.UsageError("give --namespace NS (repeatable) or --all-namespaces")
    registry = kopf.OperatorRegistry()

    # A registry of our own does not carry kopf's default login handlers: in a pod use the
    # service account, elsewhere $KUBECONFIG (or ~/.kube/config).
    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    register(registry, settings, admission=webhook_port is not None)

    if webhook_port is not None:
        from jwtkeymap.operator.webhooks import WebhookServer

        @kopf.on.startup(registry=registry)
        def webhook_server(settings: kopf.OperatorSettings, **_: Any) -> None:
            settings.admission.server = WebhookServer(
                addr=webhook_addr,
                port=webhook_port,
                host=webhook_host,
                certfile=webhook_cert,
                pkeyfile=webhook_key,
            )
            if webhook_managed:
                settings.admission.managed = webhook_managed

    if priority is None and not standalone:
        priority = random.randint(*_PRIORITY_RANGE)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            kopf.operator(
                registry=registry,
                clusterwide=all_namespaces,
                namespaces=list(namespaces),
                standalone=standalone,
                peering_name=peering_name,
                priority=priority,
                liveness_endpoint=liveness or None,
            )
        )
