"""kopf's in-memory indexes of policies and namespaces, and the tenancy decision over them.

kopf passes each index to every handler as a keyword argument named by its id,
so the ids below are the names handlers read. The policies and the namespaces'
labels are indexed so that the tenancy decision (:class:`Tenancy`) costs a handler
no API call. Only the active replica fills them (kopf pauses a standby's
watches), so the admission webhook, which every replica serves, builds the same
structures from a fresh API read (:func:`indexed`). JWTKeyMappings are not
indexed by kopf: see :mod:`jwtkeymap.operator.handlers.registry`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Final, TypeAlias

import kopf

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.settings import Settings
from jwtkeymap.operator.handlers.registry import IdentityKey
from jwtkeymap.operator.resource import SpecError, identity_of, parse_spec, ref_of
from jwtkeymap.operator.tenancy import Admission, Policy, PolicyError, admit, parse_policy

POLICIES: Final = "policies"
NAMESPACE_LABELS: Final = "namespace_labels"
_ALL: Final = "all"  # the one key of the policies index

log = logging.getLogger(__name__)

# (issuer, claim name, claim value) -> (namespace/name, uid)
IdentityHolder: TypeAlias = tuple[str, str]
# What the tenancy decision reads: kopf's indexes, or plain mappings in tests.
PolicyIndex: TypeAlias = Mapping[str, Iterable[Policy]]
LabelIndex: TypeAlias = Mapping[str, Iterable[Mapping[str, str]]]


def by_identity(
    namespace: str | None,
    name: str,
    uid: str,
    spec: Mapping[str, Any],
    *,
    config: Settings,
    **_: Any,
) -> dict[IdentityKey, IdentityHolder] | None:
    """Mappings by (issuer, claim name, claim value), for the admission webhook."""
    try:
        identity = identity_of(parse_spec(spec), config)
    except SpecError:
        return None
    key = (identity.issuer, identity.claim_name, identity.claim_value)
    return {key: (ref_of(namespace, name), uid)}


def policies(name: str, spec: Mapping[str, Any], **_: Any) -> dict[str, Policy] | None:
    """Every JWTKeyMappingPolicy, parsed (the CRD validated it; a stray is left out, loudly)."""
    try:
        return {_ALL: parse_policy(name, spec)}
    except PolicyError as exc:
        log.warning("JWTKeyMappingPolicy %s is ignored: %s", name, exc)
        return None


def namespace_labels(name: str, labels: Mapping[str, str], **_: Any) -> dict[str, dict[str, str]]:
    """Each namespace's labels, for the policies' namespace selectors."""
    return {name: dict(labels)}


# kopf runs a plain function in a thread; these are cheap, so they run on the loop.
async def index_policy(name: str, spec: Mapping[str, Any], **_: Any) -> dict[str, Policy] | None:
    """kopf's index function for policies (:func:`policies`)."""
    return policies(name, spec)


async def index_namespace(name: str, labels: kopf.Labels, **_: Any) -> dict[str, dict[str, str]]:
    """kopf's index function for namespaces (:func:`namespace_labels`)."""
    return namespace_labels(name, labels)


@dataclasses.dataclass(frozen=True)
class Tenancy:
    """The policies and namespace labels a handler was given, and the decision over them."""

    policies: PolicyIndex
    namespaces: LabelIndex

    def admit(self, namespace: str, identity: MappingIdentity) -> Admission:
        """Whether ``namespace`` may declare ``identity``, and what it may adopt."""
        labels = next(iter(self.namespaces.get(namespace, ())), None)
        return admit(self.policies.get(_ALL, ()), namespace, labels, identity)


def tenancy_of(kwargs: Mapping[str, Any]) -> Tenancy:
    """The tenancy indexes from a handler's keyword arguments."""
    return Tenancy(kwargs[POLICIES], kwargs[NAMESPACE_LABELS])


def indexed(
    policy_objects: Iterable[Mapping[str, Any]],
    namespace: str,
    labels: Mapping[str, str] | None,
    mapping_objects: Iterable[Mapping[str, Any]],
    settings: Settings,
) -> tuple[dict[IdentityKey, list[IdentityHolder]], Tenancy]:
    """What kopf's indexes would hold for ``namespace``, from listed objects (a standby)."""
    parsed = (
        policies(name=o["metadata"]["name"], spec=o.get("spec") or {}) for o in policy_objects
    )
    found = [p[_ALL] for p in parsed if p is not None]
    taken: dict[IdentityKey, list[IdentityHolder]] = {}
    for obj in mapping_objects:
        meta = obj["metadata"]
        entry = by_identity(
            meta.get("namespace"), meta["name"], meta.get("uid", ""), obj.get("spec") or {},
            config=settings,
        )  # fmt: skip
        for key, holder in (entry or {}).items():
            taken.setdefault(key, []).append(holder)
    namespaces = {namespace: [dict(labels)]} if labels is not None else {}
    return taken, Tenancy({_ALL: found} if found else {}, namespaces)
