"""The resolver is an edge over core: it never loads the operator or Kubernetes clients."""

from __future__ import annotations

import subprocess
import sys


def test_resolver_imports_only_core():
    code = (
        "import sys, jwtkeymap.cli.resolver, jwtkeymap.resolver.proxy, jwtkeymap.resolver.server\n"
        "bad = sorted(m for m in sys.modules if m.startswith("
        "('jwtkeymap.operator', 'kopf', 'kubernetes')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_core_serves_no_http():
    code = (
        "import importlib, pkgutil, sys, jwtkeymap.core as core\n"
        "names = [m.name for m in pkgutil.walk_packages(core.__path__, 'jwtkeymap.core.')]\n"
        "assert len(names) > 20, names\n"
        "for name in names: importlib.import_module(name)\n"
        "print(','.join(sorted(m for m in sys.modules if m.startswith("
        "('aiohttp.web', 'jwtkeymap.resolver', 'jwtkeymap.operator', 'kopf')))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
