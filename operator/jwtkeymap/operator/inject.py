"""``jwtkeymap inject``: the admission webhook's pod mutation, rendered offline.

Like ``istioctl kube-inject`` or ``linkerd inject``: read manifests, inject the
resolver into every labelled pod template, and print the result, so it can be
reviewed in a pull request or applied on a cluster without the webhook. The
injected templates carry ``jwtkeymap.io/status: injected``, so if the webhook is
installed too it leaves their pods alone.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import click
import yaml
from pydantic import ValidationError

from jwtkeymap import __version__
from jwtkeymap.core.settings import format_validation_error
from jwtkeymap.operator.injection import (
    INJECT_LABEL,
    InjectionDefaults,
    InjectionError,
    apply,
    plan,
)

# kind -> path of the pod template inside the object.
TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


@dataclasses.dataclass(frozen=True)
class Report:
    """What happened to one object."""

    source: str
    kind: str
    name: str
    outcome: str


def _template(
    obj: MutableMapping[str, Any], path: tuple[str, ...]
) -> MutableMapping[str, Any] | None:
    node: Any = obj
    for part in path:
        node = node.get(part) if isinstance(node, MutableMapping) else None
        if node is None:
            return None
    return node if isinstance(node, MutableMapping) else None


def inject_object(
    obj: MutableMapping[str, Any],
    defaults: InjectionDefaults,
    *,
    source: str,
    force: bool = False,
) -> Iterator[Report]:
    """Inject into ``obj`` in place (recursing into ``List`` items); report each workload."""
    kind = str(obj.get("kind") or "")
    if kind == "List" or (kind.endswith("List") and isinstance(obj.get("items"), list)):
        for index, item in enumerate(obj.get("items") or []):
            if isinstance(item, MutableMapping):
                yield from inject_object(
                    item, defaults, source=f"{source} item {index}", force=force
                )
        return
    name = str((obj.get("metadata") or {}).get("name") or "")
    path = TEMPLATE_PATHS.get(kind)
    template = _template(obj, path) if path is not None else None
    if template is None:
        return  # not a workload: passed through as it is
    if force:
        labels = template.setdefault("metadata", {}).setdefault("labels", {})
        labels[INJECT_LABEL] = "true"
    try:
        mutation = plan(template, defaults)
    except InjectionError as exc:
        raise click.ClickException(f"{source}: {kind}/{name}: {exc}") from None
    if mutation.injected:
        patched = apply(template, mutation)
        template.clear()
        template.update(patched)
    outcome = "injected" if mutation.injected else f"skipped ({mutation.reason})"
    yield Report(source=source, kind=kind, name=name, outcome=outcome)


def read_source(path: str) -> tuple[str, str]:
    """A file's display name and text (``-`` reads stdin); a one-line failure if unreadable."""
    if path == "-":
        return "<stdin>", sys.stdin.read()
    try:
        return path, Path(path).read_text()
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from None


def _chart_image(values: Mapping[str, Any]) -> str | None:
    image = values.get("image")
    if not isinstance(image, Mapping) or not image.get("repository"):
        return None
    if image.get("digest"):
        return f"{image['repository']}@{image['digest']}"
    return f"{image['repository']}:{image.get('tag') or __version__}"


def defaults_data(loaded: Mapping[str, Any]) -> dict[str, Any]:
    """Injection defaults from a chart values file, or from the chart's injection.yaml."""
    if "injection" not in loaded:
        return dict(loaded)
    resolver = dict((loaded.get("injection") or {}).get("resolver") or {})
    # As the chart does: an empty resolver image means the operator's image.
    if not resolver.get("image"):
        resolver.pop("image", None)
        image = _chart_image(loaded)
        if image is not None:
            resolver["image"] = image
    return resolver


def load_defaults(path: str | None, image: str | None) -> InjectionDefaults:
    """The injection defaults from a YAML file (chart values or injection.yaml), or built in."""
    data: dict[str, Any] = {}
    if path is not None:
        label, text = read_source(path)
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise click.ClickException(f"{label}: not YAML: {exc}") from None
        if not isinstance(loaded, Mapping):
            raise click.ClickException(f"{label}: expected a mapping of injection defaults")
        data.update(defaults_data(loaded))
    if image is not None:
        data["image"] = image
    try:
        return InjectionDefaults.model_validate(data)
    except ValidationError as exc:
        where = path or "defaults"
        raise click.ClickException(f"{where}: {format_validation_error(exc)}") from None
