"""What this replica knows of the JWTKeyMappings it handles: by uid, by Secret, by identity.

The handlers fill it as they run (every resource passes through a resume handler
when the operator starts, then through create, update and delete handlers), so
it costs one small entry per resource and no watch of its own. It replaces kopf
indexes over JWTKeyMappings: kopf holds every handler of an indexed resource kind
until each object of it is indexed, and that wait costs O(N) per object (a
restart of 3,000 resources took 15x the time of 1,000). Who uses it:

* a changed Secret wakes the mappings that read it (:meth:`secret_users`);
* a released identity wakes the mappings that lost a conflict over it
  (:meth:`holders`);
* the drift check compares every resource's last desired row with one bulk read
  of the database (:meth:`entries`).

A standby replica's kopf handlers do not run, so its registry stays empty: it
acts on nothing until it takes over and resumes every resource.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TypeAlias, TypeVar

from jwtkeymap.core.claims import MappingIdentity

# (issuer, claim name, claim value), as the admission webhook keys identities.
IdentityKey: TypeAlias = tuple[str, str, str]
K = TypeVar("K")


@dataclasses.dataclass(slots=True)
class Known:
    """One resource as its last handler saw it."""

    namespace: str
    name: str
    identity: IdentityKey | None = None
    secret: str | None = None  # the Secret it reads (same namespace)
    secret_seen: str | None = None  # that Secret's version it last saw (annotation)
    digest: str | None = None  # the row its last reconcile wanted, when it was synced
    owner: str = ""
    # Not synced, and a later check may succeed (not an invalid spec). False until a
    # handler has given its verdict: a reconcile in flight is not the drift check's to redo.
    retry: bool = False


class MappingRegistry:
    """Resources by uid, with the two reverse lookups the handlers need."""

    def __init__(self) -> None:
        self._by_uid: dict[str, Known] = {}
        self._by_secret: dict[tuple[str, str], set[str]] = {}
        self._by_identity: dict[IdentityKey, set[str]] = {}

    def __len__(self) -> int:
        return len(self._by_uid)

    def remember(
        self,
        uid: str,
        namespace: str,
        name: str,
        *,
        identity: MappingIdentity | None,
        secret: str | None,
        secret_seen: str | None,
    ) -> None:
        """Record what a handler just read of resource ``uid`` (its last sync is kept)."""
        old = self._by_uid.get(uid)
        key = (identity.issuer, identity.claim_name, identity.claim_value) if identity else None
        known = Known(namespace, name, key, secret, secret_seen)
        if old is not None:
            self._unlink(uid, old)
            if (old.identity, old.secret) == (key, secret):
                known.digest, known.owner, known.retry = old.digest, old.owner, old.retry
        self._by_uid[uid] = known
        if secret is not None:
            self._by_secret.setdefault((namespace, secret), set()).add(uid)
        if key is not None:
            self._by_identity.setdefault(key, set()).add(uid)

    def synced(self, uid: str, owner: str, digest: str | None, *, retry: bool = True) -> None:
        """Record the row ``uid`` is synced to (``digest``), or that it is not (None)."""
        known = self._by_uid.get(uid)
        if known is not None:
            known.owner, known.digest, known.retry = owner, digest, retry

    def forget(self, uid: str) -> None:
        """Drop a deleted resource."""
        old = self._by_uid.pop(uid, None)
        if old is not None:
            self._unlink(uid, old)

    def secret_users(self, namespace: str, secret: str) -> list[tuple[str, str | None]]:
        """(name, Secret version last seen) of each resource reading this Secret."""
        uids = self._by_secret.get((namespace, secret), ())
        return sorted((self._by_uid[u].name, self._by_uid[u].secret_seen) for u in uids)

    def holders(self, key: IdentityKey) -> list[tuple[str, str]]:
        """(namespace/name, uid) of each resource declaring this identity."""
        uids = self._by_identity.get(key, ())
        found = [(f"{self._by_uid[u].namespace}/{self._by_uid[u].name}", u) for u in uids]
        return sorted(found)

    def entries(self) -> Iterator[tuple[str, Known]]:
        """Every resource (uid, entry); a snapshot, safe while handlers change the registry."""
        return iter(list(self._by_uid.items()))

    def _unlink(self, uid: str, old: Known) -> None:
        if old.secret is not None:
            _discard(self._by_secret, (old.namespace, old.secret), uid)
        if old.identity is not None:
            _discard(self._by_identity, old.identity, uid)


def _discard(index: dict[K, set[str]], key: K, uid: str) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(uid)
        if not members:
            del index[key]
