"""Settings: YAML + environment, aliases, and clear errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from jwtkeymap.core.errors import ConfigError
from jwtkeymap.core.settings import Behavior, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_are_safe() -> None:
    s = load_settings(None)
    assert s.unregistered_client_behavior is Behavior.FALLBACK_TEAM_MAPPING
    assert (s.positive_ttl_seconds, s.negative_ttl_seconds) == (300, 30)
    assert s.database_url is None and s.issuers == []
    assert s.stale_while_disconnected_seconds == 0


def test_the_documented_yaml_shape_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
database_url: postgresql://user@127.0.0.1:5432/litellm
claim_field: email
unregistered_client_behavior: reject
positive_ttl_seconds: 300
negative_ttl_seconds: 30
cache_max_entries: 100000
casefold_claim: false
log_level: info
issuers:
  - issuer: https://idp.example.com
    jwks_url: https://idp.example.com/.well-known/jwks.json
    audience: litellm
    algorithms: [RS256, ES256]
    leeway_seconds: 30
admin:
  claim: scope
  value: litellm_proxy_admin
auto_register:
  team_id_claim: team
  team_id_default: null
  user_id_claim: sub
  org_id_claim: null
  key_defaults: {models: [], max_budget: null, budget_duration: null, tpm_limit: null,
                 rpm_limit: null, key_alias: "jwt-{claim_value}", metadata: {}}
""",
    )
    s = load_settings(path)
    assert s.claim_field == "email"
    assert s.unregistered_client_behavior is Behavior.REJECT
    assert s.issuers[0].algorithms == ["RS256", "ES256"]
    assert s.admin is not None and s.admin.value == "litellm_proxy_admin"
    assert s.auto_register.team_id_claim == "team"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "claim_field: email\nnegative_ttl_seconds: 30\n")
    monkeypatch.setenv("JWTKEYMAP_NEGATIVE_TTL_SECONDS", "5")
    monkeypatch.setenv("JWTKEYMAP_DATABASE_URL", "postgresql://x@127.0.0.1/db")
    s = load_settings(path)
    assert s.negative_ttl_seconds == 5
    assert s.claim_field == "email"
    assert s.database_url == "postgresql://x@127.0.0.1/db"


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWTKEYMAP_DATABASE_URL", "postgresql://env@127.0.0.1/db")
    s = load_settings(None, database_url="postgresql://flag@127.0.0.1/db")
    assert s.database_url == "postgresql://flag@127.0.0.1/db"


def test_old_alias_is_accepted(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "jwt_client_id_field: client_id\n")).claim_field == (
        "client_id"
    )


def test_new_name_wins_over_the_alias(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "jwt_client_id_field: client_id\nclaim_field: email\n"))
    assert s.claim_field == "email"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("bogus_field: 1\n", "bogus_field"),
        ("positive_ttl_seconds: soon\n", "positive_ttl_seconds"),
        ("unregistered_client_behavior: allow_all\n", "unregistered_client_behavior"),
        ("issuers: [{issuer: a, public_keys: [x], algorithms: [none]}]\n", "algorithms"),
        ("issuers: [{issuer: a, public_keys: [x], algorithms: [HS256]}]\n", "HS256"),
        ("issuers: [{issuer: a}]\n", "exactly one of jwks_url or public_keys"),
        ("auto_register: {key_defaults: {key_alias: '{secret}'}}\n", "key_alias"),
        ("database_url: mysql://x\n", "database_url"),
        ("admin: {claim: scope}\n", "admin.value"),
        ("claim_field: 'a..b'\n", "claim_field"),
    ],
)
def test_bad_settings_name_the_field(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert fragment in str(info.value)


def test_unknown_environment_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWTKEYMAP_POSITIVE_TTL_SECONDS", "-1")
    with pytest.raises(ConfigError, match="positive_ttl_seconds"):
        load_settings(None)


def test_malformed_yaml_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_settings(write(tmp_path, "issuers: [\n"))


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


def test_database_url_is_not_in_the_repr() -> None:
    s = load_settings(None, database_url="postgresql://u:hunter2@127.0.0.1/db")
    assert "hunter2" not in repr(s)


def test_admin_match_rule_is_read_and_checked() -> None:
    from jwtkeymap.core.claims import MatchRule

    rule = load_settings(None, admin={"claim": "role", "value": "admin", "match": "word"}).admin
    assert rule is not None and rule.match is MatchRule.WORD
    with pytest.raises(ConfigError, match="match"):
        load_settings(None, admin={"claim": "role", "value": "admin", "match": "contains"})
