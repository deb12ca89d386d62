"""The JWTKeyMapping resource: names, the spec model, and its translation to a desired mapping.

The spec model is the boundary for both callers: the kopf handlers (specs the
apiserver already validated against the CRD schema) and the offline ``apply``
(manifests nobody validated yet), so the rules here mirror the CRD's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from jwtkeymap.core.claims import (
    ANY_ISSUER,
    ISSUER_URL,
    MappingIdentity,
    canonicalize,
    split_path,
)
from jwtkeymap.core.errors import ClaimError, JwtKeyMapError
from jwtkeymap.core.keys import is_key_hash
from jwtkeymap.core.reconcile.desired import Adoptable, DesiredMapping
from jwtkeymap.core.settings import Settings
from jwtkeymap.operator.names import DNS_SUBDOMAIN

GROUP: Final = "jwtkeymap.io"
VERSION: Final = "v1alpha1"
PLURAL: Final = "jwtkeymappings"
KIND: Final = "JWTKeyMapping"
API_VERSION: Final = f"{GROUP}/{VERSION}"

FINALIZER: Final = "jwtkeymap.io/finalizer"
ADOPT_ANNOTATION: Final = "jwtkeymap.io/adopt"
# Set by the operator on a mapping when its Secret changes, so kopf re-runs the reconcile.
SECRET_VERSION_ANNOTATION: Final = "jwtkeymap.io/secret-version"
# Put by the operator on every Secret a mapping reads. Its Secret watch selects on this label
# on the server, so a Secret that no mapping references never reaches the operator.
WATCHED_LABEL: Final = "jwtkeymap.io/watched"
WATCHED_SELECTOR: Final = f"{WATCHED_LABEL}=true"
# Set on mappings that lost a Conflict when the winner lets go of the identity, so they
# retry at once instead of on the next drift check.
RELEASED_ANNOTATION: Final = "jwtkeymap.io/released-by"
# Set by the drift check on a mapping whose row is not as it last wanted, so kopf re-runs
# the reconcile, which then reports the repair as drift.
RESYNC_ANNOTATION: Final = "jwtkeymap.io/resync"


class SpecError(JwtKeyMapError):
    """A JWTKeyMapping spec is invalid; ``field`` is its dotted path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.detail = message


class StrictModel(BaseModel):
    """Coerces nothing and reads a null as an absent field, as the API server does."""

    # strict: the API server coerces nothing ("true" is not a boolean), so neither do we.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        # The API server drops a null from a field that is not nullable (then applies the
        # default), so a manifest with `issuer: null` means the same offline.
        if isinstance(data, Mapping):
            return {name: value for name, value in data.items() if value is not None}
        return data


class SecretRef(StrictModel):
    """A key in a Secret of the mapping's namespace that holds the plaintext virtual key."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")


class KeySource(StrictModel):
    """Where the virtual key comes from: exactly one of a Secret or a hash."""

    secret_ref: SecretRef | None = Field(default=None, alias="secretRef")
    hash: str | None = Field(default=None, max_length=64)

    @field_validator("hash")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and not is_key_hash(value):
            raise ValueError(
                "must be the sha256 of a virtual key (64 lowercase hex characters); "
                "use key.secretRef for a plaintext key"
            )
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> KeySource:
        if (self.secret_ref is None) == (self.hash is None):
            raise ValueError("exactly one of key.secretRef or key.hash must be set")
        return self


class Claim(StrictModel):
    """The identifying claim and its value."""

    name: str = Field(min_length=1, max_length=256)
    value: str = Field(min_length=1, max_length=1024)

    @field_validator("name")
    @classmethod
    def _path(cls, value: str) -> str:
        split_path(value)
        # The CRD's rule looks at the raw text, so an escaped dot counts as a dot there.
        if value.startswith(".") or value.endswith(".") or ".." in value:
            raise ValueError(
                "must not start or end with '.' or contain '..' (escaped dots included)"
            )
        return value


ISSUER_PATTERN: Final = rf"^(\*|{ISSUER_URL})$"
ISSUER_REQUIRED: Final = (
    'required: set an issuer URL (e.g. https://idp.example.com), or "*" for any trusted '
    "issuer; a sub is unique only within one issuer"
)


class MappingSpec(StrictModel):
    """``spec`` of a JWTKeyMapping."""

    # Required, but by a rule of our own rather than the schema's `required`: the CRD's CEL
    # rule and this validator both name the two spellings, where "Required value" would not.
    issuer: str | None = Field(
        default=None, min_length=1, max_length=512, pattern=ISSUER_PATTERN, validate_default=True
    )
    claim: Claim
    key: KeySource
    description: str | None = Field(default=None, max_length=1024)
    active: bool = True
    deletion_policy: Literal["Delete", "Retain"] = Field(default="Delete", alias="deletionPolicy")

    @field_validator("issuer")
    @classmethod
    def _scope_is_explicit(cls, value: str | None) -> str | None:
        if value is None:
            raise ValueError(ISSUER_REQUIRED)
        return value

    @property
    def scope(self) -> str:
        """The issuer as stored: ``''`` (LiteLLM's global scope) for ``*``."""
        return "" if self.issuer in (None, ANY_ISSUER) else self.issuer

    @property
    def retain(self) -> bool:
        """Whether deleting the resource keeps the database row."""
        return self.deletion_policy == "Retain"


def parse_spec(spec: Mapping[str, Any] | None) -> MappingSpec:
    """Validate a spec; raise SpecError naming the first bad field (``spec.…``)."""
    try:
        return MappingSpec.model_validate(dict(spec or {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in ("spec", *err["loc"]))
        raise SpecError(loc, err["msg"].removeprefix("Value error, ")) from None


def identity_of(spec: MappingSpec, settings: Settings) -> MappingIdentity:
    """The mapping identity a spec declares, with the claim value in canonical form."""
    try:
        value = canonicalize(
            spec.claim.value, field=spec.claim.name, casefold=settings.casefold_claim
        )
    except ClaimError as exc:
        raise SpecError("spec.claim.value", str(exc)) from None
    return MappingIdentity(issuer=spec.scope, claim_name=spec.claim.name, claim_value=value)


def claim_name_allowed(name: str, settings: Settings) -> bool:
    """Whether the configured allow-list (empty: anything) permits this claim name."""
    return not settings.allowed_claim_names or name in settings.allowed_claim_names


def ref_of(namespace: str | None, name: str | None) -> str:
    """``namespace/name`` of a resource, as conditions, Events and owner rows name it."""
    return f"{namespace}/{name}"


def adopt_requested(annotations: Mapping[str, str] | None) -> bool:
    """Whether the resource asks to take over a row created outside jwtkeymap."""
    return (annotations or {}).get(ADOPT_ANNOTATION, "").lower() == "true"


def desired_mapping(
    spec: MappingSpec,
    settings: Settings,
    *,
    token_hash: str,
    owner: str,
    ref: str,
    annotations: Mapping[str, str] | None = None,
    may_adopt: frozenset[Adoptable] = frozenset(),
) -> DesiredMapping:
    """Build the desired mapping handed to the reconcile core."""
    identity = identity_of(spec, settings)
    if not claim_name_allowed(identity.claim_name, settings):
        raise SpecError(
            "spec.claim.name",
            f"claim {identity.claim_name!r} is not allowed "
            f"(allowed: {', '.join(settings.allowed_claim_names)})",
        )
    return DesiredMapping(
        identity=identity,
        token_hash=token_hash,
        owner=owner,
        ref=ref,
        description=spec.description,
        active=spec.active,
        adopt=adopt_requested(annotations),
        may_adopt=may_adopt,
    )
