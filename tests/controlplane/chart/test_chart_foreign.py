"""The chart's objects of other projects' kinds, checked by those projects' own CRDs.

Prometheus Operator's ServiceMonitor and PodMonitor and cert-manager's Certificate and
Issuer have no schema in kubernetes-validate, so ``test_chart_render`` only reads them. Here
the pinned CRDs of those projects (``hack/envtest/install.sh`` takes them from their Go
modules) are installed into the real apiserver, and every such object the chart renders is
applied to it as a server-side dry run with strict field validation: a misspelled field, a
wrong type or a value outside the CRD's pattern is refused as it would be in a cluster.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from charttools import CHART, CI_VALUES, Render
from harness import Binaries, ControlPlane

pytestmark = pytest.mark.controlplane

FOREIGN = {"ServiceMonitor", "PodMonitor", "Certificate", "Issuer"}
# Renders all four (cert-manager's CA issuer and certificates, both monitors).
EVERY_KIND = CHART / "ci" / "cert-manager-values.yaml"


@pytest.fixture(scope="module")
def foreign_crds(controlplane: ControlPlane, binaries: Binaries) -> set[str]:
    """Install the foreign CRDs (server-side: cert-manager's are too large for an annotation);
    the kinds they serve."""
    files = sorted(binaries.foreign_crds.glob("*.yaml"))
    served = set()
    for path in files:
        controlplane.kubectl("apply", "--server-side", "-f", str(path), check=True, timeout=120)
        crd = yaml.safe_load(path.read_text())
        controlplane.kubectl(
            "wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}", check=True
        )
        served.add(crd["spec"]["names"]["kind"])
    assert served == FOREIGN, f"the CRD files in {binaries.foreign_crds} serve {served}"
    return served


def dry_run(
    plane: ControlPlane, namespace: str, doc: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    """Apply ``doc`` to the apiserver without keeping it: every admission and schema check."""
    return plane.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", "-",
        input=json.dumps(doc),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("values", "kinds"),
    [
        (EVERY_KIND, FOREIGN),
        # An existing ClusterIssuer: the webhook's Certificate alone.
        (CHART / "ci" / "minimal-values.yaml", {"Certificate"}),
        # The defaults: none (the chart's own certificate, no monitors).
        (CHART / "ci" / "default-values.yaml", set()),
    ],
    ids=lambda v: v.name if isinstance(v, Path) else "",
)
def test_every_foreign_object_is_accepted_by_its_projects_crd(
    controlplane: ControlPlane,
    foreign_crds: set[str],
    render: Render,
    namespace: str,
    values: Path,
    kinds: set[str],
) -> None:
    docs = [d for d in render(values, namespace=namespace) if d["kind"] in foreign_crds]
    assert {d["kind"] for d in docs} == kinds
    for doc in docs:
        done = dry_run(controlplane, namespace, doc)
        assert done.returncode == 0, f"{doc['kind']} {doc['metadata']['name']}: {done.stderr}"
        assert "(server dry run)" in done.stdout


def test_the_values_above_are_every_ci_values_file() -> None:
    named = {EVERY_KIND.name, "minimal-values.yaml", "default-values.yaml"}
    assert {p.name for p in CI_VALUES} == named


@pytest.mark.parametrize(
    ("kind", "mistake", "refusal"),
    [
        # A field the CRD does not have (podMetricsEndpoints, misspelled).
        (
            "PodMonitor",
            {"podMetricsEndpoint": [{"port": "x"}]},
            'unknown field "spec.podMetricsEndpoint"',
        ),
        # A scrape interval outside Prometheus' duration pattern.
        (
            "ServiceMonitor",
            {"endpoints": [{"port": "metrics", "interval": "30 seconds"}]},
            "spec.endpoints[0].interval",
        ),
        # A field of the wrong type.
        ("Certificate", {"isCA": "yes"}, "spec.isCA"),
    ],
)
def test_a_mistake_in_a_foreign_object_is_refused(
    controlplane: ControlPlane,
    foreign_crds: set[str],
    render: Render,
    namespace: str,
    kind: str,
    mistake: dict[str, Any],
    refusal: str,
) -> None:
    # The check above is only worth something if the apiserver refuses a real mistake.
    doc = next(d for d in render(EVERY_KIND, namespace=namespace) if d["kind"] == kind)
    assert dry_run(controlplane, namespace, doc).returncode == 0
    doc["spec"] |= mistake
    done = dry_run(controlplane, namespace, doc)
    assert done.returncode != 0
    assert refusal in done.stderr, done.stderr
