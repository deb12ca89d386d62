"""examples/litellm: the resolver config loads, and LiteLLM's config wires the hook as tested."""

from __future__ import annotations

from pathlib import Path

import yaml

from jwtkeymap.core.settings import load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "litellm"


def test_resolver_config_is_a_sidecar_with_assertions() -> None:
    settings = load_settings(EXAMPLE / "resolver.yaml")
    assert settings.assertion.enabled and settings.assertion.signing_key_file is None
    assert settings.upstream == "http://127.0.0.1:4000"


def test_litellm_config_sets_every_hook_setting() -> None:
    config = yaml.safe_load((EXAMPLE / "config.yaml").read_text())
    general = config["general_settings"]
    assert general["custom_auth"] == "jwtkeymap.litellm_hook.user_api_key_auth"
    assert general["custom_auth_settings"] == {"mode": "on"}
    assert general["custom_auth_run_common_checks"] is True
    assert config["litellm_settings"]["enable_post_custom_auth_checks"] is True


def test_deployment_keeps_litellm_on_loopback() -> None:
    deployment = yaml.safe_load((EXAMPLE / "deployment.yaml").read_text())
    litellm, resolver = deployment["spec"]["template"]["spec"]["containers"]
    assert litellm["args"][litellm["args"].index("--host") + 1] == "127.0.0.1"
    assert "ports" not in litellm and resolver["ports"][0]["containerPort"] == 8080
