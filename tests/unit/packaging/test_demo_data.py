"""The demo ships the example manifests as package data: they must stay the examples' copy."""

from __future__ import annotations

from pathlib import Path

from jwtkeymap.demo.manifests import manifests

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "mappings"


def test_shipped_manifests_are_the_examples() -> None:
    examples = {p.name: p.read_bytes() for p in EXAMPLES.glob("*.yaml")}
    with manifests() as shipped_dir:
        shipped = {p.name: p.read_bytes() for p in shipped_dir.glob("*.yaml")}
    assert examples, EXAMPLES
    fix = "cp examples/mappings/*.yaml operator/jwtkeymap/demo/data/mappings/ (the source)"
    assert shipped.keys() == examples.keys(), fix
    for name, text in examples.items():
        assert shipped[name] == text, f"{name} differs: {fix}"
