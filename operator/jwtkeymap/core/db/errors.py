"""asyncpg's exceptions as ``core.errors``, classified by SQLSTATE, never by message text.

A database that is away (connection refused, server shutting down, a serialization
failure, a read-only standby) is ``DatabaseUnavailable``: callers retry and never
allow. Everything else that fails is a ``StoreError`` naming the operation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Final

import asyncpg

from jwtkeymap.core.errors import (
    DatabaseUnavailable,
    JwtKeyMapError,
    KeyNotFound,
    MappingConflict,
    SchemaError,
    StoreError,
)

# SQLSTATE classes and codes that mean "the database is not there right now".
_OUTAGE_CLASSES: Final = ("08", "53", "57P")
_OUTAGE_CODES: Final = frozenset({"40001", "40P01", "55P03", "25006"})


def is_outage(exc: BaseException) -> bool:
    """Tell whether ``exc`` means the database cannot be used right now (retry later)."""
    if isinstance(exc, (OSError, TimeoutError, asyncpg.InterfaceError)):
        return True
    state = getattr(exc, "sqlstate", None) or ""
    # asyncpg raises InternalClientError when a pooled connection's server went away
    # underneath it (the protocol is left mid-operation): that is an outage too.
    return (
        state.startswith(_OUTAGE_CLASSES)
        or state in _OUTAGE_CODES
        or isinstance(exc, asyncpg.InternalClientError)
    )


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn asyncpg exceptions raised inside the block into ``core.errors``."""
    try:
        yield
    except JwtKeyMapError:
        raise
    except asyncpg.UniqueViolationError as exc:  # 23505
        raise MappingConflict(f"{what}: the identity is already mapped") from exc
    except asyncpg.ForeignKeyViolationError as exc:  # 23503
        raise KeyNotFound(f"{what}: the key does not exist") from exc
    except asyncpg.UndefinedTableError as exc:  # 42P01
        raise SchemaError(f"{what}: tables missing, run `jwtkeymap migrate`") from exc
    except Exception as exc:
        if is_outage(exc):
            raise DatabaseUnavailable(
                f"{what}: database unavailable ({type(exc).__name__})"
            ) from exc
        raise StoreError(f"{what} failed: {type(exc).__name__}") from exc


def connect_error(exc: Exception) -> JwtKeyMapError:
    """The error for a pool or connection that could not be opened."""
    if isinstance(exc, (ValueError, asyncpg.InvalidAuthorizationSpecificationError)):
        return StoreError(f"cannot connect to the database: {exc}")
    if is_outage(exc):
        return DatabaseUnavailable(f"database unreachable ({type(exc).__name__}: {exc})")
    return StoreError(f"cannot connect to the database: {exc}")
