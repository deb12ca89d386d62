"""``jwtkeymap inject``: the admission webhook's pod mutation, applied to manifests offline.

Like ``istioctl kube-inject`` or ``linkerd inject``: read manifests, inject the
resolver into every labelled pod template, and print the result, so it can be
reviewed in a pull request or applied on a cluster without the webhook.
"""

from __future__ import annotations

import click

from jwtkeymap.cli.context import Command
from jwtkeymap.operator.sidecar.defaults import load_defaults
from jwtkeymap.operator.sidecar.plan import INJECT_LABEL
from jwtkeymap.operator.sidecar.render import render


@click.command(cls=Command)
@click.option(
    "-f",
    "--filename",
    "filenames",
    multiple=True,
    required=True,
    help="Manifest file (multi-document YAML), or - for stdin. Repeatable.",
)
@click.option(
    "--defaults",
    "defaults_file",
    type=click.Path(dir_okay=False),
    help="Your Helm values file for the chart (its injection.resolver and image), "
    "or the injection.yaml of the chart's ConfigMap.",
)
@click.option("--image", help="Resolver image (overrides the defaults).")
@click.option(
    "--all",
    "force",
    is_flag=True,
    help=f"Inject every workload, labelling it {INJECT_LABEL}=true.",
)
def inject(
    filenames: tuple[str, ...], defaults_file: str | None, image: str | None, force: bool
) -> None:
    """Inject the resolver sidecar into labelled Pods and workloads; print the YAML."""
    rendered = render(filenames, load_defaults(defaults_file, image=image), force=force)
    click.echo(rendered.yaml(), nl=False)
    for report in rendered.reports:
        click.echo(report.line(), err=True)
