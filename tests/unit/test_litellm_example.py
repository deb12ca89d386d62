"""examples/litellm: the resolver config loads, and LiteLLM's config wires the hook as tested."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from jwtkeymap.cli.main import cli
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


def test_injected_deployment_fronts_loopback_litellm_with_a_signing_sidecar() -> None:
    # What the webhook does to the example, rendered offline by the same plan.
    result = CliRunner().invoke(cli, ["inject", "-f", str(EXAMPLE / "deployment.yaml")])
    assert result.exit_code == 0, result.output
    deployment = yaml.safe_load(result.stdout)
    spec = deployment["spec"]["template"]["spec"]
    [litellm] = spec["containers"]
    [resolver] = spec["initContainers"]
    assert litellm["args"][litellm["args"].index("--host") + 1] == "127.0.0.1"
    assert resolver["args"][-2:] == ["--upstream", "http://127.0.0.1:4000"]
    env = {e["name"]: e.get("value") for e in resolver["env"]}
    assert env["JWTKEYMAP_ASSERTION__ENABLED"] == "true"
    assert env["JWTKEYMAP_PROXY_ENGINE"] == "nginx"
    # The hook reads the sidecar's JWKS on the sidecar's own port, over loopback.
    [port] = [p["containerPort"] for p in resolver["ports"] if p["name"] == "jwtkeymap"]
    hook_jwks = {e["name"]: e.get("value") for e in litellm["env"]}["JWTKEYMAP_HOOK_JWKS"]
    assert hook_jwks == f"http://127.0.0.1:{port}/.well-known/jwks.json"
