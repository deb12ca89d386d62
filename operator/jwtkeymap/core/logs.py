"""Logging setup shared by every entry point: one JSON object per line.

Uses python-json-logger (already a kopf dependency). Nothing here ever formats
a token or key: callers pass fingerprints only.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter


def configure_logging(level: str = "info", *, json: bool = True) -> None:
    """Send logs to stderr, as JSON lines (or plain text for humans)."""
    handler = logging.StreamHandler(sys.stderr)
    if json:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would print every request (and could echo query strings).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
