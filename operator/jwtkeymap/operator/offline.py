"""Offline mode: JWTKeyMapping manifests on disk reconciled with the operator's own core.

``jwtkeymap apply`` and ``jwtkeymap diff`` read the same YAML a cluster would
get, resolve keys from Secrets in the same files (or from the environment), and
hand each mapping to ``core.reconcile`` exactly as the kopf handlers do. Rows
written here are owned by ``offline:<namespace>/<name>``, so the operator and the
offline mode never overwrite each other, and ``--prune`` only ever removes rows
that an earlier offline run created.

All manifests are validated before anything is written: a typo in one file must
not make ``--prune`` delete the mapping that file declares.

There is no cluster to hold JWTKeyMappingPolicies, so the ones found in the files
(``kind: JWTKeyMappingPolicy``, with ``kind: Namespace`` documents for their labels)
are enforced as the operator enforces them. Without any, every mapping is applied
and may adopt what it asks to: whoever runs this holds the database credentials.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final

import yaml

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.errors import JwtKeyMapError
from jwtkeymap.core.owners import OwnerKind, offline_owner, owner_prefix
from jwtkeymap.core.reconcile.desired import (
    ADOPT_ANYTHING,
    Adoptable,
    DesiredMapping,
    ReconcileOutcome,
    ReconcileResult,
)
from jwtkeymap.core.reconcile.writer import Reconciler
from jwtkeymap.core.settings import Settings
from jwtkeymap.operator.names import DNS_SUBDOMAIN_RE
from jwtkeymap.operator.resource import (
    API_VERSION,
    KIND,
    MappingSpec,
    SpecError,
    desired_mapping,
    identity_of,
    parse_spec,
)
from jwtkeymap.operator.secrets import (
    SecretKeyMissing,
    SecretNotFound,
    decode_value,
    key_hash_from_data,
)
from jwtkeymap.operator.tenancy import POLICY_KIND, Policy, PolicyError, admit, parse_policy

ENV_PREFIX: Final = "JWTKEYMAP_SECRET_"
_MANIFEST_SUFFIXES: Final = (".yaml", ".yml", ".json")


class ManifestError(JwtKeyMapError):
    """A manifest cannot be used; the message names file, document and field."""


@dataclasses.dataclass(frozen=True)
class ManifestMapping:
    """One JWTKeyMapping read from a file."""

    namespace: str
    name: str
    spec: MappingSpec
    annotations: Mapping[str, str]
    source: str

    @property
    def ref(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"


@dataclasses.dataclass
class Manifests:
    """Everything read from the given paths."""

    mappings: list[ManifestMapping] = dataclasses.field(default_factory=list)
    policies: list[Policy] = dataclasses.field(default_factory=list)
    namespace_labels: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    # (namespace, name) -> key -> plaintext value; never printed.
    secrets: dict[tuple[str, str], dict[str, str]] = dataclasses.field(default_factory=dict)
    errors: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)


def _files(paths: Sequence[str]) -> Iterator[tuple[str, Path | None]]:
    for raw in paths:
        if raw == "-":
            yield "<stdin>", None
            continue
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix in _MANIFEST_SUFFIXES
            )
            for p in found:
                yield str(p), p
        else:
            yield raw, path


def load(
    paths: Sequence[str], *, default_namespace: str = "default", stdin: IO[str] | None = None
) -> Manifests:
    """Read every manifest under ``paths`` (files, folders, ``-``); collect errors, never raise."""
    out = Manifests()
    seen: dict[tuple[str, str], str] = {}
    for display, path in _files(paths):
        try:
            text = (stdin or sys.stdin).read() if path is None else path.read_text("utf-8")
        except OSError as exc:
            out.errors.append(f"{display}: cannot read: {exc.strerror or exc}")
            continue
        try:
            documents = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            out.errors.append(f"{display}: not valid YAML{where}: {getattr(exc, 'problem', exc)}")
            continue
        for number, doc in enumerate(documents, start=1):
            if doc is None:
                continue
            where = f"{display}: document {number}"
            try:
                _read_document(doc, where, default_namespace, out, seen)
            except ManifestError as exc:
                out.errors.append(str(exc))
    return out


def _read_document(
    doc: Any,
    where: str,
    default_namespace: str,
    out: Manifests,
    seen: dict[tuple[str, str], str],
) -> None:
    if not isinstance(doc, dict):
        raise ManifestError(f"{where}: expected a mapping (a Kubernetes object)")
    kind, api_version = doc.get("kind"), doc.get("apiVersion")
    if kind == "List" and isinstance(doc.get("items"), list):
        for i, item in enumerate(doc["items"]):
            _read_document(item, f"{where}: items[{i}]", default_namespace, out, seen)
        return
    if kind not in (KIND, POLICY_KIND, "Secret", "Namespace"):
        out.skipped.append(f"{where}: skipped {kind or 'an object without kind'}")
        return
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        raise ManifestError(f"{where}: metadata: required")
    name = meta.get("name")
    if not isinstance(name, str) or not DNS_SUBDOMAIN_RE.match(name) or len(name) > 253:
        raise ManifestError(f"{where}: metadata.name: must be a DNS subdomain name")
    if kind in (POLICY_KIND, "Namespace"):
        _read_cluster_object(doc, kind, name, where, out)
        return
    namespace = meta.get("namespace") or default_namespace
    if not isinstance(namespace, str) or not DNS_SUBDOMAIN_RE.match(namespace):
        raise ManifestError(f"{where}: metadata.namespace: must be a DNS label")
    if kind == "Secret":
        if api_version != "v1":
            raise ManifestError(f"{where}: apiVersion: expected v1 for a Secret")
        out.secrets[(namespace, name)] = _secret_values(doc, where)
        return
    if api_version != API_VERSION:
        raise ManifestError(f"{where}: apiVersion: expected {API_VERSION}, got {api_version!r}")
    if (namespace, name) in seen:
        raise ManifestError(
            f"{where}: metadata.name: {namespace}/{name} is also declared in "
            f"{seen[namespace, name]}"
        )
    try:
        spec = parse_spec(doc.get("spec"))
    except SpecError as exc:
        raise ManifestError(f"{where} ({namespace}/{name}): {exc}") from None
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise ManifestError(f"{where}: metadata.annotations: must be a mapping")
    seen[namespace, name] = where
    out.mappings.append(
        ManifestMapping(
            namespace=namespace,
            name=name,
            spec=spec,
            annotations={str(k): str(v) for k, v in annotations.items()},
            source=where,
        )
    )


def _read_cluster_object(
    doc: Mapping[str, Any], kind: str, name: str, where: str, out: Manifests
) -> None:
    """A policy, or the labels of a namespace (which its policies' selectors read)."""
    expected = "v1" if kind == "Namespace" else API_VERSION
    if doc.get("apiVersion") != expected:
        raise ManifestError(f"{where}: apiVersion: expected {expected} for a {kind}")
    if kind == "Namespace":
        labels = doc["metadata"].get("labels") or {}
        if not isinstance(labels, dict):
            raise ManifestError(f"{where}: metadata.labels: must be a mapping")
        out.namespace_labels[name] = {str(k): str(v) for k, v in labels.items()}
        return
    try:
        out.policies.append(parse_policy(name, doc.get("spec")))
    except PolicyError as exc:
        raise ManifestError(f"{where} ({POLICY_KIND} {name}): {exc}") from None


def _secret_values(doc: Mapping[str, Any], where: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for field, encoded in (("data", True), ("stringData", False)):
        section = doc.get(field) or {}
        if not isinstance(section, dict):
            raise ManifestError(f"{where}: {field}: must be a mapping")
        for key, value in section.items():
            if not isinstance(value, str):
                raise ManifestError(f"{where}: {field}.{key}: must be a string")
            if encoded:
                try:
                    value = decode_value(value)
                except ValueError:
                    raise ManifestError(f"{where}: {field}.{key}: not base64 UTF-8 text") from None
            values[str(key)] = value
    return values


def env_name(secret: str, key: str) -> str:
    """The environment variable ``--secret-from-env`` reads for a Secret key."""
    return ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", f"{secret}_{key}".upper())


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the apply/diff table."""

    resource: str
    issuer: str
    claim: str
    key: str
    result: str
    detail: str = ""

    @property
    def failed(self) -> bool:
        """Whether this line makes the command exit non-zero."""
        return self.result in FAILURES


FAILURES: Final = frozenset(
    {
        "conflict",
        "policy-denied",
        "key-not-found",
        "secret-not-found",
        "secret-key-missing",
        "invalid",
    }
)
# What a dry run calls each outcome.
_PLANNED: Final = {
    ReconcileOutcome.CREATED: "create",
    ReconcileOutcome.UPDATED: "update",
    ReconcileOutcome.ADOPTED: "adopt",
    ReconcileOutcome.DELETED: "delete",
}


def _claim(identity: MappingIdentity | None, spec: MappingSpec | None = None) -> tuple[str, str]:
    if identity is not None:
        return identity.issuer or "*", f"{identity.claim_name}={identity.claim_value}"
    if spec is not None:
        return spec.issuer or "*", f"{spec.claim.name}={spec.claim.value}"
    return "*", "?"


def _detail(result: ReconcileResult) -> str:
    if result.outcome.failed:
        return result.message
    parts = []
    if result.previous_identity is not None:
        _, previous = _claim(result.previous_identity)
        parts.append(f"moved from {previous}")
    other = [c for c in result.changes if c != "identity"]
    if other:
        parts.append("changed: " + ", ".join(other))
    if result.outcome is ReconcileOutcome.ADOPTED:
        parts.append(result.message)
    return "; ".join(parts)


def resolve_key(mapping: ManifestMapping, manifests: Manifests, *, secret_from_env: bool) -> str:
    """The key hash a manifest declares: its spec, a Secret in the files, or the environment."""
    source = mapping.spec.key
    if source.hash is not None:
        return source.hash
    assert source.secret_ref is not None
    ref = source.secret_ref
    label = f"{mapping.namespace}/{ref.name}"
    values = manifests.secrets.get((mapping.namespace, ref.name))
    if values is None and secret_from_env:
        value = os.environ.get(env_name(ref.name, ref.key))
        if value is None:
            raise SecretNotFound(
                f"Secret {label} is in no manifest and {env_name(ref.name, ref.key)} is not set"
            )
        values = {ref.key: value}
    if values is None:
        hint = " (or pass --secret-from-env)"
        raise SecretNotFound(f"Secret {label} is in none of the given manifests{hint}")
    return key_hash_from_data(values, secret=label, key=ref.key, encoded=False)


class _Denied(Exception):
    """No policy in the files allows a mapping."""


def _admitted(
    mapping: ManifestMapping, manifests: Manifests, settings: Settings
) -> frozenset[Adoptable]:
    """What the mapping may adopt; raise _Denied when the policies in the files refuse it."""
    if not manifests.policies:
        return ADOPT_ANYTHING
    identity = identity_of(mapping.spec, settings)
    labels = manifests.namespace_labels.get(mapping.namespace)
    answer = admit(manifests.policies, mapping.namespace, labels, identity)
    if not answer.allowed:
        raise _Denied(answer.reason)
    return answer.may_adopt


async def reconcile(
    reconciler: Reconciler,
    manifests: Manifests,
    settings: Settings,
    *,
    dry_run: bool,
    prune: bool,
    secret_from_env: bool = False,
) -> list[Row]:
    """Reconcile every manifest (and prune) through the core; one row per resource."""
    rows: list[Row] = []
    for mapping in manifests.mappings:
        issuer, claim = _claim(None, mapping.spec)
        try:
            may_adopt = _admitted(mapping, manifests, settings)
            token_hash = resolve_key(mapping, manifests, secret_from_env=secret_from_env)
            want: DesiredMapping = desired_mapping(
                mapping.spec,
                settings,
                token_hash=token_hash,
                owner=offline_owner(mapping.namespace, mapping.name),
                ref=mapping.ref,
                annotations=mapping.annotations,
                may_adopt=may_adopt,
            )
        except _Denied as exc:
            rows.append(Row(mapping.ref, issuer, claim, "-", "policy-denied", str(exc)))
            continue
        except SecretNotFound as exc:
            rows.append(Row(mapping.ref, issuer, claim, "-", "secret-not-found", str(exc)))
            continue
        except SecretKeyMissing as exc:
            rows.append(Row(mapping.ref, issuer, claim, "-", "secret-key-missing", str(exc)))
            continue
        except SpecError as exc:
            rows.append(Row(mapping.ref, issuer, claim, "-", "invalid", f"{mapping.source}: {exc}"))
            continue
        result = await reconciler.apply(want, dry_run=dry_run)
        issuer, claim = _claim(result.identity)
        label = _PLANNED.get(result.outcome, result.outcome.value) if dry_run else result.outcome
        rows.append(
            Row(
                mapping.ref,
                issuer,
                claim,
                want.key_fingerprint,
                str(label),
                _detail(result),
            )
        )
    if prune:
        keep = [offline_owner(m.namespace, m.name) for m in manifests.mappings]
        prefix = owner_prefix(OwnerKind.OFFLINE)
        for result in await reconciler.prune(prefix, keep, dry_run=dry_run):
            issuer, claim = _claim(result.identity)
            label = "delete" if dry_run else "pruned"
            key = result.key_fingerprint or "-"
            rows.append(Row(result.ref, issuer, claim, key, label, "manifest no longer present"))
    return rows


def summary(rows: Sequence[Row]) -> str:
    """One line: counts per result, in a fixed order."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.result] = counts.get(r.result, 0) + 1
    return ", ".join(f"{n} {result}" for result, n in sorted(counts.items())) or "nothing to do"


__all__ = [
    "ManifestError",
    "ManifestMapping",
    "Manifests",
    "Row",
    "env_name",
    "load",
    "reconcile",
    "summary",
]
