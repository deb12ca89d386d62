"""The command line sits on top of the edges: it loads only what the invoked command needs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
PACKAGE = REPO / "operator" / "jwtkeymap"

# Runs the real root group in a fresh interpreter, then reports which heavy modules it loaded.
PROBE = """\
import sys
from jwtkeymap.cli.main import cli
try:
    cli.main(sys.argv[1:], prog_name="jwtkeymap")
except SystemExit:
    pass
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("kopf", "kubernetes_asyncio"))
print("LOADED:" + ",".join(loaded), file=sys.stderr)
"""

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    metadata: {labels: {jwtkeymap.io/inject: "true"}}
    spec: {containers: [{name: app, image: web:1, ports: [{containerPort: 4000}]}]}
"""


def loaded_by(*args: str, stdin: str = "") -> tuple[list[str], str]:
    """The kopf/Kubernetes modules ``jwtkeymap ARGS`` imported, and what it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JWTKEYMAP_")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    *printed, line = out.stderr.strip().splitlines()
    assert line.startswith("LOADED:"), out.stderr
    return [m for m in line.removeprefix("LOADED:").split(",") if m], out.stdout + "\n".join(
        printed
    )


@pytest.mark.parametrize(
    ("args", "stdin", "ran"),
    [
        (("--help",), "", "Commands:"),
        (("migrate",), "", "no database configured"),
        (("inject", "-f", "-"), DEPLOYMENT, "deployment/web: injected"),
    ],
    ids=["help", "migrate", "inject"],
)
def test_commands_that_need_no_cluster_never_import_kopf(
    args: tuple[str, ...], stdin: str, ran: str
) -> None:
    loaded, printed = loaded_by(*args, stdin=stdin)
    assert ran in printed  # the command really ran
    assert loaded == []


def test_the_probe_sees_kopf_when_a_command_loads_it() -> None:
    # `operator` imports kopf before it checks its namespaces: the probe must notice.
    loaded, printed = loaded_by("--database-url", "postgresql://u@127.0.0.1:1/db", "operator")
    assert "give --namespace" in printed
    assert "kopf" in loaded


def test_the_edges_never_import_the_command_line() -> None:
    for edge in ("operator", "resolver", "core"):
        for path in (PACKAGE / edge).rglob("*.py"):
            text = path.read_text()
            assert "jwtkeymap.cli" not in text, path
            assert "from jwtkeymap import cli" not in text, path
