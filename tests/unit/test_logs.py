"""JSON logs: every record formats, and objects passed as ``extra`` are never expanded."""

from __future__ import annotations

import dataclasses
import json
import logging

import kopf
import pytest

from jwtkeymap.core.logs import configure_logging


@dataclasses.dataclass
class Secretive:
    token_hash: str


@pytest.fixture
def formatter():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("info")
    yield root.handlers[0].formatter
    root.handlers[:], _ = saved[0], root.setLevel(saved[1])


def record(**extra) -> logging.LogRecord:
    rec = logging.LogRecord(
        "kopf.objects", logging.INFO, __file__, 1, "Handler succeeded.", (), None
    )
    rec.__dict__.update(extra)
    return rec


def test_kopf_object_records_format(formatter) -> None:
    # What kopf's ObjectLogger attaches to every per-object message.
    line = formatter.format(
        record(settings=kopf.OperatorSettings(), k8s_skip=True, k8s_ref={"name": "m-0"})
    )
    out = json.loads(line)
    assert out["message"] == "Handler succeeded." and out["k8s_ref"] == {"name": "m-0"}
    assert "settings" not in out


def test_objects_in_extra_are_named_not_expanded(formatter) -> None:
    out = json.loads(formatter.format(record(key=Secretive("ab" * 32))))
    assert out["key"] == "<Secretive>"
