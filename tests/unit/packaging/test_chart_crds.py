"""The chart's CRDs are byte-for-byte copies of crds/, made by `make chart-crds`.

crds/ at the repository root is the one source (kubectl users apply it directly); a Helm
chart cannot read files outside its folder, so the chart carries copies. These tests
read the copy commands from the Makefile, so a new CRD file, a copy nobody refreshed or
a stale file left in the chart all fail with the command that fixes them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "jwtkeymap"
# The chart's two CRD folders: files/crds/ is rendered by templates/crds.yaml (so
# `helm upgrade` upgrades it), crds/ is installed once by Helm (kopf's peering CRDs).
CHART_CRD_DIRS = (CHART / "files" / "crds", CHART / "crds")
FIX = "run `make chart-crds` (crds/ is the source; never edit the chart's copy)"


def copies() -> dict[Path, Path]:
    """Source -> copy, as the Makefile's chart-crds recipe copies them."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^chart-crds:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe is not None, "the Makefile has no chart-crds target"
    pairs: dict[Path, Path] = {}
    for line in recipe.group(1).splitlines():
        command = re.fullmatch(r"\tcp (crds/\S+) (charts/\S+/)", line)
        assert command is not None, f"chart-crds should only copy files: {line.strip()!r}"
        source = ROOT / command.group(1)
        pairs[source] = ROOT / command.group(2) / source.name
    return pairs


COPIES = copies()


def test_every_crd_is_copied_into_the_chart() -> None:
    assert set(COPIES) == set((ROOT / "crds").glob("*.yaml")), "add the new file to chart-crds"


def test_the_chart_holds_no_crd_that_is_not_a_copy() -> None:
    in_chart = {path for folder in CHART_CRD_DIRS for path in folder.iterdir()}
    strays = sorted(str(path.relative_to(ROOT)) for path in in_chart - set(COPIES.values()))
    assert not strays, f"not copies of crds/: {strays}; delete them, or add a source to chart-crds"


@pytest.mark.parametrize("source", sorted(COPIES), ids=lambda p: p.name)
def test_chart_crds_are_copies_of_the_repository_crds(source: Path) -> None:
    copy = COPIES[source]
    assert copy.exists(), f"{copy.relative_to(ROOT)} is missing: {FIX}"
    assert copy.read_bytes() == source.read_bytes(), f"{copy.relative_to(ROOT)} differs: {FIX}"
