"""Settings: one pydantic-settings model, from a YAML file and ``JWTKEYMAP_*`` variables.

Precedence, highest first: explicit keyword arguments (CLI flags), environment
variables, the YAML file, defaults. Unknown fields are errors, so a typo in a
security setting never silently falls back to a default.
"""

from __future__ import annotations

import contextvars
import enum
from pathlib import Path
from typing import Any, Final, Literal, get_args

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from jwtkeymap.core.claims import MatchRule, split_path
from jwtkeymap.core.errors import ConfigError

# Asymmetric algorithms only: a verifier that holds public keys must never accept
# an HMAC token (that is the "public key as HMAC secret" confusion attack).
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)

# What carries reverse-proxy mode's bytes (``Settings.proxy_engine``).
ProxyEngine = Literal["resolver", "nginx"]
PROXY_ENGINES: Final[tuple[str, ...]] = get_args(ProxyEngine)

_config_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "jwtkeymap_config_file", default=None
)


class Behavior(enum.StrEnum):
    """What happens to a client whose claim has no mapping."""

    FALLBACK_TEAM_MAPPING = "fallback_team_mapping"
    REJECT = "reject"
    AUTO_REGISTER = "auto_register"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IssuerSettings(_Strict):
    """One trusted token issuer."""

    issuer: str = Field(min_length=1)
    jwks_url: str | None = None
    public_keys: list[str] = Field(default_factory=list)
    audience: str | list[str] | None = None
    algorithms: list[str] = Field(default_factory=lambda: ["RS256"], min_length=1)
    leeway_seconds: float = Field(default=30, ge=0, le=600)
    # The token header's accepted ``typ`` values (case-insensitive, e.g. ["at+jwt"]);
    # unset: any typ, or none, is accepted.
    typ: list[str] | None = Field(default=None, min_length=1)

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if a not in ASYMMETRIC_ALGORITHMS]
        if bad:
            raise ValueError(
                f"unsupported algorithm(s) {bad}: only asymmetric algorithms are allowed "
                f"({', '.join(sorted(ASYMMETRIC_ALGORITHMS))})"
            )
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> IssuerSettings:
        if bool(self.jwks_url) == bool(self.public_keys):
            raise ValueError("exactly one of jwks_url or public_keys is required")
        return self


class AdminRule(_Strict):
    """Tokens whose claim matches are proxy admins and bypass the mapping."""

    claim: str = Field(min_length=1)
    value: str = Field(min_length=1)
    # exact (the string, or an element of a list), element (of a list), or word (of a
    # space-separated scope string, or an element of a list). Unset: word for a claim
    # named ``scope`` or ``scp``, exact otherwise.
    match: MatchRule | None = None


class KeyDefaults(_Strict):
    """Template for the limits of an auto-registered key."""

    models: list[str] = Field(default_factory=list)
    max_budget: float | None = Field(default=None, ge=0)
    budget_duration: str | None = None
    tpm_limit: int | None = Field(default=None, ge=0)
    rpm_limit: int | None = Field(default=None, ge=0)
    key_alias: str = "jwt-{claim_value}"
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("key_alias")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        try:
            value.format(claim_name="n", claim_value="v", issuer="i")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                "key_alias may use only {claim_name}, {claim_value} and {issuer}"
            ) from exc
        return value


class AutoRegisterSettings(_Strict):
    """How auto-registered keys are bounded."""

    team_id_claim: str | None = None
    team_id_default: str | None = None
    user_id_claim: str | None = "sub"
    org_id_claim: str | None = None
    key_defaults: KeyDefaults = Field(default_factory=KeyDefaults)


class AssertionSettings(_Strict):
    """The signed identity assertion the resolver sends upstream (``x-jwtkeymap-assertion``).

    On with ``enabled: true`` or a ``signing_key_file``. Without a file the resolver
    signs with an ephemeral Ed25519 key made at start, which never leaves the process:
    right for a sidecar whose gateway reads its JWKS over loopback, wrong for several
    resolvers behind one gateway (each would have its own key).
    """

    enabled: bool = False
    # A PEM file of PKCS#8 private keys (Ed25519 or EC P-256): the first signs, all
    # are published, so a key is rotated by adding it second, then moving it first.
    signing_key_file: Path | None = None
    issuer: str = Field(default="jwtkeymap", min_length=1)
    audience: str = Field(default="litellm", min_length=1)
    ttl_seconds: int = Field(default=30, ge=1, le=300)

    @model_validator(mode="before")
    @classmethod
    def _file_turns_on(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("signing_key_file") and "enabled" not in data:
            data = {**data, "enabled": True}
        return data

    @model_validator(mode="after")
    def _file_needs_enabled(self) -> AssertionSettings:
        if self.signing_key_file is not None and not self.enabled:
            raise ValueError("signing_key_file is set but enabled is false")
        return self


class Settings(BaseSettings):
    """Every setting of jwtkeymap; the same model for the CLI, resolver and operator."""

    model_config = SettingsConfigDict(
        env_prefix="JWTKEYMAP_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        populate_by_name=True,
    )

    database_url: str | None = Field(default=None, repr=False)
    claim_field: str = Field(
        default="sub", validation_alias=AliasChoices("claim_field", "jwt_client_id_field")
    )
    unregistered_client_behavior: Behavior = Behavior.FALLBACK_TEAM_MAPPING
    positive_ttl_seconds: float = Field(default=300, ge=0)
    negative_ttl_seconds: float = Field(default=30, ge=0)
    cache_max_entries: int = Field(default=100_000, ge=1)
    casefold_claim: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    issuers: list[IssuerSettings] = Field(default_factory=list)
    admin: AdminRule | None = None
    auto_register: AutoRegisterSettings = Field(default_factory=AutoRegisterSettings)

    # Token verification.
    token_cache_max_entries: int = Field(default=100_000, ge=1)
    token_cache_ttl_seconds: float = Field(default=300, ge=0)
    jwks_min_refresh_seconds: float = Field(default=30, ge=0)
    jwks_max_age_seconds: float = Field(default=3600, ge=1)
    oidc_userinfo_url: str | None = None
    oidc_userinfo_ttl_seconds: float = Field(default=60, ge=0)
    # Issuer scope of identities read from userinfo; default: the userinfo URL's origin.
    oidc_userinfo_issuer: str | None = None

    # Database.
    db_pool_min_size: int = Field(default=1, ge=0)
    db_pool_max_size: int = Field(default=4, ge=1)
    db_timeout_seconds: float = Field(default=5, gt=0)
    # asyncpg's per-connection cache of named prepared statements. 0 behind PgBouncer in
    # transaction mode before 1.21 (Debian bookworm ships 1.18): a named statement lives
    # on one server connection, and the next transaction may run on another.
    db_statement_cache_size: int = Field(default=100, ge=0)
    invalidation_channel: str = Field(default="jwtkeymap_invalidate", pattern=r"^[a-z_][a-z0-9_]*$")
    stale_while_disconnected_seconds: float = Field(default=0, ge=0)
    redis_url: str | None = Field(default=None, repr=False)
    # Hold a LISTEN connection; turn off behind PgBouncer in transaction mode (use Redis).
    invalidation_listen: bool = True
    # Republish every PostgreSQL invalidation to Redis (run in one process per fleet).
    invalidation_relay: bool = False
    # Redis alone (no LISTEN): the channel counts as up only while a relay's heartbeat
    # (every relay's ``invalidation_liveness_seconds``) arrived within this many seconds,
    # so a dead relay suspends the cache instead of leaving it stale. 0: trust Redis
    # without a heartbeat (something other than a jwtkeymap relay publishes).
    invalidation_relay_timeout_seconds: float = Field(default=15, ge=0)
    invalidation_liveness_seconds: float = Field(default=5, gt=0)
    invalidation_reconnect_max_seconds: float = Field(default=5, gt=0)

    # Resolver (sidecar).
    listen: str = "0.0.0.0:8080"
    # HOST:PORT of a listener that serves /metrics alone. Set, /metrics is served there and
    # not on ``listen``. In reverse-proxy mode ``listen`` is the upstream's only way in and
    # never serves /metrics (the path is checked and forwarded like any other): set this
    # to scrape a proxy.
    metrics_listen: str | None = None
    upstream: str | None = None
    # What carries the bytes in reverse-proxy mode: the resolver itself, or an nginx it
    # runs as its child process, asking the resolver's check over a private Unix socket
    # for every request (docs/resolver.md, "nginx as the proxy engine"). The decision is
    # the resolver's either way.
    proxy_engine: ProxyEngine = "resolver"
    # The nginx binary of ``proxy_engine: nginx`` (a name on PATH, or a path).
    nginx_binary: str = "nginx"
    strip_authorization: bool = False
    assertion: AssertionSettings = Field(default_factory=AssertionSettings)
    shutdown_grace_seconds: float = Field(default=20, ge=0)
    # What a client can cost before it has shown a token (docs/resolver.md, "Limits").
    # The Authorization header may be this long (a 16 KiB token and its scheme) ...
    max_authorization_bytes: int = Field(default=16 * 1024 + 64, ge=1024, le=1024 * 1024)
    # ... every other header field this long, and the whole request head this long.
    max_header_field_bytes: int = Field(default=8190, ge=1024, le=1024 * 1024)
    max_request_head_bytes: int = Field(default=64 * 1024, ge=4096, le=4 * 1024 * 1024)
    # A request head must arrive within this many seconds of its first byte (or of the
    # connection's opening): slow clients are closed.
    header_timeout_seconds: float = Field(default=10, gt=0)
    # An idle connection is closed after this. Unset: 75 s in reverse-proxy mode (the
    # public listener); 3630 s in check mode, longer than the idle timeouts of Envoy's
    # (1 h) and nginx's (60 s) connection pools, so a pooled connection is never cut
    # as it is reused.
    keepalive_timeout_seconds: float | None = Field(default=None, gt=0)
    # Connections over this are answered 503 and closed at once.
    max_connections: int = Field(default=1024, ge=1)

    # Operator.
    allowed_claim_names: list[str] = Field(default_factory=list)
    drift_interval_seconds: float = Field(default=300, ge=0.1)
    # Retries of a reconcile that may succeed later (key not created yet, database down):
    # exponential from the first delay, capped.
    reconcile_backoff_seconds: float = Field(default=5, gt=0)
    reconcile_backoff_max_seconds: float = Field(default=300, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _alias_loses(cls, data: Any) -> Any:
        # The deprecated name is accepted, but when both are given the new one wins.
        if isinstance(data, dict) and "claim_field" in data and "jwt_client_id_field" in data:
            data = {k: v for k, v in data.items() if k != "jwt_client_id_field"}
        return data

    @field_validator("claim_field")
    @classmethod
    def _valid_path(cls, value: str) -> str:
        split_path(value)
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return value or None

    @model_validator(mode="after")
    def _head_holds_authorization(self) -> Settings:
        if self.max_request_head_bytes <= self.max_authorization_bytes:
            raise ValueError("max_request_head_bytes must exceed max_authorization_bytes")
        return self

    @model_validator(mode="after")
    def _engine_needs_upstream(self) -> Settings:
        if self.proxy_engine == "nginx" and not self.upstream:
            raise ValueError("proxy_engine: nginx is reverse-proxy mode's: set upstream too")
        return self

    @model_validator(mode="after")
    def _unique_issuers(self) -> Settings:
        names = [i.issuer for i in self.issuers]
        if len(names) != len(set(names)):
            raise ValueError("issuers: each issuer may appear only once")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags, then environment, then the YAML file given to ``load_settings``."""
        path = _config_file.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)


def format_validation_error(exc: ValidationError) -> str:
    """Render a pydantic error as one line per field, naming each field."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"{loc}: {err['msg']}")
    return "; ".join(lines)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Load settings from ``config_file`` and the environment; raise ConfigError on any problem."""
    path = Path(config_file) if config_file else None
    if path is not None and not path.is_file():
        raise ConfigError(f"configuration file {path} does not exist")
    token = _config_file.set(path)
    try:
        clean = {k: v for k, v in overrides.items() if v is not None}
        return Settings(**clean)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid configuration{where}: {format_validation_error(exc)}") from exc
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc}") from exc
    finally:
        _config_file.reset(token)
