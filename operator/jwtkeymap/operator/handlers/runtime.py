"""What the handlers share: the database pool, the reconciler, the API client, Redis.

Opened by the operator's startup handler and kept in kopf's operator ``memo``:
kopf hands that memo (or a shallow copy of it, per resource) to every handler of
this operator and of no other, so the CLI, the tests and the benchmark can run
several operators in one process without module-level state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, cast

import kopf

from jwtkeymap.core.db.store import Store
from jwtkeymap.core.errors import JwtKeyMapError
from jwtkeymap.core.litellm import LiteLLMCache
from jwtkeymap.core.reconcile.writer import OPERATOR_ACTOR, Reconciler
from jwtkeymap.core.settings import Settings
from jwtkeymap.operator.handlers.handled import HandledDigest
from jwtkeymap.operator.handlers.registry import MappingRegistry
from jwtkeymap.operator.handlers.resync import Resync
from jwtkeymap.operator.kube import Kube
from jwtkeymap.operator.resource import FINALIZER

KubeConnector = Callable[[], Awaitable[Kube]]

STARTUP_ID: Final = "configure"
CLEANUP_ID: Final = "close"
PROBE_ID: Final = "database"
_MEMO_KEY: Final = "jwtkeymap.runtime"


@dataclasses.dataclass(frozen=True)
class Runtime:
    """The objects every handler works with; built complete by :meth:`open`."""

    settings: Settings
    store: Store
    reconciler: Reconciler
    kube: Kube
    litellm: LiteLLMCache | None  # only with a Redis URL
    # At most one reconcile per pooled connection: a resume storm (thousands of handlers
    # at once) then queues here instead of timing out on the pool and flapping the
    # Ready condition to DatabaseUnavailable.
    limit: asyncio.Semaphore
    registry: MappingRegistry  # the resources this replica's handlers have seen
    resync: Resync  # the resumes' bulk read and the drift loop

    @classmethod
    async def open(cls, settings: Settings, connect_kube: KubeConnector) -> Runtime:
        """Open the pool (even while the database is down), Redis and the API client."""
        if not settings.database_url:
            raise kopf.PermanentError("no database configured: set JWTKEYMAP_DATABASE_URL")
        store = await Store.open(
            settings.database_url,
            min_size=0,
            max_size=settings.db_pool_max_size,
            timeout=settings.db_timeout_seconds,
            statement_cache_size=settings.db_statement_cache_size,
        )
        litellm = LiteLLMCache(settings.redis_url) if settings.redis_url else None
        try:
            kube = await connect_kube()
        except BaseException:
            await _close(litellm, store)
            raise
        reconciler = Reconciler(
            store, actor=OPERATOR_ACTOR, evict=litellm.evict if litellm else None
        )
        limit = asyncio.Semaphore(settings.db_pool_max_size)
        registry = MappingRegistry()
        resync = Resync(reconciler, registry, kube, interval=settings.drift_interval_seconds)
        resync.start()
        return cls(settings, store, reconciler, kube, litellm, limit, registry, resync)

    async def close(self) -> None:
        """Close everything :meth:`open` opened."""
        await self.resync.stop()
        await self.kube.close()
        await _close(self.litellm, self.store)


async def _close(litellm: LiteLLMCache | None, store: Store) -> None:
    if litellm is not None:
        await litellm.close()
    await store.close()


def backoff(settings: Settings, retry: int) -> float:
    """Exponential retry delay for attempt ``retry`` (0-based), capped."""
    delay = settings.reconcile_backoff_seconds * 2 ** min(retry, 16)
    return float(min(delay, settings.reconcile_backoff_max_seconds))


def runtime_of(memo: kopf.Memo) -> Runtime:
    """The runtime the startup handler put in the operator memo."""
    # kopf runs every startup handler before its watchers and webhooks start, so any
    # handler of this operator finds it.
    return cast(Runtime, memo[_MEMO_KEY])


async def configure(
    memo: kopf.Memo,
    settings: kopf.OperatorSettings,
    *,
    config: Settings,
    connect_kube: KubeConnector,
    **_: Any,
) -> None:
    """Startup: set kopf up for this operator and open the runtime into the memo."""
    # kopf logs whole objects at DEBUG: Secrets (plaintext keys) and specs with key
    # hashes. Never below INFO for kopf, whatever the configured level.
    kopf_logger = logging.getLogger("kopf")
    if kopf_logger.getEffectiveLevel() < logging.INFO:
        kopf_logger.setLevel(logging.INFO)
    settings.persistence.finalizer = FINALIZER
    # kopf's record of what it handled rides on our status patch (see handlers.handled).
    settings.persistence.diffbase_storage = HandledDigest()
    # kopf's default also reads a progress record in status.kopf, which this CRD's status
    # schema never keeps: the annotations alone, read and purged on every event (as before).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="kopf.zalando.org", v1=True, touch_key="touch-dummy"
    )
    # Our own Events (kopf.event, not subject to this level) mark transitions;
    # kopf's per-handler INFO chatter would drown them.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = settings.watching.server_timeout or 300
    collect_garbage_less_often()
    memo[_MEMO_KEY] = await Runtime.open(config, connect_kube)


# CPython's default (700, 10, 10) runs a young collection every 700 container allocations
# and a full one, over every object alive, every 70,000: kopf keeps each resource's body,
# and handles each event with hundreds of small dicts, so the full collections alone made a
# restart of 4,000 resources cost 1.4x the CPU (bench/operator_resume.py), more as N grows.
GC_THRESHOLDS: Final = (50_000, 20, 10)


def collect_garbage_less_often() -> None:
    """Raise the collector's thresholds for this process (never lower them)."""
    current = gc.get_threshold()
    gc.set_threshold(*(max(a, b) for a, b in zip(current, GC_THRESHOLDS, strict=True)))


async def close(memo: kopf.Memo, **_: Any) -> None:
    """Cleanup: close what the startup handler opened."""
    await runtime_of(memo).close()


async def database(memo: kopf.Memo, **_: Any) -> str:
    """Liveness detail: a database outage is reported, not fatal (restarts would not help)."""
    runtime: Runtime | None = memo.get(_MEMO_KEY)
    if runtime is None:
        return "starting"
    try:
        await runtime.store.ping()
    except JwtKeyMapError as exc:
        return f"unavailable: {type(exc).__name__}"
    return "ok"
