"""The mutator behind `make mutate`: which edits it makes, and where it never reaches."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.mutation.operators import mutants, mutate
from support.mutation.targets import TARGETS, target

SOURCE = '''
import dataclasses

@dataclasses.dataclass(frozen=True)
class Box:
    """A docstring with 1 number."""

    size: int = 3

    def fits(self, n: int) -> bool:
        if n < self.size and n > 0:
            return True
        log.warning("too big", extra={"n": 1})
        assert n is not None
        raise ValueError(n)

def pick(xs: list[int]) -> int | None:
    return [x for x in xs if x in (1, 2)][0]
'''


def labels(source: str) -> list[str]:
    return [m.label for m in mutants(source)]


def test_each_kind_of_mutation_is_made() -> None:
    found = labels(SOURCE)
    expected = [
        "Box: `3` → `4`",
        "Box.fits: `n < self.size` → `n >= self.size`",
        "Box.fits: `n < self.size` → `n <= self.size`",
        "Box.fits: `n > 0` → `n <= 0`",
        "Box.fits: `n > 0` → `n >= 0`",
        "Box.fits: `0` → `1`",
        "Box.fits: `n < self.size and n > 0` → `n < self.size or n > 0`",
        "Box.fits: `return True` → `return False`",
        "Box.fits: `n < self.size and n > 0` → `not (n < self.size and n > 0)`",
        "Box.fits: `raise ValueError(n)` → `pass`",
        "pick: `x in (1, 2)` → `x not in (1, 2)`",
        "pick: `1` → `2`",
        "pick: `2` → `3`",
        "pick: `0` → `1`",
        "pick: `return [x for x in xs if x in (1, 2)][0]` → `return None`",
    ]
    assert sorted(found) == sorted(expected)


def test_decorators_docstrings_annotations_asserts_and_logging_are_left_alone() -> None:
    text = "\n".join(labels(SOURCE))
    for untouched in ("frozen", "docstring", "int |", "is not None", "too big"):
        assert untouched not in text


def test_a_mutant_changes_exactly_its_site() -> None:
    for m in mutants(SOURCE):
        out = mutate(SOURCE, m.index)
        compile(out, "mutant", "exec")
        assert m.after in out or m.after == "pass"
    with pytest.raises(IndexError):
        mutate(SOURCE, len(mutants(SOURCE)))


def test_every_target_names_its_module_and_tests() -> None:
    assert {t.short for t in TARGETS} == {"claims", "cache", "keys", "tokens", "policy"}
    assert target("claims") is target("jwtkeymap.core.claims")
    for t in TARGETS:
        assert t.unit and t.integration, t.module


def test_every_guards_test_file_faces_the_mutants() -> None:
    # A guard test the mutants never meet cannot kill them (and a renamed one must not slip).
    root = Path(__file__).resolve().parents[2]
    guards = {
        str(p.relative_to(root)) for p in (root / "tests" / "unit").glob("test_*_guards.py")
    } | {"tests/unit/test_jwks_rotation.py"}
    assert len(guards) >= 6
    named = {f for t in TARGETS for f in (*t.unit, *t.integration)}
    assert guards <= named, guards - named
    assert all((root / f).is_file() for f in named)
