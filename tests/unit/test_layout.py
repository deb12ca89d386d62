"""The source root `operator/` must never shadow the standard library's `operator`."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_operator_is_the_standard_library_module() -> None:
    spec = importlib.util.find_spec("operator")
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).parent == Path(sysconfig.get_paths()["stdlib"])


def test_operator_is_stdlib_even_from_the_repository_root() -> None:
    # Python puts the working directory first on sys.path for `-c`; the source root
    # has no __init__.py, so it can at most be a namespace portion, which loses.
    code = "import operator, jwtkeymap; print(operator.__file__); print(jwtkeymap.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    op_file, pkg_file = out.stdout.split()
    assert not op_file.startswith(str(REPO))
    assert pkg_file.startswith(str(REPO / "operator" / "jwtkeymap"))
    assert not (REPO / "operator" / "__init__.py").exists()


def test_core_has_no_kubernetes_or_http_server_imports() -> None:
    modules = (
        "kopf",
        "kubernetes_asyncio",
        "aiohttp.web",
        "jwtkeymap.operator",
        "jwtkeymap.resolver",
    )
    for path in (REPO / "operator" / "jwtkeymap" / "core").glob("*.py"):
        text = path.read_text()
        for name in modules:
            assert f"import {name}" not in text and f"from {name} " not in text, (path, name)
        assert "from aiohttp import web" not in text, path


def test_edges_never_import_each_other() -> None:
    root = REPO / "operator" / "jwtkeymap"
    for path in (root / "operator").rglob("*.py"):
        assert "jwtkeymap.resolver" not in path.read_text(), path
    for path in (root / "resolver").rglob("*.py"):
        assert "jwtkeymap.operator" not in path.read_text(), path
