"""LiteLLM's real database schema, from the SQL migrations in ``litellm-proxy-extras``."""

from __future__ import annotations

from pathlib import Path

import asyncpg

# The migration that adds jwt_issuer; applying everything before it gives an issuer-less schema.
ISSUER_MIGRATION = "20260915000000_scope_jwt_key_mapping_by_issuer"
# The migration that creates LiteLLM_JWTKeyMapping.
MAPPING_MIGRATION = "20260306233848_schema_sync"


def migrations() -> list[Path]:
    """Every LiteLLM migration file, in the order LiteLLM applies them."""
    import litellm_proxy_extras

    root = Path(litellm_proxy_extras.__file__).parent / "migrations"
    return sorted(root.glob("*/migration.sql"), key=lambda p: p.parent.name)


async def apply(conn: asyncpg.Connection, *, before: str | None = None) -> int:
    """Apply LiteLLM's migrations (those sorting before ``before``, if given); return the count."""
    count = 0
    for path in migrations():
        if before is not None and path.parent.name >= before:
            break
        await conn.execute(path.read_text())
        count += 1
    # A real LiteLLM database also has Prisma's bookkeeping table.
    await conn.execute(
        'CREATE TABLE IF NOT EXISTS "_prisma_migrations" (id VARCHAR(36) PRIMARY KEY, '
        "migration_name VARCHAR(255) NOT NULL)"
    )
    return count
