"""What "nothing lost" means in the database: counts, orphans and duplicates, in one query each.

Fault tests compare these before and after an outage, a crash or a race.
"""

from __future__ import annotations

import dataclasses
import re

import asyncpg


@dataclasses.dataclass(frozen=True)
class Integrity:
    """A snapshot of the two LiteLLM tables and jwtkeymap's ownership records."""

    mappings: int
    keys: int
    owned: int
    # Auto-registered keys that no mapping points at: a registration that half happened.
    orphan_keys: int
    # (issuer, claim name, claim value) held by more than one row (the unique index forbids it).
    duplicate_identities: int
    # Mappings pointing at a key that does not exist (the foreign key forbids it).
    dangling_mappings: int

    @property
    def sound(self) -> bool:
        """Tell whether nothing is orphaned, duplicated or dangling."""
        return not (self.orphan_keys or self.duplicate_identities or self.dangling_mappings)


async def integrity(conn: asyncpg.Connection) -> Integrity:
    """Measure the database behind ``conn``."""
    row = await conn.fetchrow(
        """
        SELECT
          (SELECT count(*) FROM "LiteLLM_JWTKeyMapping") AS mappings,
          (SELECT count(*) FROM "LiteLLM_VerificationToken") AS keys,
          (SELECT count(*) FROM jwtkeymap_mapping_owner) AS owned,
          (SELECT count(*) FROM "LiteLLM_VerificationToken" k
            WHERE k.metadata->>'auto_registered' = 'true'
              AND NOT EXISTS (SELECT 1 FROM "LiteLLM_JWTKeyMapping" m WHERE m.token = k.token)
          ) AS orphan_keys,
          (SELECT count(*) FROM (
             SELECT 1 FROM "LiteLLM_JWTKeyMapping"
             GROUP BY jwt_issuer, jwt_claim_name, jwt_claim_value HAVING count(*) > 1) d
          ) AS duplicate_identities,
          (SELECT count(*) FROM "LiteLLM_JWTKeyMapping" m
            WHERE NOT EXISTS (SELECT 1 FROM "LiteLLM_VerificationToken" k WHERE k.token = m.token)
          ) AS dangling_mappings
        """
    )
    return Integrity(**{k: int(v) for k, v in dict(row).items()})


# A key hash (sha256 hex) or a plaintext virtual key, standing alone in some text.
_SECRET = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])|\bsk-[A-Za-z0-9_\-]{16,}")


def leaked_secrets(text: str) -> list[str]:
    """Every key hash or plaintext key in ``text`` (fingerprints are 12 characters: fine)."""
    return _SECRET.findall(text)
