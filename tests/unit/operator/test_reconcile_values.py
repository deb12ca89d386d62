"""Pure parts of the reconcile core and the LiteLLM evictor (no database, no Redis)."""

from __future__ import annotations

from typing import Any

import pytest

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db.rows import MappingRow
from jwtkeymap.core.litellm import EVICTIONS, LiteLLMCache, cache_key
from jwtkeymap.core.reconcile.desired import (
    DesiredMapping,
    ReconcileOutcome,
    ReconcileResult,
    spec_digest,
)
from jwtkeymap.core.reconcile.plan import describe_holder
from jwtkeymap.core.settings import load_settings
from jwtkeymap.operator.handlers.runtime import backoff

A = MappingIdentity("", "email", "a@x")
B = MappingIdentity("https://idp", "email", "b@x")


def test_digest_covers_every_field() -> None:
    base = spec_digest(A, "h", None, True)
    assert base == spec_digest(A, "h", None, True)
    variants = {
        spec_digest(B, "h", None, True),
        spec_digest(A, "h2", None, True),
        spec_digest(A, "h", "", True),
        spec_digest(A, "h", None, False),
    }
    assert base not in variants and len(variants) == 4


def test_desired_mapping_hides_the_hash() -> None:
    want = DesiredMapping(A, "f" * 64, owner="k8s:u", ref="n/a")
    assert "f" * 64 not in repr(want)
    assert len(want.key_fingerprint) == 12


def test_touched_identities_only_for_writes() -> None:
    moved = ReconcileResult(ReconcileOutcome.UPDATED, identity=B, previous_identity=A)
    assert moved.touched_identities == (A, B)
    assert ReconcileResult(ReconcileOutcome.UNCHANGED, identity=A).touched_identities == ()
    assert ReconcileResult(ReconcileOutcome.CONFLICT, identity=A).touched_identities == ()
    assert ReconcileOutcome.KEY_NOT_FOUND.failed and not ReconcileOutcome.ADOPTED.failed


def test_describe_holder_never_names_the_holder() -> None:
    def held(owner: str | None, ref: str | None, created_by: str | None) -> str:
        identity = MappingIdentity("", "sub", "x")
        row = MappingRow("m", identity, "0" * 64, owner=owner, ref=ref, created_by=created_by)
        return describe_holder(row)

    assert held("k8s:u", "ns/a", None) == "another JWTKeyMapping"
    assert held("offline:ns/a", "ns/a", None) == "an offline manifest"
    assert held(None, None, "ui") == "a mapping created outside jwtkeymap (created by ui)"
    assert held("auto-register:resolver", "auto-register:resolver", None) == (
        "an auto-registered mapping"
    )


def test_backoff_is_exponential_and_capped() -> None:
    settings = load_settings(None, reconcile_backoff_seconds=2, reconcile_backoff_max_seconds=30)
    assert [backoff(settings, r) for r in range(6)] == [2, 4, 8, 16, 30, 30]
    assert backoff(settings, 10_000) == 30


class FakeRedis:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[tuple[str, Any]] = []

    async def delete(self, *keys: str) -> int:
        if self.fail:
            raise ConnectionError("redis is down")
        self.calls.append(("delete", keys))
        return len(keys)

    async def publish(self, channel: str, message: str) -> int:
        self.calls.append(("publish", (channel, message)))
        return 1

    async def aclose(self) -> None:
        self.calls.append(("close", ()))


def test_litellm_cache_key_is_scoped_like_litellms() -> None:
    # Issue 12: LiteLLM caches an issuer-scoped row under its issuer; a global row keeps
    # the issuer-less key (tests/integration/litellm compares with LiteLLM's own function).
    assert cache_key(A) == "jwt_key_mapping:email:a@x"
    assert cache_key(B) == "jwt_key_mapping:https://idp:email:b@x"


async def test_evict_deletes_then_publishes_each_key_once() -> None:
    fake = FakeRedis()
    cache = LiteLLMCache("redis://unused", client=fake, namespace="prod")
    await cache.evict([A, B, A])
    assert fake.calls == [
        ("delete", ("jwt_key_mapping:email:a@x", "jwt_key_mapping:https://idp:email:b@x")),
        (
            "publish",
            (
                "prod:litellm_proxy.auth_cache_invalidation",
                '{"cache_key": "jwt_key_mapping:email:a@x"}',
            ),
        ),
        (
            "publish",
            (
                "prod:litellm_proxy.auth_cache_invalidation",
                '{"cache_key": "jwt_key_mapping:https://idp:email:b@x"}',
            ),
        ),
    ]


async def test_evict_with_redis_down_logs_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    before = EVICTIONS.labels(result="error")._value.get()
    await LiteLLMCache("redis://unused", client=FakeRedis(fail=True)).evict([A])
    assert EVICTIONS.labels(result="error")._value.get() == before + 1
    assert "could not evict 1 LiteLLM cache key(s)" in caplog.text
    assert "a@x" not in caplog.text
