"""Kubernetes Events posted from admission handlers.

kopf's ``kopf.event()`` only works inside resource handlers: its event queue is
bound per watched object, and the admission webhook server runs outside that
context (kopf 1.45). So the sidecar webhook posts its own core/v1 Events, in the
background: an admission answer never waits on an Event, and a failed Event is
logged, never turned into a denied pod.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any, Final

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from jwtkeymap.operator.kube import Connection, api_client

log = logging.getLogger(__name__)

COMPONENT: Final = "jwtkeymap-injector"
MAX_MESSAGE: Final = 1024


def event_body(
    target: Mapping[str, Any], *, type: str, reason: str, message: str, now: dt.datetime
) -> dict[str, Any]:
    """A core/v1 Event about ``target`` (an object with apiVersion, kind and metadata)."""
    meta = target.get("metadata") or {}
    involved = {
        "apiVersion": target.get("apiVersion"),
        "kind": target.get("kind"),
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "uid": meta.get("uid"),
    }
    stamp = now.isoformat()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name')}.", "namespace": meta.get("namespace")},
        "involvedObject": {k: v for k, v in involved.items() if v},
        "type": type,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "action": "Admission",
        "count": 1,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
    }


class EventPoster:
    """Posts Events in background tasks on the running loop.

    Built by :meth:`open`; without Kubernetes credentials it has no API client and
    only logs what it would have posted (Events are optional, the operator is not).
    """

    def __init__(self, api: client.ApiClient | None) -> None:
        self._api = api
        self._pending: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, connection: Connection | None = None) -> EventPoster:
        """Open the API client from ``connection``, else the pod's or the kubeconfig's account."""
        try:
            return cls(await api_client(connection))
        except (config.ConfigException, OSError) as exc:
            log.warning("injection Events disabled: no Kubernetes credentials (%s)", exc)
            return cls(None)

    async def close(self) -> None:
        """Let pending Events go out (briefly), then close the client."""
        if self._pending:
            await asyncio.wait(self._pending, timeout=5)
        for task in self._pending:
            task.cancel()
        if self._api is not None:
            await self._api.close()
            self._api = None

    def post(self, target: Mapping[str, Any], *, type: str, reason: str, message: str) -> None:
        """Schedule an Event about ``target``; returns at once."""
        if self._api is None:
            log.warning("not posting %s event: the API client is not started", reason)
            return
        body = event_body(
            target, type=type, reason=reason, message=message, now=dt.datetime.now(dt.UTC)
        )
        task = asyncio.get_running_loop().create_task(_send(self._api, body))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


async def _send(api: client.ApiClient, body: dict[str, Any]) -> None:
    namespace = body["metadata"]["namespace"] or "default"
    try:
        # A plain dict serialises as it is; the generated model would add nothing.
        await client.CoreV1Api(api).create_namespaced_event(namespace, body)  # type: ignore[arg-type]
    except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
        log.warning("could not post %s event: %s", body["reason"], exc)
