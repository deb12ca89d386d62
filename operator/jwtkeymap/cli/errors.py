"""Core errors as one-line command failures (the CLI's only error boundary)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

from jwtkeymap.core.errors import (
    ClaimError,
    ConfigError,
    DatabaseUnavailable,
    InvalidToken,
    JwtKeyMapError,
    KeyNotFound,
    MappingConflict,
    MappingNotFound,
    SchemaError,
    StoreError,
)

# Most specific first: the first class an error is an instance of names it.
_KINDS: tuple[tuple[type[JwtKeyMapError], str], ...] = (
    (ConfigError, "configuration error"),
    (DatabaseUnavailable, "database unavailable"),
    (SchemaError, "schema error"),
    (InvalidToken, "invalid token"),
    (KeyNotFound, "key not found"),
    (MappingConflict, "conflict"),
    (MappingNotFound, "not found"),
    (ClaimError, "invalid claim"),
    (StoreError, "database error"),
)


def describe_error(exc: JwtKeyMapError) -> str:
    """One line for a core error: its kind, then its message."""
    for cls, label in _KINDS:
        if isinstance(exc, cls):
            return f"{label}: {exc}"
    return str(exc)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a core error into ``Error: <kind>: <message>`` and exit code 1, not a traceback."""
    try:
        yield
    except JwtKeyMapError as exc:
        raise click.ClickException(describe_error(exc)) from None
