"""Fixtures for the Helm chart tests: render the chart with the real helm binary."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import Binaries

# charttools.py sits next to this file (not on sys.path under --import-mode=importlib).
sys.path.insert(0, str(Path(__file__).parent))

from charttools import CHART, Render, set_args


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """helm's home directories in a temp dir, so tests never touch the developer's."""
    home = tmp_path_factory.mktemp("helm")
    return {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


@pytest.fixture(scope="session")
def run_helm(
    binaries: Binaries, helm_env: dict[str, str]
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run helm offline (template, lint) and capture its output."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binaries.helm), *args],
            capture_output=True,
            text=True,
            env=helm_env,
            timeout=120,
            check=False,
        )

    return run


@pytest.fixture(scope="session")
def render(run_helm: Callable[..., subprocess.CompletedProcess[str]]) -> Render:
    """`helm template` the chart into a list of objects; fail with helm's message on error."""

    def template(
        *values: Path, sets: dict[str, str] | None = None, namespace: str = "jwtkeymap-system"
    ) -> list[dict[str, Any]]:
        done = run_helm("template", "r", str(CHART), "-n", namespace, *set_args(sets, values))
        assert done.returncode == 0, done.stderr
        return [doc for doc in yaml.safe_load_all(done.stdout) if doc]

    return template
