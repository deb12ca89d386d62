"""``jwtkeymap inject``, minus the command line: the webhook's mutation applied to manifests.

Like ``istioctl kube-inject`` or ``linkerd inject``: read manifests, inject the
resolver into every labelled pod template, and return the result, so it can be
reviewed in a pull request or applied on a cluster without the webhook. The
injected templates carry ``jwtkeymap.io/status: injected``, so if the webhook is
installed too it leaves their pods alone.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any, Final

import yaml

from jwtkeymap.core.errors import JwtKeyMapError
from jwtkeymap.operator.sidecar.defaults import InjectionDefaults
from jwtkeymap.operator.sidecar.plan import INJECT_LABEL, InjectionError, apply_in_place, plan

# kind -> path of the pod template inside the object.
TEMPLATE_PATHS: Final[dict[str, tuple[str, ...]]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


class RenderError(JwtKeyMapError):
    """A manifest cannot be read or injected; the message names the file and the object."""


@dataclasses.dataclass(frozen=True)
class Report:
    """What happened to one object."""

    source: str
    kind: str
    name: str
    outcome: str

    def line(self) -> str:
        """``kind/name: outcome``, as the command reports it."""
        return f"{self.kind.lower()}/{self.name}: {self.outcome}"


@dataclasses.dataclass(frozen=True)
class Rendered:
    """The manifests with the sidecar injected, and one report per workload."""

    documents: list[Any]
    reports: list[Report]

    def yaml(self) -> str:
        """Every document, in order, as multi-document YAML."""
        return yaml.safe_dump_all(self.documents, sort_keys=False, explicit_start=True)


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
        raise RenderError(f"{source}: {kind}/{name}: {exc}") from None
    if mutation.injected:
        apply_in_place(template, mutation)
    outcome = "injected" if mutation.injected else f"skipped ({mutation.reason})"
    yield Report(source=source, kind=kind, name=name, outcome=outcome)


def _read(path: str) -> tuple[str, str]:
    if path == "-":
        return "<stdin>", sys.stdin.read()
    try:
        return path, Path(path).read_text()
    except OSError as exc:
        raise RenderError(f"cannot read {path}: {exc.strerror or exc}") from None


def render(
    filenames: Sequence[str], defaults: InjectionDefaults, *, force: bool = False
) -> Rendered:
    """Read the manifests (``-`` is stdin) and inject into their workloads; raise RenderError."""
    documents: list[Any] = []
    reports: list[Report] = []
    for filename in filenames:
        label, text = _read(filename)
        try:
            loaded = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            raise RenderError(f"{label}: not YAML: {exc}") from None
        for index, doc in enumerate(loaded):
            if doc is None:
                continue
            if isinstance(doc, MutableMapping):
                reports += inject_object(
                    doc, defaults, source=f"{label} document {index}", force=force
                )
            documents.append(doc)
    return Rendered(documents, reports)
