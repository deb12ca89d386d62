"""Click commands of the Kubernetes edge: ``operator``, ``apply`` and ``diff``.

Loaded lazily by the top-level ``jwtkeymap`` group, so commands that do not
need kopf never import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
from collections.abc import Callable
from typing import Any

import click

from jwtkeymap.cli import Context, describe_error, pass_ctx
from jwtkeymap.core.errors import JwtKeyMapError
from jwtkeymap.core.logs import configure_logging
from jwtkeymap.core.settings import Settings, load_settings

# kopf's random priorities: with equal priorities every replica pauses (kopf's rule).
_PRIORITY_RANGE = (1, 32767)


def _settings(ctx: Context, database_url: str | None) -> Settings:
    try:
        if database_url:
            return load_settings(ctx.config, database_url=database_url, log_level=ctx.log_level)
        return ctx.settings
    except JwtKeyMapError as exc:
        raise click.ClickException(describe_error(exc)) from None


@click.command()
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
@click.option("--database-url", "database_url", default=None, hidden=True)
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
    database_url: str | None,
) -> None:
    """Run the JWTKeyMapping operator (kopf) until interrupted."""
    import kopf

    from jwtkeymap.operator.handlers.wiring import register

    settings = _settings(ctx, database_url)
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


_files_option = click.option(
    "-f",
    "--filename",
    "paths",
    multiple=True,
    required=True,
    help="Manifest file or folder ('-' for stdin); repeatable.",
)
_namespace_option = click.option(
    "-n",
    "--namespace",
    default="default",
    show_default=True,
    help="Namespace of manifests that name none.",
)
_env_option = click.option(
    "--secret-from-env",
    is_flag=True,
    help="Read Secrets missing from the files from JWTKEYMAP_SECRET_<NAME>_<KEY>.",
)
_prune_option = click.option(
    "--prune",
    is_flag=True,
    help="Remove mappings made by an earlier offline apply whose manifest is gone.",
)
_url_option = click.option("--database-url", "database_url", default=None, help="PostgreSQL URL.")


def _offline_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options `apply` and `diff` share, in the order --help lists them."""
    for option in (_url_option, _env_option, _prune_option, _namespace_option, _files_option):
        command = option(command)
    return command


async def _run_offline(
    settings: Settings,
    paths: tuple[str, ...],
    *,
    namespace: str,
    dry_run: bool,
    prune: bool,
    secret_from_env: bool,
) -> int:
    from jwtkeymap.core.litellm import LiteLLMCache
    from jwtkeymap.core.reconcile import OFFLINE_ACTOR, Reconciler
    from jwtkeymap.core.store import Store
    from jwtkeymap.operator import offline

    manifests = offline.load(paths, default_namespace=namespace)
    for note in manifests.skipped:
        click.echo(note, err=True)
    if manifests.errors:
        for error in manifests.errors:
            click.echo(f"error: {error}", err=True)
        click.echo(f"{len(manifests.errors)} invalid manifest(s): nothing was applied", err=True)
        return 1
    if not settings.database_url:
        raise click.UsageError("no database configured: pass --database-url")
    store = await Store.open(
        settings.database_url, min_size=1, max_size=2, timeout=settings.db_timeout_seconds
    )
    evictor = LiteLLMCache(settings.redis_url) if settings.redis_url and not dry_run else None
    try:
        reconciler = Reconciler(
            store, actor=OFFLINE_ACTOR, evict=evictor.evict if evictor else None
        )
        rows = await offline.reconcile(
            reconciler,
            manifests,
            settings,
            dry_run=dry_run,
            prune=prune,
            secret_from_env=secret_from_env,
        )
    finally:
        if evictor is not None:
            await evictor.close()
        await store.close()
    click.echo(offline.format_rows(rows))
    click.echo(("would: " if dry_run else "") + offline.summary(rows), err=True)
    return 1 if any(r.failed for r in rows) else 0


def _offline_command(
    ctx: Context,
    paths: tuple[str, ...],
    namespace: str,
    database_url: str | None,
    *,
    dry_run: bool,
    prune: bool,
    secret_from_env: bool,
) -> None:
    settings = _settings(ctx, database_url)
    configure_logging(settings.log_level, json=False)
    try:
        code = asyncio.run(
            _run_offline(
                settings,
                paths,
                namespace=namespace,
                dry_run=dry_run,
                prune=prune,
                secret_from_env=secret_from_env,
            )
        )
    except JwtKeyMapError as exc:
        raise click.ClickException(describe_error(exc)) from None
    sys.exit(code)


@click.command()
@_offline_options
@pass_ctx
def apply(
    ctx: Context,
    paths: tuple[str, ...],
    namespace: str,
    prune: bool,
    secret_from_env: bool,
    database_url: str | None,
) -> None:
    """Reconcile JWTKeyMapping manifests into the database, without a cluster.

    Exits 1 on any conflict, missing key or Secret, or invalid manifest.
    """
    _offline_command(
        ctx,
        paths,
        namespace,
        database_url,
        dry_run=False,
        prune=prune,
        secret_from_env=secret_from_env,
    )


@click.command()
@_offline_options
@pass_ctx
def diff(
    ctx: Context,
    paths: tuple[str, ...],
    namespace: str,
    prune: bool,
    secret_from_env: bool,
    database_url: str | None,
) -> None:
    """Show what `apply` would change, writing nothing."""
    _offline_command(
        ctx,
        paths,
        namespace,
        database_url,
        dry_run=True,
        prune=prune,
        secret_from_env=secret_from_env,
    )
