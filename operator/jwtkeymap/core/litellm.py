"""Evicting LiteLLM's own cache of JWT key mappings, through its Redis.

A LiteLLM proxy caches each scope of a mapping lookup under its own key in its
auth cache (hits and ``__NO_MAPPING__`` misses alike): a global row under
``jwt_key_mapping:{claim_name}:{claim_value}``, an issuer-scoped one under
``jwt_key_mapping:{issuer}:{claim_name}:{claim_value}`` (LiteLLM's
``jwt_key_mapping_cache_key``). Proxies drop in-memory copies when a
``{"cache_key": …}`` message arrives on ``litellm_proxy.auth_cache_invalidation``
(prefixed by the Redis namespace when one is set). Deleting the key and
publishing the message makes a change visible to LiteLLM at once instead of
after its TTL. The formats are LiteLLM's; tests/integration/litellm compares them
with the pinned LiteLLM's own functions.

This is best effort by design: Redis being slow or down must never delay or
fail a reconcile (the database is the source of truth, and LiteLLM's TTL bounds
the staleness). Failures are logged and counted, never raised.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any, Final

from prometheus_client import Counter

from jwtkeymap.core.claims import MappingIdentity

log = logging.getLogger(__name__)

CHANNEL: Final = "litellm_proxy.auth_cache_invalidation"

EVICTIONS = Counter(
    "jwtkeymap_litellm_cache_evictions",
    "LiteLLM cache evictions through Redis, by result.",
    ["result"],
)


def cache_key(identity: MappingIdentity) -> str:
    """LiteLLM's cache key for a mapping row: the issuer's scope, or the global one."""
    if not identity.issuer:
        return f"jwt_key_mapping:{identity.claim_name}:{identity.claim_value}"
    return f"jwt_key_mapping:{identity.issuer}:{identity.claim_name}:{identity.claim_value}"


class LiteLLMCache:
    """Delete and broadcast LiteLLM mapping cache keys; never raises."""

    def __init__(
        self,
        redis_url: str,
        *,
        timeout: float = 2.0,
        namespace: str | None = None,
        client: Any = None,
    ) -> None:
        self._timeout = timeout
        self._channel = f"{namespace}:{CHANNEL}" if namespace else CHANNEL
        if client is None:
            import redis.asyncio as redis

            client = redis.Redis.from_url(
                redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
        self._redis = client

    async def evict(self, identities: Sequence[MappingIdentity]) -> None:
        """Delete each identity's key and publish it on LiteLLM's channel."""
        keys = list(dict.fromkeys(cache_key(i) for i in identities))
        if not keys:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.delete(*keys)
                for key in keys:
                    await self._redis.publish(self._channel, json.dumps({"cache_key": key}))
        except Exception as exc:  # Redis down, timeout, auth error: all non-fatal here
            EVICTIONS.labels(result="error").inc(len(keys))
            log.warning(
                "could not evict %d LiteLLM cache key(s) through Redis (%s); LiteLLM will see "
                "the change when its cache entry expires",
                len(keys),
                type(exc).__name__,
            )
            return
        EVICTIONS.labels(result="ok").inc(len(keys))

    async def close(self) -> None:
        """Close the Redis connection pool."""
        try:
            await self._redis.aclose()
        except Exception:  # closing a broken connection is not worth an error
            log.debug("closing the Redis client failed", exc_info=True)
