"""The registry of handled resources and the level-based resync, without kopf or a database."""

from __future__ import annotations

from typing import Any

import pytest

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db.rows import MappingRow
from jwtkeymap.core.errors import DatabaseUnavailable
from jwtkeymap.core.keys import hash_key
from jwtkeymap.core.reconcile.plan import Settled, spec_digest
from jwtkeymap.operator.handlers.registry import MappingRegistry
from jwtkeymap.operator.handlers.resync import Resync
from jwtkeymap.operator.resource import RESYNC_ANNOTATION

ALICE = MappingIdentity("", "email", "alice@example.com")
BOB = MappingIdentity("", "email", "bob@example.com")
TOKEN = hash_key("sk-alice")


def row(identity: MappingIdentity, owner: str, token: str = TOKEN) -> MappingRow:
    return MappingRow(id=f"m-{owner}", identity=identity, token_hash=token, owner=owner)


def digest(identity: MappingIdentity, token: str = TOKEN) -> str:
    return spec_digest(identity, token, None, True)


class Reads:
    """A reconciler that answers the bulk read from a dict (or raises)."""

    def __init__(self, rows: dict[str, Settled] | Exception) -> None:
        self.rows = rows
        self.reads = 0

    async def settled_under(self, prefix: str) -> dict[str, Settled]:
        assert prefix == "k8s:"
        self.reads += 1
        if isinstance(self.rows, Exception):
            raise self.rows
        return dict(self.rows)


class Annotations:
    def __init__(self) -> None:
        self.made: list[tuple[str, str, dict[str, str]]] = []

    async def annotate_mapping(self, namespace: str, name: str, annotations: Any) -> bool:
        self.made.append((namespace, name, dict(annotations)))
        return True


def test_registry_reverse_lookups_follow_changes() -> None:
    registry = MappingRegistry()
    registry.remember("u1", "a", "alice", identity=ALICE, secret="s", secret_seen="7")
    registry.remember("u2", "b", "alice", identity=ALICE, secret=None, secret_seen=None)
    key = ("", "email", "alice@example.com")
    assert registry.holders(key) == [("a/alice", "u1"), ("b/alice", "u2")]
    assert registry.secret_users("a", "s") == [("alice", "7")]
    assert registry.secret_users("b", "s") == []

    # A changed spec moves the entry: the old identity and Secret no longer lead to it.
    registry.remember("u1", "a", "alice", identity=BOB, secret="t", secret_seen=None)
    assert registry.holders(key) == [("b/alice", "u2")]
    assert registry.holders(("", "email", "bob@example.com")) == [("a/alice", "u1")]
    assert registry.secret_users("a", "s") == []
    assert registry.secret_users("a", "t") == [("alice", None)]

    registry.forget("u2")
    registry.forget("u2")  # twice is harmless
    assert registry.holders(key) == []
    assert len(registry) == 1


def test_registry_keeps_the_last_sync_only_while_identity_and_secret_stay() -> None:
    registry = MappingRegistry()
    registry.remember("u1", "a", "alice", identity=ALICE, secret=None, secret_seen=None)
    registry.synced("u1", "k8s:u1", "d1")
    registry.remember("u1", "a", "alice", identity=ALICE, secret=None, secret_seen="2")
    [(_, known)] = registry.entries()
    assert (known.digest, known.owner, known.secret_seen) == ("d1", "k8s:u1", "2")
    registry.remember("u1", "a", "alice", identity=BOB, secret=None, secret_seen=None)
    [(_, known)] = registry.entries()
    assert known.digest is None


async def test_resumes_share_one_read_and_use_each_entry_once() -> None:
    settled = Settled(row(ALICE, "k8s:u1"), key_exists=True, owned=1)
    reads = Reads({"k8s:u1": settled})
    resync = Resync(reads, MappingRegistry(), Annotations(), interval=60)  # type: ignore[arg-type]
    assert await resync.known("k8s:u1") is settled
    assert await resync.known("k8s:u2") is None
    assert await resync.known("k8s:u1") is None  # used once: a second resume reads its own
    assert reads.reads == 1


async def test_resumes_read_again_after_the_ttl_and_survive_an_outage() -> None:
    now = [0.0]
    reads = Reads(DatabaseUnavailable("down"))
    resync = Resync(
        reads,  # type: ignore[arg-type]
        MappingRegistry(),
        Annotations(),  # type: ignore[arg-type]
        interval=60,
        ttl=10,
        clock=lambda: now[0],
    )
    assert await resync.known("k8s:u1") is None
    settled = Settled(row(ALICE, "k8s:u1"), key_exists=True, owned=1)
    reads.rows = {"k8s:u1": settled}
    assert await resync.known("k8s:u1") is settled  # the failed read was not kept
    reads.rows = {"k8s:u1": settled}
    now[0] = 5
    assert await resync.known("k8s:u1") is None  # still the same read, entry used
    now[0] = 11
    assert await resync.known("k8s:u1") is settled
    assert reads.reads == 3


@pytest.mark.parametrize(
    ("found", "stale"),
    [
        (Settled(row(ALICE, "k8s:u1"), key_exists=True, owned=1), False),
        (None, True),  # the row was deleted
        (Settled(row(BOB, "k8s:u1"), key_exists=True, owned=1), True),  # moved
        (Settled(row(ALICE, "k8s:u1"), key_exists=False, owned=1), True),  # key gone
        (Settled(row(ALICE, "k8s:u1"), key_exists=True, owned=2), True),  # a second row
    ],
)
async def test_drift_check_marks_what_differs(found: Settled | None, stale: bool) -> None:
    registry = MappingRegistry()
    registry.remember("u1", "a", "alice", identity=ALICE, secret=None, secret_seen=None)
    registry.synced("u1", "k8s:u1", digest(ALICE))
    kube = Annotations()
    reads = Reads({"k8s:u1": found} if found else {})
    resync = Resync(reads, registry, kube, interval=60)  # type: ignore[arg-type]
    assert await resync.check() == int(stale)
    assert [(ns, name) for ns, name, _ in kube.made] == ([("a", "alice")] if stale else [])
    assert all(RESYNC_ANNOTATION in made for _, _, made in kube.made)
    assert resync.checks == 1


async def test_drift_check_retries_the_unsynced_but_not_an_invalid_spec() -> None:
    registry = MappingRegistry()
    registry.remember("u1", "a", "denied", identity=ALICE, secret=None, secret_seen=None)
    registry.synced("u1", "k8s:u1", None)
    registry.remember("u2", "a", "broken", identity=None, secret=None, secret_seen=None)
    registry.synced("u2", "k8s:u2", None, retry=False)
    # Remembered but with no verdict yet: its reconcile is still running.
    registry.remember("u3", "a", "busy", identity=BOB, secret=None, secret_seen=None)
    kube = Annotations()
    resync = Resync(Reads({}), registry, kube, interval=60)  # type: ignore[arg-type]
    assert await resync.check() == 1
    assert [name for _, name, _ in kube.made] == ["denied"]


async def test_drift_check_with_nothing_known_reads_nothing() -> None:
    reads = Reads({})
    resync = Resync(reads, MappingRegistry(), Annotations(), interval=60)  # type: ignore[arg-type]
    assert await resync.check() == 0
    assert reads.reads == 0
