"""Fixtures for tests that need a real kube-apiserver (see harness.py).

Missing binaries fail the run: this tier is part of the default test run. Set
JWTKEYMAP_SKIP_CONTROLPLANE=1 to skip it knowingly.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import kopf
import pytest

# harness.py sits next to this file; with --import-mode=importlib it is not on sys.path by itself.
sys.path.insert(0, str(Path(__file__).parent))

from harness import TESTDATA, Binaries, BinariesMissing, ControlPlane, find_binaries, poll

SKIP_ENV = "JWTKEYMAP_SKIP_CONTROLPLANE"

_timings: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker that tags this tier."""
    config.addinivalue_line("markers", "controlplane: needs the real kube-apiserver + etcd")


@pytest.fixture(scope="session")
def binaries() -> Binaries:
    """The control-plane binaries; fails (never skips silently) when they are not installed."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"!!! {SKIP_ENV}=1: the real-apiserver tests are SKIPPED on purpose !!!")
    try:
        return find_binaries()
    except BinariesMissing as err:
        problem = str(err)
    # Outside the except block, so the report shows the reason once, without a chained traceback.
    pytest.fail(
        f"control-plane binaries are missing"
        f" (set {SKIP_ENV}=1 to skip this tier knowingly):\n{problem}",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def controlplane(binaries: Binaries) -> Iterator[ControlPlane]:
    """A started etcd + kube-apiserver shared by the whole session."""
    with ControlPlane(binaries) as plane:
        _timings["summary"] = (
            f"kube-apiserver {binaries.k8s_version} + etcd at {plane.server}:"
            f" start-to-ready {plane.startup_seconds:.2f} s (target <= 15 s)"
        )
        yield plane


@pytest.fixture(scope="session")
def widget_crd(controlplane: ControlPlane) -> str:
    """The test CRD ``widgets.harness.jwtkeymap.io``, installed and served."""
    name = "widgets.harness.jwtkeymap.io"
    controlplane.kubectl("apply", "-f", str(TESTDATA / "widgets-crd.yaml"), check=True)
    controlplane.kubectl(
        "wait", "--for=condition=Established", f"crd/{name}", "--timeout=30s", check=True
    )
    # Established comes slightly before discovery lists the new resource.
    poll(
        lambda: controlplane.kubectl("get", "widgets.harness.jwtkeymap.io", "-A").returncode == 0,
        message="widgets to be discoverable",
    )
    return name


@pytest.fixture
def namespace(controlplane: ControlPlane) -> str:
    """A fresh namespace per test (never deleted: without controllers it would stay Terminating)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    controlplane.kubectl("create", "namespace", name, check=True)
    return name


@pytest.fixture
def kopf_registry(controlplane: ControlPlane) -> Iterator[kopf.OperatorRegistry]:
    """A fresh kopf registry per test, logged in to the control plane with the admin token."""
    previous = kopf.get_default_registry()
    registry = kopf.OperatorRegistry()
    kopf.set_default_registry(registry)

    # An explicit login handler, not the kubeconfig: kubernetes_asyncio reads $KUBECONFIG at import.
    @kopf.on.login(registry=registry)
    def login(**_: object) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(
            server=controlplane.server, ca_path=str(controlplane.ca_file), token=controlplane.token
        )

    yield registry
    kopf.set_default_registry(previous)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Report how long the control plane took to become ready, or shout that it was skipped."""
    if os.environ.get(SKIP_ENV) == "1":
        terminalreporter.write_sep(
            "!", f"{SKIP_ENV}=1: real kube-apiserver tests were SKIPPED", red=True
        )
    if "summary" in _timings:
        terminalreporter.write_sep("-", "control plane")
        terminalreporter.write_line(_timings["summary"])
