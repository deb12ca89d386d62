"""Writes and reads of ``LiteLLM_VerificationToken``: creating virtual keys.

A key is stored by its sha256 only; the plaintext is generated here, returned
once to whoever asked for it, and never stored or logged.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Mapping
from typing import Any, Final

import asyncpg

from jwtkeymap.core.db.schema import TOKEN_TABLE
from jwtkeymap.core.keys import KeyIdentity, hash_key
from jwtkeymap.core.settings import KeyDefaults

_DURATION_RE: Final = re.compile(r"^(\d+)(s|m|h|d|w|mo)$")
_DURATION_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "mo": 2592000}


def budget_period(duration: str | None) -> dt.timedelta | None:
    """Parse a LiteLLM budget duration (``30s``, ``1h``, ``7d``, ``1mo``); None for none."""
    if not duration:
        return None
    match = _DURATION_RE.match(duration)
    if not match:
        raise ValueError(f"budget_duration {duration!r} is not like 30s, 10m, 1h, 7d, 2w or 1mo")
    return dt.timedelta(seconds=int(match.group(1)) * _DURATION_UNITS[match.group(2)])


@dataclasses.dataclass(frozen=True, slots=True)
class NewKey:
    """Identity and limits of a key to create."""

    team_id: str | None = None
    user_id: str | None = None
    org_id: str | None = None
    alias: str | None = None
    defaults: KeyDefaults = dataclasses.field(default_factory=KeyDefaults)
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)


_INSERT_KEY: Final = (
    f"INSERT INTO {TOKEN_TABLE} (token, key_name, key_alias, user_id, team_id, "
    "organization_id, models, max_budget, budget_duration, budget_reset_at, tpm_limit, "
    "rpm_limit, metadata, created_by, updated_by, created_at, updated_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, "
    "CASE WHEN $10::interval IS NULL THEN NULL ELSE now() + $10::interval END, "
    "$11, $12, $13::jsonb, $14, $14, now(), now())"
)


async def insert_key(
    conn: asyncpg.Connection, plaintext: str, spec: NewKey, *, actor: str, timeout: float
) -> KeyIdentity:
    """INSERT the key row for ``plaintext`` (by its hash) on ``conn``; return its identity."""
    token_hash = hash_key(plaintext)
    d = spec.defaults
    await conn.execute(
        _INSERT_KEY,
        token_hash,
        # LiteLLM's display name: the prefix and last four characters, as its UI shows them.
        f"sk-...{plaintext[-4:]}",
        spec.alias,
        spec.user_id,
        spec.team_id,
        spec.org_id,
        list(d.models),
        d.max_budget,
        d.budget_duration,
        budget_period(d.budget_duration),
        d.tpm_limit,
        d.rpm_limit,
        json.dumps({**d.metadata, **spec.metadata}),
        actor,
        timeout=timeout,
    )
    return KeyIdentity(
        token_hash=token_hash, team_id=spec.team_id, user_id=spec.user_id, org_id=spec.org_id
    )
