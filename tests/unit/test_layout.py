"""The package's layout: three layers along the data flow, no import cycle, light packages.

* ``core`` (claims, tokens, policy, cache, database, invalidation, reconcile) knows
  nothing of Kubernetes, HTTP serving, the commands or the demo.
* ``operator`` (kopf handlers, webhooks, sidecar injection) and ``resolver`` (the
  sidecar's HTTP service) use ``core`` and never each other, nor the commands.
* ``cli`` and ``demo`` sit on top and may use everything.
* The source root ``operator/`` never shadows the standard library's ``operator``.

The import graph's rules are stricter than Python's own: ``from jwtkeymap.x import
name`` counts as importing the package ``jwtkeymap.x`` (its ``__init__``) and,
when ``name`` is a submodule, that submodule too; imports inside functions and
under ``TYPE_CHECKING`` count as well. A cycle hidden behind a lazy import is
still a cycle a reader has to untangle.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / "operator"
PACKAGE = ROOT / "jwtkeymap"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    assert len(found) > 40, "the package was not found"
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            yield target
            for alias in node.names:
                if f"{target}.{alias.name}" in known:
                    yield f"{target}.{alias.name}"


def graph() -> dict[str, set[str]]:
    known = modules()
    return {
        name: {t for t in imported(name, path, known) if t in known and t != name}
        for name, path in known.items()
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


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


# What each layer may never import (prefix match on module names).
FORBIDDEN = {
    "jwtkeymap.core": (
        "jwtkeymap.operator",
        "jwtkeymap.resolver",
        "jwtkeymap.cli",
        "jwtkeymap.demo",
        "kopf",
        "kubernetes_asyncio",
        "aiohttp.web",
    ),
    "jwtkeymap.operator": ("jwtkeymap.resolver", "jwtkeymap.cli", "jwtkeymap.demo"),
    "jwtkeymap.resolver": (
        "jwtkeymap.operator",
        "jwtkeymap.cli",
        "jwtkeymap.demo",
        "kopf",
        "kubernetes_asyncio",
    ),
}


def every_import(name: str, path: Path) -> set[str]:
    """Every module ``path`` imports, inside the package or not (``aiohttp.web`` for
    ``from aiohttp import web``)."""
    found = set(imported(name, path, {}))
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_each_layer_imports_only_what_it_may() -> None:
    checked = dict.fromkeys(FORBIDDEN, 0)
    for name, path in modules().items():
        for layer, forbidden in FORBIDDEN.items():
            if name == layer or name.startswith(layer + "."):
                checked[layer] += 1
                bad = sorted(t for t in every_import(name, path) if t.startswith(forbidden))
                assert not bad, f"{name} imports {bad}"
    # Each layer has modules: a moved folder cannot make this test pass vacuously.
    assert all(count >= 5 for count in checked.values()), checked


def test_the_layer_check_sees_a_forbidden_import() -> None:
    path = PACKAGE / "resolver" / "handlers.py"
    assert "aiohttp.web" in every_import("jwtkeymap.resolver.handlers", path)


def test_the_graph_sees_imports_of_every_kind() -> None:
    edges = graph()
    # A plain import, a from-import of a name, and one of a submodule.
    assert "jwtkeymap.core.claims" in edges["jwtkeymap.core.policy"]
    assert "jwtkeymap.core.db.store" in edges["jwtkeymap.core.reconcile.writer"]
    assert {"jwtkeymap.core.db", "jwtkeymap.core.db.schema"} <= edges["jwtkeymap.core.db.store"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_package() -> None:
    assert cycles(graph()) == []


def test_package_inits_import_nothing() -> None:
    inits = [p for p in modules().values() if p.name == "__init__.py"]
    assert len(inits) >= 6
    for path in inits:
        tree = ast.parse(path.read_text())
        imports = [
            n
            for n in ast.walk(tree)
            if isinstance(n, (ast.Import, ast.ImportFrom)) and n.module != "__future__"
        ]
        assert imports == [], f"{path} imports at package level"


def test_each_module_of_core_loads_alone_without_kopf_or_servers() -> None:
    code = (
        "import importlib, sys\n"
        "heavy = ('kopf', 'kubernetes_asyncio', 'aiohttp.web', 'jwtkeymap.operator', 'jwtkeymap.resolver')\n"
        "for name in sys.argv[1:]:\n"
        "    before = set(sys.modules)\n"
        "    importlib.import_module(name)\n"
        "    bad = sorted(m for m in set(sys.modules) - before if m.startswith(heavy))\n"
        "    assert not bad, (name, bad)\n"
        "print('ok')\n"
    )
    names = sorted(n for n in modules() if n.startswith("jwtkeymap.core"))
    out = subprocess.run(
        [sys.executable, "-c", code, *names], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
