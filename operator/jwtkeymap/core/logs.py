"""Logging setup shared by every entry point: one JSON object per line.

Uses python-json-logger (declared in pyproject.toml; kopf uses it too). Nothing here ever formats
a token or key: callers pass fingerprints only.
"""

from __future__ import annotations

import datetime
import enum
import logging
import sys
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

# kopf's per-object loggers pass its whole OperatorSettings (and a flag) as ``extra``:
# not log content, and not serialisable (it holds queues).
_NOT_FIELDS = (*RESERVED_ATTRS, "settings", "k8s_skip", "taskName")


def _json_default(value: Any) -> Any:
    """Serialise what JSON cannot, without expanding objects: a dataclass or object passed
    as ``extra`` is named by its type, so its fields (a key hash, say) never reach a log."""
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return str(value.value)
    return f"<{type(value).__name__}>"


def configure_logging(level: str = "info", *, json: bool = True) -> None:
    """Send logs to stderr, as JSON lines (or plain text for humans)."""
    handler = logging.StreamHandler(sys.stderr)
    if json:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                reserved_attrs=_NOT_FIELDS,
                json_default=_json_default,
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would print every request (and could echo query strings).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
