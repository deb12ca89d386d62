"""The database schema: LiteLLM-compatible tables, and jwtkeymap's own objects.

Two situations, told apart at migration time:

* A LiteLLM database: LiteLLM owns its tables. We never create, drop or alter
  them; we add only ``jwtkeymap_*`` objects (a metadata table, the ownership
  table, and triggers that NOTIFY on changes).
* A database of our own: we create the two tables in LiteLLM's current shape
  (same column names and types, same index and constraint names), so the
  database can later be handed to a LiteLLM proxy unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Final

import asyncpg

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.errors import SchemaError

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
# Arbitrary, stable: every replica running `migrate` serialises on it.
MIGRATION_LOCK_ID: Final = 0x6A776B6D  # "jwkm"

TOKEN_TABLE: Final = '"LiteLLM_VerificationToken"'
MAPPING_TABLE: Final = '"LiteLLM_JWTKeyMapping"'
# jwtkeymap's own: who manages a mapping row, and what this schema is.
OWNER_TABLE: Final = "jwtkeymap_mapping_owner"
META_TABLE: Final = "jwtkeymap_meta"

_CREATE_TOKEN_TABLE = """
CREATE TABLE "LiteLLM_VerificationToken" (
    "token" TEXT NOT NULL,
    "key_name" TEXT,
    "key_alias" TEXT,
    "soft_budget_cooldown" BOOLEAN NOT NULL DEFAULT false,
    "spend" DOUBLE PRECISION NOT NULL DEFAULT 0.0,
    "total_spend" DOUBLE PRECISION NOT NULL DEFAULT 0.0,
    "expires" TIMESTAMP(3),
    "models" TEXT[],
    "aliases" JSONB NOT NULL DEFAULT '{}',
    "config" JSONB NOT NULL DEFAULT '{}',
    "router_settings" JSONB DEFAULT '{}',
    "user_id" TEXT,
    "team_id" TEXT,
    "agent_id" TEXT,
    "project_id" TEXT,
    "permissions" JSONB NOT NULL DEFAULT '{}',
    "max_parallel_requests" INTEGER,
    "metadata" JSONB NOT NULL DEFAULT '{}',
    "blocked" BOOLEAN,
    "tpm_limit" BIGINT,
    "rpm_limit" BIGINT,
    "tpd_limit" BIGINT,
    "max_budget" DOUBLE PRECISION,
    "budget_duration" TEXT,
    "budget_reset_at" TIMESTAMP(3),
    "allowed_cache_controls" TEXT[] DEFAULT ARRAY[]::TEXT[],
    "allowed_routes" TEXT[] DEFAULT ARRAY[]::TEXT[],
    "key_type" TEXT,
    "policies" TEXT[] DEFAULT ARRAY[]::TEXT[],
    "access_group_ids" TEXT[] DEFAULT ARRAY[]::TEXT[],
    "model_spend" JSONB NOT NULL DEFAULT '{}',
    "model_max_budget" JSONB NOT NULL DEFAULT '{}',
    "budget_fallbacks" JSONB NOT NULL DEFAULT '{}',
    "budget_id" TEXT,
    "organization_id" TEXT,
    "object_permission_id" TEXT,
    "created_at" TIMESTAMP(3) DEFAULT CURRENT_TIMESTAMP,
    "created_by" TEXT,
    "updated_at" TIMESTAMP(3) DEFAULT CURRENT_TIMESTAMP,
    "updated_by" TEXT,
    "settings_updated_at" TIMESTAMP(3),
    "last_active" TIMESTAMP(3),
    "rotation_count" INTEGER DEFAULT 0,
    "auto_rotate" BOOLEAN DEFAULT false,
    "rotation_interval" TEXT,
    "last_rotation_at" TIMESTAMP(3),
    "key_rotation_at" TIMESTAMP(3),
    "budget_limits" JSONB,
    CONSTRAINT "LiteLLM_VerificationToken_pkey" PRIMARY KEY ("token")
);
CREATE INDEX "LiteLLM_VerificationToken_user_id_team_id_idx"
    ON "LiteLLM_VerificationToken"("user_id", "team_id");
CREATE INDEX "LiteLLM_VerificationToken_team_id_idx" ON "LiteLLM_VerificationToken"("team_id");
CREATE INDEX "LiteLLM_VerificationToken_budget_reset_at_expires_idx"
    ON "LiteLLM_VerificationToken"("budget_reset_at", "expires");
"""

_CREATE_MAPPING_TABLE = """
CREATE TABLE "LiteLLM_JWTKeyMapping" (
    "id" TEXT NOT NULL,
    "jwt_claim_name" TEXT NOT NULL,
    "jwt_claim_value" TEXT NOT NULL,
    "token" TEXT NOT NULL,
    "description" TEXT,
    "is_active" BOOLEAN NOT NULL DEFAULT true,
    "created_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "created_by" TEXT,
    "updated_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updated_by" TEXT,
    "jwt_issuer" TEXT NOT NULL DEFAULT '',
    CONSTRAINT "LiteLLM_JWTKeyMapping_pkey" PRIMARY KEY ("id")
);
CREATE INDEX "LiteLLM_JWTKeyMapping_jwt_issuer_jwt_claim_name_jwt_claim_v_idx"
    ON "LiteLLM_JWTKeyMapping"("jwt_issuer", "jwt_claim_name", "jwt_claim_value", "is_active");
CREATE UNIQUE INDEX "LiteLLM_JWTKeyMapping_jwt_issuer_jwt_claim_name_jwt_claim_v_key"
    ON "LiteLLM_JWTKeyMapping"("jwt_issuer", "jwt_claim_name", "jwt_claim_value");
ALTER TABLE "LiteLLM_JWTKeyMapping" ADD CONSTRAINT "LiteLLM_JWTKeyMapping_token_fkey"
    FOREIGN KEY ("token") REFERENCES "LiteLLM_VerificationToken"("token")
    ON DELETE CASCADE ON UPDATE CASCADE;
"""

# Our own objects only. Everything is idempotent, so `migrate` can always run.
_OWN_OBJECTS = """
CREATE TABLE IF NOT EXISTS jwtkeymap_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Which manager owns a mapping row. A row without an entry here was made by
-- someone else (LiteLLM's API, psql, auto-registration) and is never touched
-- by the operator unless it is explicitly adopted.
CREATE TABLE IF NOT EXISTS jwtkeymap_mapping_owner (
    mapping_id TEXT PRIMARY KEY
        REFERENCES "LiteLLM_JWTKeyMapping"("id") ON DELETE CASCADE ON UPDATE CASCADE,
    owner TEXT NOT NULL,
    ref TEXT NOT NULL DEFAULT '',
    spec_digest TEXT NOT NULL DEFAULT '',
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS jwtkeymap_mapping_owner_owner_idx ON jwtkeymap_mapping_owner(owner);

CREATE OR REPLACE FUNCTION jwtkeymap_notify(payload jsonb) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    -- NOTIFY payloads are limited to 8000 bytes; a huge claim degrades to a full flush.
    IF octet_length(payload::text) > 7900 THEN
        payload := '{"all": true}'::jsonb;
    END IF;
    PERFORM pg_notify('{channel}', payload::text);
END
$fn$;

CREATE OR REPLACE FUNCTION jwtkeymap_notify_mapping() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    old_id jsonb;
    new_id jsonb;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        old_id := jsonb_build_object(
            'issuer', coalesce(to_jsonb(OLD) ->> 'jwt_issuer', ''),
            'claim_name', OLD.jwt_claim_name, 'claim_value', OLD.jwt_claim_value);
        PERFORM jwtkeymap_notify(old_id);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        new_id := jsonb_build_object(
            'issuer', coalesce(to_jsonb(NEW) ->> 'jwt_issuer', ''),
            'claim_name', NEW.jwt_claim_name, 'claim_value', NEW.jwt_claim_value);
        IF old_id IS DISTINCT FROM new_id THEN
            PERFORM jwtkeymap_notify(new_id);
        END IF;
    END IF;
    RETURN NULL;
END
$fn$;

-- Keys are named on the bus by a fingerprint, never by their hash.
CREATE OR REPLACE FUNCTION jwtkeymap_notify_key() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM jwtkeymap_notify(jsonb_build_object(
        'key', left(encode(sha256(convert_to(OLD.token, 'UTF8')), 'hex'), 12)));
    RETURN NULL;
END
$fn$;

DROP TRIGGER IF EXISTS jwtkeymap_invalidate ON "LiteLLM_JWTKeyMapping";
CREATE TRIGGER jwtkeymap_invalidate
    AFTER INSERT OR UPDATE OR DELETE ON "LiteLLM_JWTKeyMapping"
    FOR EACH ROW EXECUTE FUNCTION jwtkeymap_notify_mapping();

DROP TRIGGER IF EXISTS jwtkeymap_invalidate_key_update ON "LiteLLM_VerificationToken";
CREATE TRIGGER jwtkeymap_invalidate_key_update
    AFTER UPDATE ON "LiteLLM_VerificationToken"
    FOR EACH ROW WHEN (
        OLD.token IS DISTINCT FROM NEW.token
        OR OLD.blocked IS DISTINCT FROM NEW.blocked
        OR OLD.expires IS DISTINCT FROM NEW.expires
        OR OLD.team_id IS DISTINCT FROM NEW.team_id
        OR OLD.user_id IS DISTINCT FROM NEW.user_id
        OR OLD.organization_id IS DISTINCT FROM NEW.organization_id)
    EXECUTE FUNCTION jwtkeymap_notify_key();

DROP TRIGGER IF EXISTS jwtkeymap_invalidate_key_delete ON "LiteLLM_VerificationToken";
CREATE TRIGGER jwtkeymap_invalidate_key_delete
    AFTER DELETE ON "LiteLLM_VerificationToken"
    FOR EACH ROW EXECUTE FUNCTION jwtkeymap_notify_key();

INSERT INTO jwtkeymap_meta(key, value) VALUES ('schema_version', '{version}')
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
"""


@dataclasses.dataclass(frozen=True)
class SchemaInfo:
    """What the database offers, read once per connection pool."""

    litellm_owned: bool
    issuer_scoped: bool

    def describe(self) -> str:
        """One line for logs and readiness output."""
        owner = "LiteLLM-owned schema" if self.litellm_owned else "jwtkeymap-owned schema"
        scope = (
            "issuer-scoped mappings"
            if self.issuer_scoped
            else "issuer-less mode (no jwt_issuer column: only global mappings)"
        )
        return f"{owner}, {scope}"


def require_scope(info: SchemaInfo, identity: MappingIdentity) -> None:
    """Raise SchemaError when an issuer-scoped identity meets an issuer-less schema."""
    if identity.issuer and not info.issuer_scoped:
        raise SchemaError(
            "this database has no jwt_issuer column: only global mappings (issuer '') "
            "are possible until LiteLLM's schema is upgraded"
        )


@dataclasses.dataclass(frozen=True)
class MigrationReport:
    """What a migration did."""

    created: tuple[str, ...]
    schema: SchemaInfo


async def _exists(conn: asyncpg.Connection, relation: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", relation))


async def inspect(conn: asyncpg.Connection) -> SchemaInfo:
    """Describe the schema; raise SchemaError when the mapping tables are absent."""
    if not await _exists(conn, MAPPING_TABLE) or not await _exists(conn, TOKEN_TABLE):
        raise SchemaError(
            "the LiteLLM_JWTKeyMapping / LiteLLM_VerificationToken tables are missing: "
            "run `jwtkeymap migrate` first"
        )
    issuer_scoped = bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = 'LiteLLM_JWTKeyMapping' "
            "AND column_name = 'jwt_issuer')"
        )
    )
    owner = None
    if await _exists(conn, META_TABLE):
        owner = await conn.fetchval(f"SELECT value FROM {META_TABLE} WHERE key = 'tables_owner'")
    litellm_owned = owner == "litellm" or (
        owner is None and await _exists(conn, '"_prisma_migrations"')
    )
    return SchemaInfo(litellm_owned=litellm_owned, issuer_scoped=issuer_scoped)


async def migrate(conn: asyncpg.Connection, *, channel: str) -> MigrationReport:
    """Create whatever is missing, under an advisory lock; safe to run concurrently."""
    created: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
        litellm_owned = await _exists(conn, '"_prisma_migrations"')
        has_token = await _exists(conn, TOKEN_TABLE)
        has_mapping = await _exists(conn, MAPPING_TABLE)
        if litellm_owned or has_token:
            if not has_mapping:
                raise SchemaError(
                    "this LiteLLM database has no LiteLLM_JWTKeyMapping table: upgrade LiteLLM "
                    "(its migrations own that table); jwtkeymap will not create it"
                )
        else:
            await conn.execute(_CREATE_TOKEN_TABLE)
            created.append(TOKEN_TABLE)
            if not has_mapping:
                await conn.execute(_CREATE_MAPPING_TABLE)
                created.append(MAPPING_TABLE)
        had_meta = await _exists(conn, META_TABLE)
        await conn.execute(
            _OWN_OBJECTS.replace("{channel}", channel).replace("{version}", str(SCHEMA_VERSION))
        )
        # The first migration records who owns the two tables; later ones keep it.
        await conn.execute(
            f"INSERT INTO {META_TABLE}(key, value) VALUES ('tables_owner', $1) "
            "ON CONFLICT (key) DO NOTHING",
            "jwtkeymap" if created else "litellm",
        )
        if not had_meta:
            created.append("jwtkeymap_* objects")
        info = await inspect(conn)
    if not info.issuer_scoped:
        log.warning(
            "LiteLLM_JWTKeyMapping has no jwt_issuer column: running issuer-less "
            "(only global mappings); upgrade LiteLLM to scope mappings by issuer"
        )
    return MigrationReport(created=tuple(created), schema=info)
