"""The wheel holds the product only, and the demo works from it, away from any checkout.

The wheel is built from the files the Dockerfile copies (pyproject.toml, README.md,
operator/), installed into a fresh virtualenv that borrows this one's dependencies, and
run from an empty directory with no PYTHONPATH, so nothing can come from the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What may sit directly under jwtkeymap/ in the wheel: the package's own modules and its
# layers. A new top-level folder (a `testing/`, say) has to be added here on purpose.
TOP_LEVEL = {"__init__.py", "__main__.py", "py.typed", "cli", "core", "demo"}
TOP_LEVEL |= {"operator", "resolver", "litellm_hook.py"}
DEMO_DATA = {"jwtkeymap/demo/data/mappings/team-alpha.yaml"}
DEMO_DATA |= {"jwtkeymap/demo/data/mappings/team-beta.yaml"}

# The build-system requirement in pyproject.toml.
BUILD_SETUPTOOLS = 77

pytestmark = pytest.mark.slow


def _run(*argv: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of what the Dockerfile copies."""
    src = tmp_path_factory.mktemp("src")
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "README.md", src)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "operator", src / "operator", ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    # Offline with the dev extra's setuptools; a venv made before it was added fetches one.
    offline = int(version("setuptools").split(".")[0]) >= BUILD_SETUPTOOLS
    isolation = ["--no-build-isolation", "--no-index"] if offline else []
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", out, src,
         cwd=src)  # fmt: skip
    (built,) = out.glob("jwtkeymap-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtualenv with the wheel installed; its dependencies come from this one."""
    venv = tmp_path_factory.mktemp("venv")
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=venv)
    purelib = _run(venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=venv).stdout.strip()  # fmt: skip
    # A path line only: the .pth files in there (this checkout's editable install) stay unread.
    (Path(purelib) / "borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel,
         cwd=venv)  # fmt: skip
    yield venv


def test_wheel_holds_the_product_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    package = [n for n in names if n.startswith("jwtkeymap/")]
    assert set(names) - set(package) == {n for n in names if ".dist-info/" in n}
    assert not [n for n in names if n.startswith(("jwtkeymap/testing/", "tests/", "support/"))]
    assert {n.split("/")[1] for n in package} <= TOP_LEVEL, sorted(package)
    assert "jwtkeymap/py.typed" in package
    assert set(package) >= DEMO_DATA


def test_demo_runs_from_the_installed_wheel(installed: Path, tmp_path: Path) -> None:
    where = _run(installed / "bin" / "python", "-c", "import jwtkeymap; print(jwtkeymap.__file__)",
                 cwd=tmp_path).stdout  # fmt: skip
    assert where.startswith(str(installed)), where
    help_text = _run(installed / "bin" / "jwtkeymap", "demo", "--help", cwd=tmp_path).stdout
    assert "throwaway PostgreSQL" in help_text
    shown = _run(installed / "bin" / "jwtkeymap", "demo", cwd=tmp_path).stdout
    # Part 2 reads the manifests shipped in the wheel: applied, then applied again.
    assert "== 2. The manifests in examples/mappings, applied without a cluster" in shown
    assert "1 adopted, 3 created" in shown
    assert "4 unchanged" in shown
    assert "alice after an SQL UPDATE" in shown
