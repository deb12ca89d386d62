"""``jwtkeymap inject``: the admission webhook's pod mutation, applied to manifests offline.

Like ``istioctl kube-inject`` or ``linkerd inject``: read manifests, inject the
resolver into every labelled pod template, and print the result, so it can be
reviewed in a pull request or applied on a cluster without the webhook.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import click
import yaml

from jwtkeymap.cli.context import Command
from jwtkeymap.operator.inject import Report, inject_object, load_defaults, read_source
from jwtkeymap.operator.injection import INJECT_LABEL


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
    defaults = load_defaults(defaults_file, image)
    documents: list[Any] = []
    reports: list[Report] = []
    for filename in filenames:
        label, text = read_source(filename)
        try:
            loaded = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            raise click.ClickException(f"{label}: not YAML: {exc}") from None
        for index, doc in enumerate(loaded):
            if doc is None:
                continue
            if isinstance(doc, MutableMapping):
                reports += inject_object(
                    doc, defaults, source=f"{label} document {index}", force=force
                )
            documents.append(doc)
    click.echo(yaml.safe_dump_all(documents, sort_keys=False, explicit_start=True), nl=False)
    for report in reports:
        click.echo(f"{report.kind.lower()}/{report.name}: {report.outcome}", err=True)
