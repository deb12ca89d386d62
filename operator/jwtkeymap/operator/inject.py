"""The ``jwtkeymap inject`` command: a thin wrapper over ``sidecar.render``."""

from __future__ import annotations

import click

from jwtkeymap.core.errors import JwtKeyMapError
from jwtkeymap.operator.sidecar.defaults import load_defaults
from jwtkeymap.operator.sidecar.plan import INJECT_LABEL
from jwtkeymap.operator.sidecar.render import render


@click.command()
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
    try:
        defaults = load_defaults(defaults_file, image=image)
        rendered = render(filenames, defaults, force=force)
    except JwtKeyMapError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(rendered.yaml(), nl=False)
    for report in rendered.reports:
        click.echo(report.line(), err=True)
