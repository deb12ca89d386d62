"""The reconcile core against a real PostgreSQL: ownership, conflicts, no-op, NOTIFY."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import TypeVar

import asyncpg
import pytest
from asyncpg.connection import LoggedQuery
from prometheus_client import REGISTRY

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.core.db.store import Store, _noop_reset
from jwtkeymap.core.errors import DatabaseUnavailable, SchemaError
from jwtkeymap.core.owners import AUTO_REGISTERED
from jwtkeymap.core.reconcile.desired import Adoptable, DesiredMapping, ReconcileOutcome
from jwtkeymap.core.reconcile.writer import Reconciler
from jwtkeymap.demo.postgres import ThrowawayPostgres

CHANNEL = "jwtkeymap_invalidate"
ALICE = MappingIdentity("", "email", "alice@example.com")
ALICE_SCOPED = MappingIdentity("https://idp.example.com", "email", "alice@example.com")
BOB = MappingIdentity("", "email", "bob@example.com")

T = TypeVar("T")


def mapping_writes(actor: str) -> float:
    """Rows the reconcilers of ``actor`` wrote so far, read from the metric."""
    value = REGISTRY.get_sample_value("jwtkeymap_mapping_writes_total", {"actor": actor})
    return value or 0.0


async def new_key(store: Store) -> str:
    _, key = await store.create_key(NewKey(team_id="team-a"), actor="test")
    return key.token_hash


def desired(identity: MappingIdentity, token_hash: str, **kw: object) -> DesiredMapping:
    base: dict[str, object] = {"owner": "k8s:uid-1", "ref": "team-a/alice"}
    base.update(kw)
    return DesiredMapping(identity=identity, token_hash=token_hash, **base)  # type: ignore[arg-type]


class Notifications:
    """Collect NOTIFY payloads on the invalidation channel."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, str]] = []
        self._event = asyncio.Event()

    def __call__(self, conn: object, pid: int, channel: str, payload: str) -> None:
        self.payloads.append(json.loads(payload))
        self._event.set()

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, str]]:
        async with asyncio.timeout(timeout):
            while len(self.payloads) < count:
                self._event.clear()
                await self._event.wait()
        return self.payloads

    async def settle(self, conn: asyncpg.Connection) -> list[dict[str, str]]:
        """Round-trip on the listening connection so any queued notification is delivered."""
        await conn.fetchval("SELECT 1")
        return self.payloads


@pytest.fixture
async def listen(database_url: str) -> AsyncIterator[tuple[asyncpg.Connection, Notifications]]:
    conn = await asyncpg.connect(database_url)
    seen = Notifications()
    await conn.add_listener(CHANNEL, seen)
    yield conn, seen
    await conn.close()


@pytest.fixture
def evicted() -> list[MappingIdentity]:
    return []


@pytest.fixture
def reconciler(store: Store, evicted: list[MappingIdentity]) -> Reconciler:
    async def evict(identities: Sequence[MappingIdentity]) -> None:
        evicted.extend(identities)

    return Reconciler(store, evict=evict)


async def test_create_records_ownership_and_notifies(
    store: Store, reconciler: Reconciler, db: asyncpg.Connection, listen, evicted
) -> None:
    _, seen = listen
    token = await new_key(store)
    result = await reconciler.apply(desired(ALICE, token, description="Alice"))
    assert result.outcome is ReconcileOutcome.CREATED
    row = await db.fetchrow(
        'SELECT m.token, m.description, m.created_by, o.owner, o.ref FROM "LiteLLM_JWTKeyMapping" m '
        "JOIN jwtkeymap_mapping_owner o ON o.mapping_id = m.id WHERE m.id = $1",
        result.mapping_id,
    )
    assert dict(row) == {
        "token": token,
        "description": "Alice",
        "created_by": "jwtkeymap:operator",
        "owner": "k8s:uid-1",
        "ref": "team-a/alice",
    }
    assert await seen.wait_for(1) == [ALICE.to_json()]
    assert evicted == [ALICE]
    assert result.key_fingerprint is not None and token not in repr(result)


async def test_unchanged_writes_nothing_and_notifies_nothing(
    store: Store, reconciler: Reconciler, listen, evicted
) -> None:
    conn, seen = listen
    token = await new_key(store)
    want = desired(ALICE, token)
    await reconciler.apply(want)
    await seen.wait_for(1)
    writes = mapping_writes(reconciler.actor)
    again = await reconciler.apply(want)
    assert again.outcome is ReconcileOutcome.UNCHANGED
    assert mapping_writes(reconciler.actor) == writes
    assert await seen.settle(conn) == [ALICE.to_json()]
    assert evicted == [ALICE]


async def test_update_changes_fields_in_place(
    store: Store, reconciler: Reconciler, db: asyncpg.Connection
) -> None:
    token, other = await new_key(store), await new_key(store)
    first = await reconciler.apply(desired(ALICE, token))
    second = await reconciler.apply(desired(ALICE, other, active=False, description="off"))
    assert second.outcome is ReconcileOutcome.UPDATED
    assert second.mapping_id == first.mapping_id
    assert second.changes == ("key", "description", "active")
    row = await db.fetchrow(
        'SELECT token, is_active FROM "LiteLLM_JWTKeyMapping" WHERE id = $1', first.mapping_id
    )
    assert (row["token"], row["is_active"]) == (other, False)


async def test_identity_change_moves_the_row_in_one_transaction(
    store: Store, reconciler: Reconciler, db: asyncpg.Connection, listen, evicted
) -> None:
    _, seen = listen
    token = await new_key(store)
    first = await reconciler.apply(desired(ALICE, token))
    moved = await reconciler.apply(desired(BOB, token))
    assert moved.outcome is ReconcileOutcome.UPDATED
    assert moved.previous_identity == ALICE
    assert moved.changes == ("identity",)
    rows = await db.fetch('SELECT id, jwt_claim_value FROM "LiteLLM_JWTKeyMapping"')
    assert [(r["id"], r["jwt_claim_value"]) for r in rows] == [
        (first.mapping_id, "bob@example.com")
    ]
    payloads = await seen.wait_for(3)
    assert payloads == [ALICE.to_json(), ALICE.to_json(), BOB.to_json()]
    assert evicted == [ALICE, ALICE, BOB]


async def test_issuer_scoped_and_global_are_distinct(store: Store, reconciler: Reconciler) -> None:
    token = await new_key(store)
    await reconciler.apply(desired(ALICE, token))
    scoped = await reconciler.apply(desired(ALICE_SCOPED, token, owner="k8s:uid-2", ref="b/alice"))
    assert scoped.outcome is ReconcileOutcome.CREATED


async def test_another_owner_is_a_conflict_without_naming_it(
    store: Store, reconciler: Reconciler, db: asyncpg.Connection
) -> None:
    token = await new_key(store)
    await reconciler.apply(desired(ALICE, token))
    rival = await reconciler.apply(desired(ALICE, token, owner="k8s:uid-2", ref="team-b/alice"))
    assert rival.outcome is ReconcileOutcome.CONFLICT
    assert "already mapped by another JWTKeyMapping" in rival.message
    assert "team-a" not in rival.message
    assert await db.fetchval('SELECT count(*) FROM "LiteLLM_JWTKeyMapping"') == 1
    offline = await reconciler.apply(desired(ALICE, token, owner="offline:x/y", ref="x/y"))
    assert offline.outcome is ReconcileOutcome.CONFLICT


async def test_unowned_row_needs_adopt(
    store: Store, reconciler: Reconciler, db: asyncpg.Connection
) -> None:
    token, other = await new_key(store), await new_key(store)
    manual = await store.add_mapping(ALICE, token, actor="psql-admin")
    refused = await reconciler.apply(desired(ALICE, other))
    assert refused.outcome is ReconcileOutcome.CONFLICT
    assert "outside jwtkeymap (created by psql-admin)" in refused.message
    assert "jwtkeymap.io/adopt" in refused.message
    assert await db.fetchval('SELECT token FROM "LiteLLM_JWTKeyMapping"') == token

    # Asking is not enough: a policy must allow adopting unowned rows.
    denied = await reconciler.apply(desired(ALICE, other, adopt=True))
    assert denied.outcome is ReconcileOutcome.POLICY_DENIED
    assert await db.fetchval('SELECT token FROM "LiteLLM_JWTKeyMapping"') == token
    may = frozenset({Adoptable.UNOWNED})
    adopted = await reconciler.apply(desired(ALICE, other, adopt=True, may_adopt=may))
    assert adopted.outcome is ReconcileOutcome.ADOPTED
    assert adopted.mapping_id == manual.id
    assert adopted.changes == ("key",)
    owner = await db.fetchval(
        "SELECT owner FROM jwtkeymap_mapping_owner WHERE mapping_id = $1", manual.id
    )
    assert owner == "k8s:uid-1"
    assert (
        await reconciler.apply(desired(ALICE, other, adopt=True, may_adopt=may))
    ).outcome is ReconcileOutcome.UNCHANGED


async def test_missing_key_is_reported_and_nothing_written(
    store: Store, reconciler: Reconciler, db: asyncpg.Connection
) -> None:
    result = await reconciler.apply(desired(ALICE, "0" * 64))
    assert result.outcome is ReconcileOutcome.KEY_NOT_FOUND
    assert "0" * 64 not in result.message
    assert result.key_fingerprint in result.message
    assert await db.fetchval('SELECT count(*) FROM "LiteLLM_JWTKeyMapping"') == 0


async def test_drift_is_repaired(
    store: Store, reconciler: Reconciler, db: asyncpg.Connection
) -> None:
    token = await new_key(store)
    want = desired(ALICE, token)
    await reconciler.apply(want)
    await db.execute('UPDATE "LiteLLM_JWTKeyMapping" SET is_active = false')
    assert (await reconciler.apply(want)).changes == ("active",)
    await db.execute('DELETE FROM "LiteLLM_JWTKeyMapping"')
    restored = await reconciler.apply(want)
    assert restored.outcome is ReconcileOutcome.CREATED
    assert await db.fetchval("SELECT owner FROM jwtkeymap_mapping_owner") == "k8s:uid-1"


async def test_one_read_settles_every_owner_and_spares_their_reads(
    store: Store, reconciler: Reconciler, db: asyncpg.Connection
) -> None:
    token, other = await new_key(store), await new_key(store)
    alice, bob = desired(ALICE, token), desired(BOB, other, owner="k8s:uid-2", ref="b/bob")
    await reconciler.apply(alice)
    await reconciler.apply(bob)
    carol = MappingIdentity("", "email", "carol@example.com")
    await reconciler.apply(desired(carol, token, owner="offline:a/carol", ref="a/carol"))
    await db.execute(
        """UPDATE "LiteLLM_JWTKeyMapping" SET description = 'edited' WHERE jwt_claim_value = $1""",
        BOB.claim_value,
    )

    read = await reconciler.settled_under("k8s:")
    assert sorted(read) == ["k8s:uid-1", "k8s:uid-2"]  # the offline owner is not under k8s:
    assert read["k8s:uid-1"].holds(alice.digest())
    assert (read["k8s:uid-2"].row.identity, read["k8s:uid-2"].key_exists) == (BOB, True)
    assert read["k8s:uid-2"].owned == 1
    assert not read["k8s:uid-2"].holds(bob.digest())  # edited behind its owner's back

    # A row the bulk read found in sync is reported unchanged without another read...
    xmin = await db.fetchval('SELECT max(xmin::text::bigint) FROM "LiteLLM_JWTKeyMapping"')
    unchanged = await reconciler.apply(alice, known=read["k8s:uid-1"])
    assert unchanged.outcome is ReconcileOutcome.UNCHANGED
    assert unchanged.mapping_id == read["k8s:uid-1"].row.id
    # ...while a stale entry (the row changed since) falls through to the live row.
    await db.execute('UPDATE "LiteLLM_JWTKeyMapping" SET is_active = false')
    stale = await reconciler.apply(desired(ALICE, token, active=False), known=read["k8s:uid-1"])
    assert stale.outcome is ReconcileOutcome.UNCHANGED
    assert (
        await db.fetchval('SELECT max(xmin::text::bigint) FROM "LiteLLM_JWTKeyMapping"') > xmin
    )  # only the UPDATE above wrote


async def test_dry_run_reports_and_rolls_back(
    store: Store, reconciler: Reconciler, db: asyncpg.Connection, listen, evicted
) -> None:
    conn, seen = listen
    token = await new_key(store)
    writes = mapping_writes(reconciler.actor)
    planned = await reconciler.apply(desired(ALICE, token), dry_run=True)
    assert planned.outcome is ReconcileOutcome.CREATED
    assert await db.fetchval('SELECT count(*) FROM "LiteLLM_JWTKeyMapping"') == 0
    assert mapping_writes(reconciler.actor) == writes
    assert await seen.settle(conn) == []
    assert evicted == []


async def test_delete_removes_owned_row_and_is_idempotent(
    store: Store, reconciler: Reconciler, db: asyncpg.Connection, evicted
) -> None:
    token = await new_key(store)
    await reconciler.apply(desired(ALICE, token))
    manual = await store.add_mapping(BOB, token, actor="psql-admin")
    deleted = await reconciler.delete("k8s:uid-1")
    assert deleted.outcome is ReconcileOutcome.DELETED
    assert deleted.identity == ALICE
    assert evicted == [ALICE, ALICE]
    ids = await db.fetch('SELECT id FROM "LiteLLM_JWTKeyMapping"')
    assert [r["id"] for r in ids] == [manual.id]  # not ours: untouched
    assert (await reconciler.delete("k8s:uid-1")).outcome is ReconcileOutcome.ABSENT


async def test_retain_keeps_row_and_releases_it(
    store: Store, reconciler: Reconciler, db: asyncpg.Connection
) -> None:
    token = await new_key(store)
    await reconciler.apply(desired(ALICE, token))
    kept = await reconciler.delete("k8s:uid-1", retain=True)
    assert kept.outcome is ReconcileOutcome.RETAINED
    assert await db.fetchval('SELECT count(*) FROM "LiteLLM_JWTKeyMapping"') == 1
    assert await db.fetchval("SELECT count(*) FROM jwtkeymap_mapping_owner") == 0
    again = await reconciler.apply(desired(ALICE, token, owner="k8s:uid-9"))
    assert again.outcome is ReconcileOutcome.CONFLICT


async def test_prune_deletes_only_missing_owners_under_prefix(
    store: Store, reconciler: Reconciler, db: asyncpg.Connection
) -> None:
    token = await new_key(store)
    await reconciler.apply(desired(ALICE, token, owner="offline:a/alice", ref="a/alice"))
    await reconciler.apply(desired(BOB, token, owner="offline:a/bob", ref="a/bob"))
    await reconciler.apply(desired(ALICE_SCOPED, token, owner="k8s:uid-3", ref="a/scoped"))
    planned = await reconciler.prune("offline:", keep=["offline:a/alice"], dry_run=True)
    assert [(r.outcome, r.ref) for r in planned] == [(ReconcileOutcome.DELETED, "a/bob")]
    assert await db.fetchval('SELECT count(*) FROM "LiteLLM_JWTKeyMapping"') == 3
    pruned = await reconciler.prune("offline:", keep=["offline:a/alice"])
    assert [r.identity for r in pruned] == [BOB]
    values = await db.fetch(
        'SELECT jwt_claim_value, jwt_issuer FROM "LiteLLM_JWTKeyMapping" ORDER BY 2'
    )
    assert [(r[0], r[1]) for r in values] == [
        ("alice@example.com", ""),
        ("alice@example.com", "https://idp.example.com"),
    ]


async def test_concurrent_owners_one_wins(store: Store, reconciler: Reconciler) -> None:
    token = await new_key(store)
    wants = [desired(ALICE, token, owner=f"k8s:uid-{i}", ref=f"ns/cr-{i}") for i in range(8)]
    results = await asyncio.gather(*(reconciler.apply(w) for w in wants))
    outcomes = sorted(r.outcome.value for r in results)
    assert outcomes == ["conflict"] * 7 + ["created"]


async def test_issuer_on_issuer_less_schema_is_a_schema_error(
    store: Store, db: asyncpg.Connection, database_url: str
) -> None:
    await db.execute('DROP INDEX "LiteLLM_JWTKeyMapping_jwt_issuer_jwt_claim_name_jwt_claim_v_key"')
    await db.execute('DROP INDEX "LiteLLM_JWTKeyMapping_jwt_issuer_jwt_claim_name_jwt_claim_v_idx"')
    await db.execute('ALTER TABLE "LiteLLM_JWTKeyMapping" DROP COLUMN jwt_issuer')
    token = await new_key(store)
    issuer_less = await Store.open(database_url, min_size=1, max_size=2)
    try:
        other = Reconciler(issuer_less)
        with pytest.raises(SchemaError):
            await other.apply(desired(ALICE_SCOPED, token))
        assert (await other.apply(desired(ALICE, token))).outcome is ReconcileOutcome.CREATED
    finally:
        await issuer_less.close()


async def test_database_down_raises_database_unavailable() -> None:
    pg = ThrowawayPostgres()
    try:
        pg.init()
        pg.start()
        from jwtkeymap.core.db import schema

        conn = await asyncpg.connect(pg.url)
        await schema.migrate(conn, channel=CHANNEL)
        await conn.close()
        store = await Store.open(pg.url, min_size=0, max_size=2, timeout=2)
        reconciler = Reconciler(store)
        token = await new_key(store)
        pg.stop()
        with pytest.raises(DatabaseUnavailable):
            await reconciler.apply(desired(ALICE, token))
        with pytest.raises(DatabaseUnavailable):
            await reconciler.delete("k8s:uid-1")
        pg.start()
        assert (await reconciler.apply(desired(ALICE, token))).outcome is ReconcileOutcome.CREATED
        await store.close()
    finally:
        pg.destroy()


async def test_outcomes_are_counted(store: Store, reconciler: Reconciler) -> None:
    from jwtkeymap.core.reconcile.writer import RECONCILES

    def count(outcome: str) -> float:
        return RECONCILES.labels(outcome=outcome, actor="jwtkeymap:operator")._value.get()

    before = {o: count(o) for o in ("created", "unchanged", "deleted")}
    token = await new_key(store)
    await reconciler.apply(desired(ALICE, token))
    await reconciler.apply(desired(ALICE, token))
    await reconciler.apply(desired(ALICE, token), dry_run=True)  # dry runs are not counted
    await reconciler.delete("k8s:uid-1")
    assert {o: count(o) - before[o] for o in before} == {"created": 1, "unchanged": 1, "deleted": 1}


async def test_unchanged_takes_no_lock(
    store: Store, reconciler: Reconciler, database_url: str
) -> None:
    token = await new_key(store)
    want = desired(ALICE, token)
    await reconciler.apply(want)
    blocker = await asyncpg.connect(database_url)
    try:
        async with blocker.transaction():
            await blocker.execute('SELECT 1 FROM "LiteLLM_JWTKeyMapping" FOR UPDATE')
            # A resync must not wait for a lock someone else holds on the row.
            async with asyncio.timeout(2):
                assert (await reconciler.apply(want)).outcome is ReconcileOutcome.UNCHANGED
    finally:
        await blocker.close()


async def test_a_write_waits_for_the_row_lock_and_decides_on_what_it_then_finds(
    store: Store, reconciler: Reconciler, db: asyncpg.Connection, database_url: str
) -> None:
    token, other = await new_key(store), await new_key(store)
    await reconciler.apply(desired(ALICE, token))
    blocker = await asyncpg.connect(database_url)
    try:
        deleting = blocker.transaction()
        await deleting.start()
        await blocker.execute('DELETE FROM "LiteLLM_JWTKeyMapping"')
        # The plain read still sees the row (the delete is not committed) and plans an update.
        update = asyncio.ensure_future(reconciler.apply(desired(ALICE, other)))
        async with asyncio.timeout(5):
            while not await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'jwtkeymap' "
                "AND wait_event_type = 'Lock' AND datname = current_database()"
            ):
                assert not update.done(), "the write did not wait for the row lock"
        await deleting.commit()
        # Granted the lock, it finds no row any more: it creates one, never updates nothing.
        result = await update
    finally:
        await blocker.close()
    assert result.outcome is ReconcileOutcome.CREATED
    assert await db.fetchval('SELECT token FROM "LiteLLM_JWTKeyMapping"') == other
    assert await db.fetchval("SELECT owner FROM jwtkeymap_mapping_owner") == "k8s:uid-1"


async def test_an_auto_registered_row_is_owned_and_adopted_only_where_allowed(
    store: Store, reconciler: Reconciler, db: asyncpg.Connection
) -> None:
    _, created = await store.register(ALICE, NewKey(team_id="sandbox"))
    assert created
    owner = await db.fetchval("SELECT owner FROM jwtkeymap_mapping_owner")
    assert owner == AUTO_REGISTERED
    token = await new_key(store)
    # Asking to adopt is denied while only unowned rows may be adopted: nothing written.
    only_unowned = frozenset({Adoptable.UNOWNED})
    denied = await reconciler.apply(desired(ALICE, token, adopt=True, may_adopt=only_unowned))
    assert denied.outcome is ReconcileOutcome.POLICY_DENIED
    assert "an auto-registered mapping" in denied.message
    assert await db.fetchval("SELECT owner FROM jwtkeymap_mapping_owner") == AUTO_REGISTERED
    assert await db.fetchval('SELECT token FROM "LiteLLM_JWTKeyMapping"') != token
    allowed = frozenset({Adoptable.AUTO_REGISTERED})
    adopted = await reconciler.apply(desired(ALICE, token, adopt=True, may_adopt=allowed))
    assert adopted.outcome is ReconcileOutcome.ADOPTED
    assert await db.fetchval("SELECT owner FROM jwtkeymap_mapping_owner") == "k8s:uid-1"
    assert await db.fetchval('SELECT token FROM "LiteLLM_JWTKeyMapping"') == token


class Statements:
    """What a store's connections send, one label per statement, through asyncpg's query logger."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, record: LoggedQuery) -> None:
        query = record.query
        if "WITH owned AS" in query:
            self.seen.append("locked read" if "FOR UPDATE" in query else "read")
        else:
            self.seen.append(query.split(maxsplit=1)[0].rstrip(";"))

    async def of(self, work: Awaitable[T]) -> tuple[T, list[str]]:
        """Run ``work`` and return what it sent."""
        self.seen = []
        done = await work
        # asyncpg hands each record to the logger with call_soon: one pass of the loop delivers all.
        await asyncio.sleep(0)
        return done, self.seen


@pytest.fixture
async def counted(database_url: str) -> AsyncIterator[tuple[Store, Statements]]:
    statements = Statements()

    async def log_queries(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(statements)

    pool = await asyncpg.create_pool(
        database_url, min_size=1, max_size=1, reset=_noop_reset, init=log_queries
    )
    store = Store(pool)
    await store.schema_info()  # the first checkout inspects the schema
    yield store, statements
    await store.close()


async def test_round_trips_per_reconcile(counted: tuple[Store, Statements]) -> None:
    """Creation, no-op, conflict and deletion take no transaction; an update locks, writes once."""
    store, statements = counted
    reconciler = Reconciler(store)
    token, other = await new_key(store), await new_key(store)

    created, sent = await statements.of(reconciler.apply(desired(ALICE, token)))
    assert created.outcome is ReconcileOutcome.CREATED
    assert sent == ["read", "WITH"]  # the row and its owner in one statement

    unchanged, sent = await statements.of(reconciler.apply(desired(ALICE, token)))
    assert (unchanged.outcome, sent) == (ReconcileOutcome.UNCHANGED, ["read"])

    updated, sent = await statements.of(reconciler.apply(desired(ALICE, other)))
    assert updated.outcome is ReconcileOutcome.UPDATED
    assert sent == ["read", "BEGIN", "locked read", "WITH", "COMMIT"]

    rival = desired(ALICE, other, owner="k8s:uid-2", ref="team-b/alice")
    refused, sent = await statements.of(reconciler.apply(rival))
    assert (refused.outcome, sent) == (ReconcileOutcome.CONFLICT, ["read"])

    bob = desired(BOB, token, owner="k8s:uid-3", ref="team-b/bob")
    planned, sent = await statements.of(reconciler.apply(bob, dry_run=True))
    assert planned.outcome is ReconcileOutcome.CREATED
    assert sent == ["read", "BEGIN", "locked read", "WITH", "ROLLBACK"]

    deleted, sent = await statements.of(reconciler.delete("k8s:uid-1"))
    assert (deleted.outcome, sent) == (ReconcileOutcome.DELETED, ["DELETE"])
