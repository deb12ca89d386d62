"""JWTKeyMappingPolicy: which namespaces may map which identities, decided by a platform team.

A cluster-scoped policy selects namespaces by label and lists what they may declare:
issuer scopes (``*`` being the global one), claim names with value patterns, and
which rows they may adopt. A mapping is allowed when at least one policy selecting
its namespace allows its scope, claim and value; it may adopt what any such policy
lets it adopt. With no policy, nothing is allowed: tenancy is secure by default.

:func:`admit` is pure, so the validating webhook, the operator's handlers and the
offline ``apply`` (which reads policies from its files) decide alike. Its refusals
name the namespace and the policies, which a platform team writes, and never
another tenant's resource.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import Field, ValidationError

from jwtkeymap.core.claims import ANY_ISSUER, MappingIdentity
from jwtkeymap.core.reconcile.desired import Adoptable
from jwtkeymap.operator.resource import ISSUER_PATTERN, StrictModel

POLICY_PLURAL: Final = "jwtkeymappingpolicies"
POLICY_KIND: Final = "JWTKeyMappingPolicy"
# Set by the API server on every namespace, so a selector can name namespaces too.
NAME_LABEL: Final = "kubernetes.io/metadata.name"
HOW_TO: Final = "see the README's Tenancy section"


Issuer = Annotated[str, Field(min_length=1, max_length=512, pattern=ISSUER_PATTERN)]


class LabelRequirement(StrictModel):
    """One ``matchExpressions`` entry, as in any Kubernetes label selector."""

    key: str = Field(min_length=1, max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list, max_length=64)


class NamespaceSelector(StrictModel):
    """A label selector over namespaces; an empty one selects every namespace."""

    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")
    match_expressions: list[LabelRequirement] = Field(
        default_factory=list, alias="matchExpressions", max_length=16
    )


class ClaimRule(StrictModel):
    """A claim name and the values it may take: patterns where ``*`` matches any text."""

    name: str = Field(min_length=1, max_length=256)
    values: list[str] = Field(min_length=1, max_length=64)


class AdoptionRule(StrictModel):
    """Which rows the selected namespaces may take over (with ``jwtkeymap.io/adopt``)."""

    unowned: bool = False
    auto_registered: bool = Field(default=False, alias="autoRegistered")


class PolicySpec(StrictModel):
    """``spec`` of a JWTKeyMappingPolicy."""

    namespace_selector: NamespaceSelector = Field(alias="namespaceSelector")
    # Scopes exactly as a mapping's spec.issuer spells them: "*" allows the global scope.
    issuers: list[Issuer] = Field(min_length=1, max_length=32)
    claims: list[ClaimRule] = Field(min_length=1, max_length=32)
    adopt: AdoptionRule = Field(default_factory=AdoptionRule)


@dataclasses.dataclass(frozen=True)
class Policy:
    """A named, parsed policy."""

    name: str
    spec: PolicySpec


class PolicyError(ValueError):
    """A policy document cannot be read; the message names the field."""


def parse_policy(name: str, spec: Mapping[str, Any] | None) -> Policy:
    """Validate a policy's spec; raise PolicyError naming the first bad field."""
    try:
        return Policy(name, PolicySpec.model_validate(dict(spec or {})))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in ("spec", *err["loc"]))
        raise PolicyError(f"{loc}: {err['msg'].removeprefix('Value error, ')}") from None


def selects(selector: NamespaceSelector, labels: Mapping[str, str]) -> bool:
    """Whether a namespace with ``labels`` matches the selector."""
    if any(labels.get(key) != value for key, value in selector.match_labels.items()):
        return False
    for req in selector.match_expressions:
        present = req.key in labels
        ok = {
            "In": present and labels.get(req.key) in req.values,
            "NotIn": not present or labels.get(req.key) not in req.values,
            "Exists": present,
            "DoesNotExist": not present,
        }[req.operator]
        if not ok:
            return False
    return True


def value_matches(pattern: str, value: str) -> bool:
    """Whether ``value`` matches ``pattern``, where ``*`` stands for any text (even none)."""
    return _compiled(pattern).fullmatch(value) is not None


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    """A policy's value pattern as a regular expression (policies are few, checks many)."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), flags=re.DOTALL)


def _allows(spec: PolicySpec, scope: str, identity: MappingIdentity) -> bool:
    if scope not in spec.issuers:
        return False
    return any(
        rule.name == identity.claim_name
        and any(value_matches(p, identity.claim_value) for p in rule.values)
        for rule in spec.claims
    )


def _rights(spec: PolicySpec) -> frozenset[Adoptable]:
    rights = set()
    if spec.adopt.unowned:
        rights.add(Adoptable.UNOWNED)
    if spec.adopt.auto_registered:
        rights.add(Adoptable.AUTO_REGISTERED)
    return frozenset(rights)


@dataclasses.dataclass(frozen=True)
class Admission:
    """The policies' answer: allowed (with what it may adopt), or why not."""

    allowed: bool
    may_adopt: frozenset[Adoptable] = frozenset()
    reason: str = ""


def namespace_labels(namespace: str, labels: Mapping[str, str] | None) -> dict[str, str]:
    """A namespace's labels, with the name label the API server always sets."""
    return {**(labels or {}), NAME_LABEL: namespace}


def admit(
    policies: Iterable[Policy],
    namespace: str,
    labels: Mapping[str, str] | None,
    identity: MappingIdentity,
) -> Admission:
    """Decide whether namespace ``namespace`` may declare ``identity`` (a canonical one)."""
    every = list(policies)
    scope = identity.issuer or ANY_ISSUER
    wanted = f"issuer {scope}, {identity.claim_name}={identity.claim_value}"
    if not every:
        return Admission(
            False,
            reason=(
                f"no {POLICY_KIND} exists, so no namespace may map identities: a cluster "
                f"administrator must create one whose namespaceSelector selects {namespace} "
                f"and that allows {wanted} ({HOW_TO})"
            ),
        )
    ns_labels = namespace_labels(namespace, labels)
    selecting = [p for p in every if selects(p.spec.namespace_selector, ns_labels)]
    if not selecting:
        return Admission(
            False,
            reason=(
                f"no {POLICY_KIND} selects namespace {namespace}: a cluster administrator "
                f"must create or extend one to allow {wanted} here ({HOW_TO})"
            ),
        )
    allowing = [p for p in selecting if _allows(p.spec, scope, identity)]
    if not allowing:
        names = ", ".join(sorted(p.name for p in selecting))
        return Admission(
            False,
            reason=(
                f"no {POLICY_KIND} allows {wanted} in namespace {namespace} "
                f"(policies selecting it: {names}); ask a cluster administrator to extend "
                f"one ({HOW_TO})"
            ),
        )
    rights = frozenset().union(*(_rights(p.spec) for p in allowing))
    return Admission(True, may_adopt=rights)
