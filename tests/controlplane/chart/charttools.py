"""Helpers shared by the chart tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness import REPO_ROOT

CHART = REPO_ROOT / "charts" / "jwtkeymap"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))

Render = Callable[..., list[dict[str, Any]]]


def set_args(sets: dict[str, str] | None, values: Sequence[Path]) -> list[str]:
    """helm arguments for values files and --set pairs."""
    args: list[str] = []
    for path in values:
        args += ["-f", str(path)]
    for key, value in (sets or {}).items():
        args += ["--set", f"{key}={value}"]
    return args


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (and ``name``)."""
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{len(found)} {kind} objects named {name}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> set[str]:
    """The kinds rendered."""
    return {d["kind"] for d in docs}
