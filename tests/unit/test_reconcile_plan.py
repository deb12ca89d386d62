"""The reconcile decision without a database: every ownership, adoption and conflict rule."""

from __future__ import annotations

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db.rows import MappingRow
from jwtkeymap.core.owners import AUTO_REGISTER_ACTOR, AUTO_REGISTERED
from jwtkeymap.core.reconcile.desired import (
    ADOPT_ANYTHING,
    Adoptable,
    DesiredMapping,
    ReconcileOutcome,
)
from jwtkeymap.core.reconcile.plan import Write, plan

ALICE = MappingIdentity("https://idp", "sub", "alice")
BOB = MappingIdentity("https://idp", "sub", "bob")
KEY = "a" * 64
OTHER_KEY = "b" * 64
ME = "k8s:uid-me"


def want(identity: MappingIdentity = ALICE, **changes: object) -> DesiredMapping:
    fields: dict[str, object] = {"token_hash": KEY, "owner": ME, "ref": "ns/me"}
    fields.update(changes)
    return DesiredMapping(identity, **fields)  # type: ignore[arg-type]


def row(
    row_id: str,
    identity: MappingIdentity = ALICE,
    *,
    owner: str | None = ME,
    token_hash: str = KEY,
    active: bool = True,
    ref: str | None = "ns/me",
    created_by: str | None = None,
) -> MappingRow:
    return MappingRow(
        id=row_id,
        identity=identity,
        token_hash=token_hash,
        is_active=active,
        owner=owner,
        ref=ref,
        created_by=created_by,
    )


def test_nothing_there_inserts_and_takes_ownership() -> None:
    p = plan([], None, True, want())
    assert p.result.outcome is ReconcileOutcome.CREATED
    assert (p.write, p.row_id, p.take_ownership, p.drop) == (Write.INSERT, None, True, ())
    assert p.statements == 1


def test_own_row_as_desired_is_unchanged_and_writes_nothing() -> None:
    mine = row("m1")
    p = plan([mine], mine, True, want())
    assert p.result.outcome is ReconcileOutcome.UNCHANGED
    assert (p.write, p.take_ownership, p.statements) == (Write.NONE, False, 0)
    assert p.result.mapping_id == "m1"


def test_own_row_that_differs_is_updated_and_names_what_changed() -> None:
    mine = row("m1", token_hash=OTHER_KEY, active=False)
    p = plan([mine], mine, True, want(description="new"))
    assert p.result.outcome is ReconcileOutcome.UPDATED
    assert (p.write, p.row_id, p.take_ownership) == (Write.UPDATE, "m1", True)
    assert p.result.changes == ("key", "description", "active")


def test_stale_rows_of_ours_are_dropped_even_when_unchanged() -> None:
    mine, stale = row("m1"), row("m0", BOB)
    p = plan([stale, mine], mine, True, want())
    assert p.result.outcome is ReconcileOutcome.UNCHANGED
    assert p.drop == ("m0",) and p.statements == 1


def test_another_owner_is_a_conflict_without_its_name_nor_adoption_hint() -> None:
    theirs = row("t1", owner="k8s:uid-other", ref="other/res")
    p = plan([], theirs, True, want(adopt=True, may_adopt=ADOPT_ANYTHING))
    assert p.result.outcome is ReconcileOutcome.CONFLICT
    # The holder may be another tenant's resource: its namespace and name stay unsaid.
    assert p.result.conflict_owner == "another JWTKeyMapping"
    assert "other" not in p.result.message.replace("another", "")
    assert "adopt" not in p.result.message
    assert p.statements == 0 and not p.take_ownership


def test_unowned_row_without_adopt_is_a_conflict_with_the_hint() -> None:
    unowned = row("u1", owner=None, ref=None, created_by="litellm-ui")
    p = plan([], unowned, True, want())
    assert p.result.outcome is ReconcileOutcome.CONFLICT
    assert p.result.conflict_owner == "a mapping created outside jwtkeymap (created by litellm-ui)"
    assert 'jwtkeymap.io/adopt: "true"' in p.result.message
    assert p.result.message.startswith("https://idp sub=alice is already mapped by")


def test_conflict_is_reported_before_a_missing_key() -> None:
    theirs = row("t1", owner="offline:ns/x", ref=None)
    p = plan([], theirs, False, want())
    assert p.result.outcome is ReconcileOutcome.CONFLICT
    assert p.result.conflict_owner == "an offline manifest"


def test_missing_key_writes_nothing_and_keeps_our_old_row() -> None:
    mine = row("m1", BOB)
    p = plan([mine], None, False, want())
    assert p.result.outcome is ReconcileOutcome.KEY_NOT_FOUND
    assert p.statements == 0 and p.drop == () and not p.take_ownership
    assert p.result.message.startswith("virtual key ")
    assert KEY not in p.result.message


def test_adopting_an_identical_unowned_row_only_takes_ownership() -> None:
    unowned = row("u1", owner=None)
    p = plan([], unowned, True, want(adopt=True, may_adopt={Adoptable.UNOWNED}))
    assert p.result.outcome is ReconcileOutcome.ADOPTED
    assert (p.write, p.row_id, p.take_ownership, p.statements) == (Write.NONE, "u1", True, 0)
    assert p.result.changes == ()


def test_adopting_a_different_row_updates_it_and_drops_what_we_owned() -> None:
    unowned, old = row("u1", owner=None, active=False), row("m0", BOB)
    p = plan([old], unowned, True, want(adopt=True, may_adopt=ADOPT_ANYTHING))
    assert p.result.outcome is ReconcileOutcome.ADOPTED
    assert (p.write, p.row_id, p.drop) == (Write.UPDATE, "u1", ("m0",))
    assert p.result.changes == ("active",)
    assert p.result.message == "adopted a mapping created outside jwtkeymap"


def test_a_moved_identity_moves_our_oldest_row_in_place() -> None:
    first, second = row("m1", BOB), row("m2", MappingIdentity("", "sub", "carol"))
    p = plan([first, second], None, True, want())
    assert p.result.outcome is ReconcileOutcome.UPDATED
    assert (p.write, p.row_id, p.drop) == (Write.UPDATE, "m1", ("m2",))
    assert p.result.previous_identity == BOB
    assert p.result.changes == ("identity",)
    assert p.result.touched_identities == (BOB, ALICE)


def test_only_writes_touch_identities() -> None:
    mine = row("m1")
    assert plan([mine], mine, True, want()).result.touched_identities == ()
    assert plan([], None, True, want()).result.touched_identities == (ALICE,)


def test_adoption_is_denied_unless_a_policy_allows_that_kind_of_row() -> None:
    unowned = row("u1", owner=None, ref=None, created_by="psql")
    auto = row("a1", owner=AUTO_REGISTERED, ref=AUTO_REGISTERED)
    legacy_auto = row("a0", owner=None, ref=None, created_by=AUTO_REGISTER_ACTOR)
    only_unowned = want(adopt=True, may_adopt={Adoptable.UNOWNED})
    for target in (auto, legacy_auto):
        p = plan([], target, True, only_unowned)
        assert p.result.outcome is ReconcileOutcome.POLICY_DENIED
        assert p.result.outcome.failed and not p.result.outcome.wrote
        assert (p.statements, p.take_ownership) == (0, False)
        assert p.result.message == (
            "https://idp sub=alice is already mapped by an auto-registered mapping, and no "
            "policy lets this declaration adopt auto-registered mappings"
        )
    assert plan([], unowned, True, only_unowned).result.outcome is ReconcileOutcome.ADOPTED
    # Secure by default: a declaration that no policy lets adopt adopts nothing.
    denied = plan([], unowned, True, want(adopt=True)).result
    assert denied.outcome is ReconcileOutcome.POLICY_DENIED
    assert denied.message.endswith("adopt unowned mappings")


def test_an_allowed_auto_registered_row_is_adopted_by_request_only() -> None:
    auto = row("a1", owner=AUTO_REGISTERED, ref=AUTO_REGISTERED)
    asked = plan([], auto, True, want(adopt=True, may_adopt={Adoptable.AUTO_REGISTERED}))
    assert asked.result.outcome is ReconcileOutcome.ADOPTED
    assert asked.result.message == "adopted an auto-registered mapping"
    assert (asked.row_id, asked.take_ownership) == ("a1", True)
    unasked = plan([], auto, True, want(may_adopt=ADOPT_ANYTHING)).result
    assert unasked.outcome is ReconcileOutcome.CONFLICT
    assert 'jwtkeymap.io/adopt: "true"' in unasked.message
