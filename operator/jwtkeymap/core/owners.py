"""Owner ids: which declarative source a mapping row belongs to.

The reconcile core records an owner next to every row it writes, as text
``<kind>:<key>``: ``k8s:<uid>`` for a JWTKeyMapping in a cluster (the uid, so a
rename keeps the row), ``offline:<namespace>/<name>`` for a manifest applied by
``jwtkeymap apply``, ``auto-register:resolver`` for a row the resolver created for
an unregistered client (so that only a policy that allows it can adopt it). The
format is built and read here only, so the operator, the offline mode and the
conflict messages agree on it, and a prune by prefix can never reach another
kind's rows.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Final

_SEPARATOR: Final = ":"


class OwnerKind(enum.StrEnum):
    """The kinds of declarative source that own rows."""

    K8S = "k8s"
    OFFLINE = "offline"
    AUTO_REGISTER = "auto-register"


@dataclasses.dataclass(frozen=True, slots=True)
class Owner:
    """A parsed owner id."""

    kind: OwnerKind
    key: str

    def __str__(self) -> str:
        return f"{owner_prefix(self.kind)}{self.key}"


def owner_prefix(kind: OwnerKind) -> str:
    """The text every owner id of ``kind`` starts with."""
    return f"{kind.value}{_SEPARATOR}"


def k8s_owner(uid: str) -> str:
    """Owner id of a mapping declared by a Kubernetes resource (stable across renames)."""
    return str(Owner(OwnerKind.K8S, uid))


def offline_owner(namespace: str, name: str) -> str:
    """Owner id of a mapping declared by an offline manifest."""
    return str(Owner(OwnerKind.OFFLINE, f"{namespace}/{name}"))


# ``created_by`` of rows auto-registered before they were given an owner: still told apart.
AUTO_REGISTER_ACTOR: Final = "jwtkeymap:auto_register"
AUTO_REGISTERED: Final = f"{OwnerKind.AUTO_REGISTER.value}{_SEPARATOR}resolver"


def parse_owner(owner: str) -> Owner | None:
    """Read an owner id; None for text no jwtkeymap source writes."""
    kind, separator, key = owner.partition(_SEPARATOR)
    if not separator:
        return None
    try:
        return Owner(OwnerKind(kind), key)
    except ValueError:
        return None
