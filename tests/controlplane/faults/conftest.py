"""Fixtures for operator fault tests: the operator tier's own fixtures, a private PostgreSQL."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from jwtkeymap.demo.postgres import ThrowawayPostgres
from support.postgres import migrated_postgres

_OPERATOR_TESTS = Path(__file__).resolve().parent.parent / "operator"
# operator_kit.py lives with the operator tests (importlib mode puts nothing on sys.path).
sys.path.insert(0, str(_OPERATOR_TESTS))


def _operator_fixtures() -> object:
    # Reuse the operator tier's fixtures (the CRD, the kubectl helpers) rather than copy them.
    spec = importlib.util.spec_from_file_location(
        "controlplane_operator_conftest", _OPERATOR_TESTS / "conftest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_fixtures = _operator_fixtures()
jkm_crd = _fixtures.jkm_crd  # type: ignore[attr-defined]
cluster = _fixtures.cluster  # type: ignore[attr-defined]

CHANNEL = "jwtkeymap_invalidate"


@pytest.fixture
def private_pg() -> Iterator[ThrowawayPostgres]:
    """A migrated PostgreSQL server of this test's own, so the test may stop it."""
    with migrated_postgres() as pg:
        yield pg
