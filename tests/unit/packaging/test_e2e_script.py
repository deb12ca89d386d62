"""e2e/run.sh cannot run here (no Docker): check it is shellcheck-clean and dry-runs every step."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "e2e" / "run.sh"
TOOLS = ("docker", "kind", "kubectl", "helm", "curl")


def test_shellcheck_is_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    done = subprocess.run(
        [shellcheck, "--severity=style", str(SCRIPT)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout


@pytest.fixture
def trap_path(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A PATH whose docker/kind/kubectl/helm/curl only record that they were called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for tool in TOOLS:
        fake = bin_dir / tool
        fake.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\n')
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return env, calls


def test_dry_run_prints_every_step_and_runs_nothing(trap_path: tuple[dict[str, str], Path]) -> None:
    env, calls = trap_path
    # One stream: commands whose output is captured are printed on stderr, in order.
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout
    assert not calls.exists(), f"dry run executed: {calls.read_text()}"
    out = done.stdout
    expected = [
        "+ kind create cluster --name jwtkeymap-e2e",
        "+ docker build -t jwtkeymap:e2e",
        "+ kind load docker-image jwtkeymap:e2e --name jwtkeymap-e2e",
        "image: postgres:16-alpine",
        "jkm-migrate -- migrate",
        "jkm-key -- key create --team-id e2e-team",
        "+ helm install jwtkeymap",
        "kind: JWTKeyMapping",
        "+ kubectl -n jwtkeymap-e2e-app wait jwtkeymapping/alice --for=condition=Ready",
        'jwtkeymap.io/inject: "true"',
        "# expect 200",
        "# expect 401",
        "# expect 403",
        "dry run: nothing was executed",
    ]
    positions = [out.find(line) for line in expected]
    assert -1 not in positions, [
        line for line, at in zip(expected, positions, strict=True) if at < 0
    ]
    assert positions == sorted(positions), "steps are printed out of order"
    # The database password and the virtual key are never printed, only redacted.
    assert "postgresql://postgres:<redacted>@" in out
    assert "--from-literal=apiKey=<redacted>" in out
    assert 'POSTGRES_PASSWORD, value: "<redacted>"' in out
    assert "<password>" not in out
    assert "sk-<plaintext>" not in out


def test_arguments(trap_path: tuple[dict[str, str], Path]) -> None:
    env, calls = trap_path
    shown = subprocess.run(
        ["bash", str(SCRIPT), "--help"], capture_output=True, text=True, env=env, check=False
    )
    assert shown.returncode == 0
    assert "--dry-run" in shown.stdout
    wrong = subprocess.run(
        ["bash", str(SCRIPT), "--fast"], capture_output=True, text=True, env=env, check=False
    )
    assert wrong.returncode == 2
    assert "unknown argument: --fast" in wrong.stderr
    assert not calls.exists()


def test_preflight_names_what_is_missing(tmp_path: Path) -> None:
    # A real run without the tools stops before doing anything, saying what is missing.
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    if shutil.which("docker", path=env["PATH"]):
        pytest.skip("docker is installed here")
    done = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 1
    assert "missing: docker" in done.stderr


def test_tokens_helper_signs_for_the_configured_issuer(tmp_path: Path) -> None:
    import sys

    import jwt

    helper = ROOT / "e2e" / "tokens.py"
    subprocess.run([sys.executable, str(helper), "keygen", str(tmp_path)], check=True)
    token = subprocess.run(
        [sys.executable, str(helper), "sign", str(tmp_path), "alice@example.com"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    public = (tmp_path / "public.pem").read_text()
    claims = jwt.decode(token, public, algorithms=["RS256"], audience="litellm")
    assert claims["email"] == "alice@example.com"
    assert claims["iss"] in SCRIPT.read_text()
    forged = subprocess.run(
        [sys.executable, str(helper), "sign", str(tmp_path), "alice@example.com", "--bad-signature"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(forged, public, algorithms=["RS256"], audience="litellm")
