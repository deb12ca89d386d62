"""Conditions in cert-manager's shape: one entry per ``type``, transitions timestamped.

A merge patch replaces the whole list, so callers always write the full list
this module returns, and ``lastTransitionTime`` moves only when ``status``
really changes (a new reason or message alone is not a transition).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

READY: Final = "Ready"
_REASON_RE: Final = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
_MAX_MESSAGE: Final = 32768


class Reason(enum.StrEnum):
    """Reasons of the Ready condition (CamelCase, Kubernetes style)."""

    SYNCED = "Synced"
    KEY_NOT_FOUND = "KeyNotFound"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_KEY_MISSING = "SecretKeyMissing"
    SECRET_UNREADABLE = "SecretUnreadable"  # the API refused or failed (RBAC, outage): retried
    CONFLICT = "Conflict"
    POLICY_DENIED = "PolicyDenied"  # no JWTKeyMappingPolicy allows it: nothing was written
    INVALID_SPEC = "InvalidSpec"
    DATABASE_UNAVAILABLE = "DatabaseUnavailable"


@dataclasses.dataclass(frozen=True, slots=True)
class Condition:
    """One condition to record."""

    type: str
    status: bool | None  # None is "Unknown"
    reason: str
    message: str

    def __post_init__(self) -> None:
        if not _REASON_RE.fullmatch(self.reason):  # like the API server: no trailing newline
            raise ValueError(f"condition reason {self.reason!r} is not CamelCase")

    @property
    def status_text(self) -> str:
        """``"True"``, ``"False"`` or ``"Unknown"``."""
        return "Unknown" if self.status is None else str(self.status)


def now_rfc3339(now: dt.datetime | None = None) -> str:
    """A Kubernetes timestamp (seconds, UTC, ``Z``)."""
    moment = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def find(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    """The condition of ``type_``, if present."""
    return next((c for c in conditions or () if c.get("type") == type_), None)


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    condition: Condition,
    *,
    generation: int | None,
    now: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """Return the full list with ``condition`` set, keeping its transition time if unchanged."""
    previous = find(conditions, condition.type)
    changed = previous is None or previous.get("status") != condition.status_text
    entry: dict[str, Any] = {
        "type": condition.type,
        "status": condition.status_text,
        "reason": condition.reason,
        "message": condition.message[:_MAX_MESSAGE],
        "lastTransitionTime": (
            now_rfc3339(now)
            if changed or previous is None
            else previous.get("lastTransitionTime", now_rfc3339(now))
        ),
    }
    if generation is not None:
        entry["observedGeneration"] = generation
    others = [dict(c) for c in conditions or () if c.get("type") != condition.type]
    return sorted([*others, entry], key=lambda c: (c["type"] != READY, c["type"]))


def is_transition(conditions: Sequence[Mapping[str, Any]] | None, condition: Condition) -> bool:
    """Whether recording ``condition`` changes its status or reason (worth an Event)."""
    previous = find(conditions, condition.type)
    return (
        previous is None
        or previous.get("status") != condition.status_text
        or previous.get("reason") != condition.reason
    )


def is_current(
    conditions: Sequence[Mapping[str, Any]] | None,
    condition: Condition,
    *,
    generation: int | None,
) -> bool:
    """Whether the recorded condition already says exactly this (no status write needed)."""
    previous = find(conditions, condition.type)
    return (
        previous is not None
        and previous.get("status") == condition.status_text
        and previous.get("reason") == condition.reason
        and previous.get("message") == condition.message
        and previous.get("observedGeneration") == generation
    )
