"""The invalidation message: an identity, a key (by fingerprint), or everything.

The database triggers installed by ``db.schema`` send the same JSON: any writer,
whoever it is, only has to change a row.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Final, Literal

from jwtkeymap.core.cache import MappingCache
from jwtkeymap.core.claims import MappingIdentity

FLUSH_ALL: Final = json.dumps({"all": True})

Kind = Literal["identity", "key", "all"]


@dataclasses.dataclass(frozen=True, slots=True)
class Invalidation:
    """One message: an identity, a key (by fingerprint), or everything."""

    kind: Kind
    identity: MappingIdentity | None = None
    key_fingerprint: str | None = None

    def to_json(self) -> str:
        """The wire form (the same JSON the database triggers send)."""
        if self.kind == "identity":
            assert self.identity is not None
            return json.dumps(self.identity.to_json())
        if self.kind == "key":
            return json.dumps({"key": self.key_fingerprint})
        return FLUSH_ALL


def parse_message(payload: str | bytes) -> Invalidation:
    """Decode a payload; raise ValueError for anything that is not one of the three shapes."""
    data = json.loads(payload)
    if not isinstance(data, dict):
        raise ValueError("payload is not a JSON object")
    if data.get("all") is True:
        return Invalidation("all")
    key = data.get("key")
    if isinstance(key, str) and key:
        return Invalidation("key", key_fingerprint=key)
    fields = (data.get("issuer"), data.get("claim_name"), data.get("claim_value"))
    if all(isinstance(f, str) for f in fields) and fields[1] and fields[2]:
        issuer, name, value = (str(f) for f in fields)
        return Invalidation("identity", identity=MappingIdentity(issuer, name, value))
    raise ValueError("payload has none of issuer/claim_name/claim_value, key, all")


def apply_message(cache: MappingCache, message: Invalidation) -> int:
    """Evict what ``message`` names from ``cache``; return how many entries went."""
    if message.kind == "identity":
        assert message.identity is not None
        ident = message.identity
        return cache.invalidate(ident.issuer, ident.claim_name, ident.claim_value)
    if message.kind == "key":
        assert message.key_fingerprint is not None
        return cache.invalidate_key(message.key_fingerprint)
    count = len(cache)
    cache.clear()
    return count
