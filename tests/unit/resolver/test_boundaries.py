"""The resolver is an edge over core: it never loads the operator or Kubernetes clients.

That core loads no HTTP server, operator or resolver is in tests/unit/test_layout.py.
"""

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
