"""Which tests a mutant of each core module must face: the one place this mapping is kept.

A mutant first runs against the module's unit tests; only a survivor runs against its
integration tests too (a real PostgreSQL, so slower). Paths are relative to the
repository root. The targets are the scores issue 17 asks for.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Target:
    """A module under mutation, the tests that exercise it, and the score it must reach."""

    module: str
    unit: tuple[str, ...]
    integration: tuple[str, ...]
    minimum: float

    @property
    def path(self) -> str:
        """The module's source file, relative to the repository root."""
        return "operator/" + self.module.replace(".", "/") + ".py"

    @property
    def short(self) -> str:
        """``claims`` for ``jwtkeymap.core.claims``."""
        return self.module.rpartition(".")[2]


TARGETS: tuple[Target, ...] = (
    Target(
        "jwtkeymap.core.claims",
        unit=(
            "tests/unit/test_claims.py",
            "tests/unit/test_claims_guards.py",
            "tests/unit/test_identity_properties.py",
            "tests/unit/test_policy_without_database.py",
        ),
        integration=(
            "tests/integration/test_policy.py",
            "tests/integration/hostile/test_spoofing.py",
        ),
        minimum=0.90,
    ),
    Target(
        "jwtkeymap.core.keys",
        unit=(
            "tests/unit/test_keys.py",
            "tests/unit/test_keys_guards.py",
            "tests/unit/test_policy_without_database.py",
        ),
        integration=("tests/integration/test_policy.py",),
        minimum=0.90,
    ),
    Target(
        "jwtkeymap.core.policy",
        unit=(
            "tests/unit/test_policy_without_database.py",
            "tests/unit/test_policy_guards.py",
            "tests/unit/resolver/test_check_answers.py",
        ),
        integration=("tests/integration/test_policy.py",),
        minimum=0.85,
    ),
    Target(
        "jwtkeymap.core.cache",
        unit=(
            "tests/unit/test_cache.py",
            "tests/unit/test_cache_guards.py",
            "tests/unit/test_identity_properties.py",
            "tests/unit/test_invalidation.py",
        ),
        integration=("tests/integration/test_policy.py", "tests/integration/test_lookup_lane.py"),
        minimum=0.90,
    ),
    Target(
        "jwtkeymap.core.tokens",
        unit=(
            "tests/unit/test_tokens.py",
            "tests/unit/test_tokens_guards.py",
            "tests/unit/test_jwks_rotation.py",
        ),
        integration=(
            "tests/integration/resolver/test_tokens.py",
            "tests/integration/hostile/test_check_hostile.py",
        ),
        minimum=0.90,
    ),
)


def target(name: str) -> Target:
    """The target named by its module or its short name."""
    for t in TARGETS:
        if name in (t.module, t.short):
            return t
    raise KeyError(f"no mutation target {name!r}: {', '.join(t.short for t in TARGETS)}")
