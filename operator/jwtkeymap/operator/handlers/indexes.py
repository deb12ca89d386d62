"""kopf's in-memory indexes of JWTKeyMappings: by the Secret they read, by their identity.

kopf passes each index to every handler as a keyword argument named by its id,
so the ids below are the names handlers (and the validating webhook) read.
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias

import kopf

from jwtkeymap.core.settings import Settings
from jwtkeymap.operator.resource import (
    SECRET_VERSION_ANNOTATION,
    SpecError,
    identity_of,
    parse_spec,
    ref_of,
)

BY_SECRET: Final = "by_secret"
BY_IDENTITY: Final = "by_identity"

# (namespace, Secret name) -> (mapping name, Secret version it last saw)
SecretKey: TypeAlias = tuple[str, str]
SecretUser: TypeAlias = tuple[str, str | None]
# (issuer, claim name, claim value) -> (namespace/name, uid)
IdentityKey: TypeAlias = tuple[str, str, str]
IdentityHolder: TypeAlias = tuple[str, str]
BySecret: TypeAlias = kopf.Index[SecretKey, SecretUser]
ByIdentity: TypeAlias = kopf.Index[IdentityKey, IdentityHolder]


def by_secret(
    namespace: str | None, name: str, spec: kopf.Spec, meta: kopf.Meta, **_: Any
) -> dict[SecretKey, SecretUser] | None:
    """Mappings by the Secret they read, with the Secret version they last saw."""
    secret_ref = (spec.get("key") or {}).get("secretRef") or {}
    if not secret_ref.get("name"):
        return None
    seen = meta.annotations.get(SECRET_VERSION_ANNOTATION)
    return {(namespace or "", secret_ref["name"]): (name, seen)}


def by_identity(
    namespace: str | None,
    name: str,
    uid: str,
    spec: kopf.Spec,
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
