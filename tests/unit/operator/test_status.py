"""Conditions: one per type, transition time kept while the status holds."""

from __future__ import annotations

import datetime as dt

import pytest

from jwtkeymap.operator.status import Condition, is_current, is_transition, set_condition

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=5)


def ready(ok: bool | None, reason: str = "Synced", message: str = "fine") -> Condition:
    return Condition("Ready", ok, reason, message)


def test_first_condition_is_stamped() -> None:
    [entry] = set_condition([], ready(True), generation=3, now=T0)
    assert entry == {
        "type": "Ready",
        "status": "True",
        "reason": "Synced",
        "message": "fine",
        "lastTransitionTime": "2026-01-02T03:04:05Z",
        "observedGeneration": 3,
    }


def test_same_status_keeps_transition_time_even_with_new_reason() -> None:
    first = set_condition([], ready(False, "KeyNotFound"), generation=1, now=T0)
    second = set_condition(first, ready(False, "Conflict", "other"), generation=2, now=T1)
    assert second[0]["lastTransitionTime"] == "2026-01-02T03:04:05Z"
    assert (second[0]["reason"], second[0]["observedGeneration"]) == ("Conflict", 2)


def test_status_change_moves_transition_time() -> None:
    first = set_condition([], ready(False, "KeyNotFound"), generation=1, now=T0)
    second = set_condition(first, ready(True), generation=1, now=T1)
    assert second[0]["lastTransitionTime"] == "2026-01-02T03:09:05Z"
    third = set_condition(second, ready(None, "DatabaseUnavailable"), generation=1, now=T1)
    assert third[0]["status"] == "Unknown"


def test_other_types_are_kept_and_ready_comes_first() -> None:
    others = [
        {
            "type": "Adopted",
            "status": "True",
            "reason": "X",
            "message": "",
            "lastTransitionTime": "t",
        }
    ]
    result = set_condition(others, ready(True), generation=1, now=T0)
    assert [c["type"] for c in result] == ["Ready", "Adopted"]
    assert result[1] == others[0]


def test_transition_and_current() -> None:
    conditions = set_condition([], ready(True), generation=1, now=T0)
    assert not is_transition(conditions, ready(True, message="other text"))
    assert is_transition(conditions, ready(False, "Conflict"))
    assert is_transition([], ready(True))
    assert is_current(conditions, ready(True), generation=1)
    assert not is_current(conditions, ready(True), generation=2)
    assert not is_current(conditions, ready(True, message="other text"), generation=1)


def test_reason_must_be_camel_case() -> None:
    with pytest.raises(ValueError, match="CamelCase"):
        Condition("Ready", True, "not synced", "")
