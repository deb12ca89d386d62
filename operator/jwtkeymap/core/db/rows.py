"""Row shapes and the SQL fragments that several statements share, written once.

Only named columns are ever selected: LiteLLM's tables grow between releases.
An issuer-less schema (LiteLLM before issuer scoping) has no ``jwt_issuer``
column; every fragment here takes ``scoped`` and reads ``''`` in its place.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any, Final

from jwtkeymap.core.cache import UNMAPPED, Entry, Inactive, Mapped
from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db.schema import MAPPING_TABLE, OWNER_TABLE
from jwtkeymap.core.errors import InvalidKeyHash
from jwtkeymap.core.keys import KeyIdentity, fingerprint, is_key_hash

# A mapping row (``m``) with its owner (``o``), as MappingRow reads it.
MAPPING_COLUMNS: Final = (
    "m.id, m.jwt_claim_name, m.jwt_claim_value, m.token, m.description, m.is_active, "
    "m.created_by, m.updated_by, m.created_at, m.updated_at, o.owner, o.ref"
)
# The key columns (``k``) a decision needs.
KEY_COLUMNS: Final = "k.token, k.team_id, k.user_id, k.organization_id, k.blocked, k.expires"


def issuer_column(scoped: bool) -> str:
    """The mapping's issuer as ``jwt_issuer``: the column, or ``''`` without one."""
    return "m.jwt_issuer" if scoped else "''::text AS jwt_issuer"


def select_mappings(scoped: bool) -> str:
    """``SELECT … FROM`` mapping rows with their owners; append ``WHERE …``."""
    return (
        f"SELECT {MAPPING_COLUMNS}, {issuer_column(scoped)} FROM {MAPPING_TABLE} m "
        f"LEFT JOIN {OWNER_TABLE} o ON o.mapping_id = m.id "
    )


def identity_where(
    identity: MappingIdentity, scoped: bool, *, first: int = 1
) -> tuple[str, list[str]]:
    """The clause naming exactly one identity (no global fallback), and its arguments."""
    where = f"m.jwt_claim_name = ${first} AND m.jwt_claim_value = ${first + 1}"
    args = [identity.claim_name, identity.claim_value]
    if scoped:
        where += f" AND m.jwt_issuer = ${first + 2}"
        args.append(identity.issuer)
    return where, args


def utc(value: dt.datetime | None) -> dt.datetime | None:
    """LiteLLM's columns are TIMESTAMP(3) without time zone, written in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class MappingRow:
    """One row of ``LiteLLM_JWTKeyMapping`` (with its owner, if jwtkeymap manages it)."""

    id: str
    identity: MappingIdentity
    token_hash: str = dataclasses.field(repr=False)
    is_active: bool = True
    description: str | None = None
    created_by: str | None = None
    updated_by: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    owner: str | None = None
    ref: str | None = None

    @property
    def key_fingerprint(self) -> str:
        """Short digest of the mapped key's hash."""
        return fingerprint(self.token_hash)


def mapping_row(row: Mapping[str, Any]) -> MappingRow:
    """Build a MappingRow from a record selected by ``select_mappings``."""
    return MappingRow(
        id=row["id"],
        identity=MappingIdentity(row["jwt_issuer"], row["jwt_claim_name"], row["jwt_claim_value"]),
        token_hash=row["token"],
        is_active=row["is_active"],
        description=row["description"],
        created_by=row["created_by"],
        updated_by=row["updated_by"],
        created_at=utc(row["created_at"]),
        updated_at=utc(row["updated_at"]),
        owner=row["owner"],
        ref=row["ref"],
    )


def key_identity(row: Mapping[str, Any]) -> KeyIdentity:
    """Build a KeyIdentity from a record holding ``KEY_COLUMNS``.

    The hash is checked here, where it is read: it becomes an HTTP header and a
    fingerprint, and a row with CR/LF or non-ASCII in it would break both.
    Raise InvalidKeyHash (naming the mapping, never the value) otherwise.
    """
    token = row["token"]
    if not isinstance(token, str) or not is_key_hash(token):
        where = f" of mapping {row['id']}" if "id" in row else ""
        raise InvalidKeyHash(f"the stored key hash{where} is not 64 lowercase hex characters")
    return KeyIdentity(
        token_hash=token,
        team_id=row["team_id"],
        user_id=row["user_id"],
        org_id=row["organization_id"],
        blocked=bool(row["blocked"]),
        expires=utc(row["expires"]),
    )


def entry(row: Mapping[str, Any] | None, scope: str | None = None) -> Entry:
    """The cache entry for a mapping joined with its key (``None``: unmapped).

    ``scope`` is the issuer of the matching row when the record does not carry it.
    """
    if row is None:
        return UNMAPPED
    issuer = row["jwt_issuer"] if scope is None else scope
    if not row["is_active"]:
        return Inactive(mapping_id=row["id"], scope=issuer)
    return Mapped(mapping_id=row["id"], scope=issuer, key=key_identity(row))
