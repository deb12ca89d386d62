"""The operator edge's commands: usage errors before anything runs."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from jwtkeymap.cli.main import cli


def test_operator_needs_a_database_and_namespaces() -> None:
    result = CliRunner().invoke(cli, ["operator", "-n", "x"], env={"JWTKEYMAP_DATABASE_URL": ""})
    assert result.exit_code == 2
    assert "no database configured" in result.output
    result = CliRunner().invoke(cli, ["--database-url", "postgresql://u@h/db", "operator"])
    assert result.exit_code == 2
    assert "give --namespace NS (repeatable) or --all-namespaces" in result.output


def test_apply_requires_files_and_a_database(tmp_path: Path) -> None:
    missing = CliRunner().invoke(cli, ["apply"])
    assert missing.exit_code == 2 and "Missing option '-f'" in missing.output
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "apiVersion: jwtkeymap.io/v1alpha1\nkind: JWTKeyMapping\nmetadata: {name: a}\n"
        "spec: {issuer: '*', claim: {name: sub, value: x}, key: {hash: '" + "1" * 64 + "'}}\n"
    )
    result = CliRunner().invoke(
        cli, ["diff", "-f", str(manifest)], env={"JWTKEYMAP_DATABASE_URL": ""}
    )
    assert result.exit_code == 2
    assert "no database configured" in result.output
