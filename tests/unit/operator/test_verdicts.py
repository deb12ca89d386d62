"""Verdicts without kopf running: how each failure becomes a condition, what gets written."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from typing import Any

import kopf
import pytest

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.errors import DatabaseUnavailable, SchemaError
from jwtkeymap.core.keys import fingerprint, hash_key
from jwtkeymap.core.reconcile.desired import (
    Adoptable,
    DesiredMapping,
    ReconcileOutcome,
    ReconcileResult,
)
from jwtkeymap.core.settings import load_settings
from jwtkeymap.operator.handlers.indexes import Tenancy
from jwtkeymap.operator.handlers.registry import MappingRegistry
from jwtkeymap.operator.handlers.resync import Resync
from jwtkeymap.operator.handlers.runtime import Runtime
from jwtkeymap.operator.handlers.verdicts import Verdict, attempt, record
from jwtkeymap.operator.kube import KubeUnavailable
from jwtkeymap.operator.status import Condition
from jwtkeymap.operator.tenancy import parse_policy

TOKEN = hash_key("sk-unit")
ALICE = MappingIdentity("", "email", "alice@example.com")
META = {"uid": "uid-1", "name": "alice", "generation": 2, "annotations": {}}
NOW = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)


def tenancy(**adopt: bool) -> Tenancy:
    """Namespace "ns" may map any e-mail, and adopt what ``adopt`` says."""
    spec = {
        "namespaceSelector": {"matchLabels": {"team": "a"}},
        "issuers": ["*"],
        "claims": [{"name": "email", "values": ["*@example.com"]}],
        "adopt": adopt,
    }
    return Tenancy({"all": [parse_policy("team-a", spec)]}, {"ns": [{"team": "a"}]})


OPEN = tenancy()


class FakeReconciler:
    def __init__(self, outcome: ReconcileOutcome | Exception) -> None:
        self.outcome = outcome
        self.wanted: list[DesiredMapping] = []

    async def apply(self, want: DesiredMapping, known: object = None) -> ReconcileResult:
        self.wanted.append(want)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        message = (
            "held by JWTKeyMapping b/alice" if self.outcome is ReconcileOutcome.CONFLICT else ""
        )
        return ReconcileResult(
            self.outcome,
            identity=want.identity,
            mapping_id="m-1",
            key_fingerprint=want.key_fingerprint,
            message=message,
        )


class FakeKube:
    def __init__(
        self,
        data: dict[str, str] | Exception | None,
        policies: list[dict[str, Any]] | Exception | None = None,
    ) -> None:
        self.data = data
        self.policies = policies if policies is not None else []

    async def list_cluster_objects(self, plural: str) -> list[dict[str, Any]]:
        assert plural == "jwtkeymappingpolicies"
        if isinstance(self.policies, Exception):
            raise self.policies
        return self.policies

    async def namespace_labels(self, name: str) -> dict[str, str] | None:
        return {"kubernetes.io/metadata.name": name}

    async def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        if isinstance(self.data, Exception):
            raise self.data
        return self.data


def runtime(
    outcome: ReconcileOutcome | Exception,
    kube: Any = None,
    *,
    reconciler: Any = None,
    limit: int = 4,
) -> Runtime:
    settings = load_settings(None)
    reconciler = reconciler or FakeReconciler(outcome)
    registry = MappingRegistry()
    return Runtime(
        settings=settings,
        store=None,  # type: ignore[arg-type]
        reconciler=reconciler,
        kube=kube,
        litellm=None,
        limit=asyncio.Semaphore(limit),
        registry=registry,
        resync=Resync(reconciler, registry, kube, interval=settings.drift_interval_seconds),
    )


def by_hash(**extra: Any) -> dict[str, Any]:
    return {
        "issuer": "*",
        "claim": {"name": "email", "value": "alice@example.com"},
        "key": {"hash": TOKEN},
        **extra,
    }


def by_secret() -> dict[str, Any]:
    ref = {"secretRef": {"name": "keys", "key": "alice"}}
    return {"issuer": "*", "claim": {"name": "email", "value": "alice@example.com"}, "key": ref}


async def test_synced() -> None:
    rt = runtime(ReconcileOutcome.CREATED)
    verdict = await attempt(rt, by_hash(), META, "ns", tenancy=OPEN)
    assert (verdict.condition.status, verdict.condition.reason) == (True, "Synced")
    assert (
        verdict.condition.message
        == f"email=alice@example.com is mapped to key {fingerprint(TOKEN)}"
    )
    assert not verdict.retry and not verdict.permanent
    [want] = rt.reconciler.wanted  # type: ignore[union-attr]
    assert (want.owner, want.ref, want.identity) == ("k8s:uid-1", "ns/alice", ALICE)


async def test_secret_is_read_and_hashed() -> None:
    data = {"alice": base64.b64encode(b"sk-unit").decode()}
    rt = runtime(ReconcileOutcome.UNCHANGED, FakeKube(data))
    verdict = await attempt(rt, by_secret(), META, "ns", tenancy=OPEN)
    assert verdict.condition.reason == "Synced"
    assert rt.reconciler.wanted[0].token_hash == TOKEN  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("spec", "outcome", "kube", "reason", "status", "retry", "permanent"),
    [
        (by_hash(active="maybe"), ReconcileOutcome.CREATED, None, "InvalidSpec", False, False, True),
        (by_hash(), SchemaError("no jwt_issuer column"), None, "InvalidSpec", False, False, True),
        (by_secret(), ReconcileOutcome.CREATED, FakeKube(None), "SecretNotFound", False, False, True),
        (by_secret(), ReconcileOutcome.CREATED, FakeKube({}), "SecretKeyMissing", False, False, True),
        (
            by_secret(), ReconcileOutcome.CREATED, FakeKube(KubeUnavailable("HTTP 403")),
            "SecretUnreadable", None, True, False,
        ),
        (by_hash(), DatabaseUnavailable("down"), None, "DatabaseUnavailable", None, True, False),
        (by_hash(), ReconcileOutcome.KEY_NOT_FOUND, None, "KeyNotFound", False, True, False),
        (by_hash(), ReconcileOutcome.CONFLICT, None, "Conflict", False, False, False),
        (by_hash(), ReconcileOutcome.POLICY_DENIED, None, "PolicyDenied", False, False, False),
    ],
)  # fmt: skip
async def test_failures(
    spec: dict[str, Any],
    outcome: Any,
    kube: Any,
    reason: str,
    status: bool | None,
    retry: bool,
    permanent: bool,
) -> None:
    verdict = await attempt(runtime(outcome, kube), spec, META, "ns", tenancy=OPEN)
    assert (verdict.condition.reason, verdict.condition.status) == (reason, status)
    assert (verdict.retry, verdict.permanent) == (retry, permanent)
    assert TOKEN not in verdict.condition.message


async def test_a_mapping_no_policy_allows_is_denied_before_its_secret_is_read() -> None:
    # The API read that confirms a denial fails too: the indexes' decision stands.
    kube = FakeKube(KubeUnavailable("must not be called"), KubeUnavailable("confirming"))
    rt = runtime(ReconcileOutcome.CREATED, kube)
    spec = {**by_secret(), "claim": {"name": "email", "value": "victim@other.example"}}
    verdict = await attempt(rt, spec, META, "ns", tenancy=OPEN)
    assert (verdict.condition.reason, verdict.condition.status) == ("PolicyDenied", False)
    assert verdict.permanent and not verdict.retry
    assert "no JWTKeyMappingPolicy allows issuer *, email=victim@other.example" in (
        verdict.condition.message
    )
    assert rt.reconciler.wanted == []  # type: ignore[union-attr]
    nothing = await attempt(rt, by_hash(), META, "ns", tenancy=Tenancy({}, {}))
    assert nothing.condition.reason == "PolicyDenied"
    assert "no JWTKeyMappingPolicy exists" in nothing.condition.message


async def test_a_denial_by_lagging_indexes_is_confirmed_against_the_api() -> None:
    # The indexes know no policy yet (just created, or a replica still listing after it
    # took over); the API has one that allows the mapping: no permanent denial.
    allowing = {
        "metadata": {"name": "p"},
        "spec": {
            "namespaceSelector": {},
            "issuers": ["*"],
            "claims": [{"name": "email", "values": ["*"]}],
        },
    }
    rt = runtime(ReconcileOutcome.CREATED, FakeKube(None, [allowing]))
    allowed = await attempt(rt, by_hash(), META, "ns", tenancy=Tenancy({}, {}))
    assert allowed.condition.reason == "Synced", allowed.condition
    # The API cannot be read: the indexes' denial stands (retried by the drift timer).
    rt = runtime(ReconcileOutcome.CREATED, FakeKube(None, KubeUnavailable("down")))
    denied = await attempt(rt, by_hash(), META, "ns", tenancy=Tenancy({}, {}))
    assert denied.condition.reason == "PolicyDenied" and denied.permanent


async def test_the_policy_says_what_the_mapping_may_adopt() -> None:
    rt = runtime(ReconcileOutcome.ADOPTED)
    await attempt(rt, by_hash(), META, "ns", tenancy=tenancy(autoRegistered=True))
    await attempt(rt, by_hash(), META, "ns", tenancy=OPEN)
    first, second = rt.reconciler.wanted  # type: ignore[union-attr]
    assert (first.may_adopt, second.may_adopt) == ({Adoptable.AUTO_REGISTERED}, frozenset())


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(
        kopf, "event", lambda body, *, type, reason, message: seen.append((type, reason))
    )
    return seen


def synced(outcome: ReconcileOutcome) -> Verdict:
    result = ReconcileResult(outcome, identity=ALICE, mapping_id="m-1", key_fingerprint="fp")
    return Verdict(Condition("Ready", True, "Synced", "mapped"), result=result)


def recorded(
    outcome: ReconcileOutcome,
    *,
    status: dict[str, Any] | None = None,
    now: dt.datetime | None = NOW,
    drift: bool = False,
) -> kopf.Patch:
    """The patch ``record`` makes for a synced result (``now=None``: the real clock)."""
    patch = kopf.Patch()
    record(
        synced(outcome),
        body=kopf.Body({}),
        status=status or {},
        meta=META,
        patch=patch,
        now=now,
        drift=drift,
    )
    return patch


def test_record_writes_status_and_an_event_on_transition(events: list[tuple[str, str]]) -> None:
    patch = recorded(ReconcileOutcome.CREATED)
    assert patch["status"] == {
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Synced", "message": "mapped",
             "lastTransitionTime": "2026-05-01T12:00:00Z", "observedGeneration": 2}
        ],
        "observedGeneration": 2,
        "mappingId": "m-1",
        "keyFingerprint": "fp",
        "lastSyncTime": "2026-05-01T12:00:00Z",
    }  # fmt: skip
    assert events == [("Normal", "Synced")]


def test_record_is_silent_when_nothing_changed(events: list[tuple[str, str]]) -> None:
    first = recorded(ReconcileOutcome.CREATED)
    status = dict(first["status"])
    events.clear()
    again = recorded(ReconcileOutcome.UNCHANGED, status=status, now=None)
    assert dict(again) == {} and events == []


def test_record_drift_repair_warns(events: list[tuple[str, str]]) -> None:
    first = recorded(ReconcileOutcome.CREATED)
    events.clear()
    later = NOW + dt.timedelta(hours=1)
    patch = recorded(ReconcileOutcome.CREATED, status=dict(first["status"]), now=later, drift=True)
    assert events == [("Warning", "DriftRepaired")]
    assert patch["status"]["lastSyncTime"] == "2026-05-01T13:00:00Z"
    # Still Ready: the transition time stays.
    assert patch["status"]["conditions"][0]["lastTransitionTime"] == "2026-05-01T12:00:00Z"


async def test_reconciles_queue_behind_the_pool_size() -> None:
    running = peak = 0

    class Slow(FakeReconciler):
        async def apply(self, want: DesiredMapping, known: object = None) -> ReconcileResult:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1
            return await super().apply(want)

    rt = runtime(ReconcileOutcome.UNCHANGED, reconciler=Slow(ReconcileOutcome.UNCHANGED), limit=3)
    verdicts = await asyncio.gather(
        *(attempt(rt, by_hash(), META, "ns", tenancy=OPEN) for _ in range(20))
    )
    assert {v.condition.reason for v in verdicts} == {"Synced"}
    assert peak == 3
