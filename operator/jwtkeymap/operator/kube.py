"""The few Kubernetes API calls the handlers make themselves (kopf does the rest).

Reading a referenced Secret on demand (never caching every Secret of the cluster
in memory) and labelling it for the operator's Secret watch, annotating a mapping
when its Secret changed, and the reads a standby replica's webhook answers from
(its kopf indexes are empty: see webhooks.py).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from jwtkeymap.core.errors import JwtKeyMapError
from jwtkeymap.operator.awaited import AwaitedSecrets
from jwtkeymap.operator.resource import GROUP, PLURAL, VERSION, WATCHED_LABEL

log = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True)
class Connection:
    """Explicit API credentials (tests, or a kubeconfig-less setup)."""

    server: str
    token: str = dataclasses.field(repr=False)
    ca_path: Path | None = None


async def api_client(connection: Connection | None = None) -> client.ApiClient:
    """An API client from ``connection``, else the in-cluster account, else the kubeconfig."""
    if connection is not None:
        conf = client.Configuration(host=connection.server)
        conf.api_key = {"BearerToken": connection.token}
        conf.api_key_prefix = {"BearerToken": "Bearer"}
        if connection.ca_path is not None:
            conf.ssl_ca_cert = str(connection.ca_path)
        return client.ApiClient(conf)
    conf = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=conf)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        await config.load_kube_config(client_configuration=conf)
    return client.ApiClient(conf)


class KubeUnavailable(JwtKeyMapError):
    """The Kubernetes API failed transiently (retry)."""


async def _api_call(
    what: str, call: Awaitable[_T], *, none_on: Collection[int] = (404,)
) -> _T | None:
    """Await one API call: None if it answers a status in ``none_on``, else its result.

    The one place that knows the client's exceptions: any other failure, a lost
    connection or an HTTP error status, becomes :class:`KubeUnavailable` naming ``what``
    was being done (never the response body, which may echo a Secret).
    """
    try:
        return await call
    except aiohttp.ClientError as exc:
        raise KubeUnavailable(f"{what}: {exc}") from None
    except ApiException as exc:
        if exc.status in none_on:
            return None
        raise KubeUnavailable(f"{what}: HTTP {exc.status}") from None


class Kube:
    """A thin async client for Secrets and JWTKeyMapping metadata."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self._core = client.CoreV1Api(api)
        self._custom = client.CustomObjectsApi(api)
        # Referenced Secrets that were missing when read: looked for until they appear.
        self.awaited = AwaitedSecrets()

    @classmethod
    async def connect(cls, connection: Connection | None = None) -> Kube:
        """Use ``connection``, else the in-cluster service account, else the kubeconfig."""
        return cls(await api_client(connection))

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._api.close()

    async def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """The data (base64 values) of a Secret a mapping references, or None if it is missing.

        The operator's Secret watch selects on :data:`WATCHED_LABEL`, so a Secret read
        here without it is labelled first, and its next rotation is seen; a missing one
        is awaited (:attr:`awaited`) until it appears.
        """
        secret: Any = await _api_call(
            f"reading Secret {namespace}/{name}", self._core.read_namespaced_secret(name, namespace)
        )
        if secret is None:
            self.awaited.add(namespace, name)
            return None
        if (secret.metadata.labels or {}).get(WATCHED_LABEL) != "true":
            try:
                labelled = await self._label_secret(namespace, name)
            except KubeUnavailable as exc:
                # The key is still usable; only its next rotation waits for a resync.
                log.warning("Secret %s/%s is not watched for rotation: %s", namespace, name, exc)
                labelled = secret
            if labelled is None:  # deleted between the read and the label
                self.awaited.add(namespace, name)
                return None
            secret = labelled  # the data as of the label: a change after it is watched
        self.awaited.discard(namespace, name)
        return dict(secret.data or {})

    async def label_secret(self, namespace: str, name: str) -> bool:
        """Put :data:`WATCHED_LABEL` on a Secret (a no-op if it is there); False if it is gone."""
        return await self._label_secret(namespace, name) is not None

    async def _label_secret(self, namespace: str, name: str) -> Any:
        patch = {"metadata": {"labels": {WATCHED_LABEL: "true"}}}
        return await _api_call(
            f"labelling Secret {namespace}/{name}",
            self._core.patch_namespaced_secret(  # type: ignore[call-arg]
                name, namespace, patch, _content_type="application/merge-patch+json"
            ),
        )

    async def list_cluster_objects(
        self, plural: str, *, field_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """Every jwtkeymap.io object of ``plural`` in the cluster (matching ``field_selector``).

        An API server that cannot select on that field (before Kubernetes 1.31) answers
        400: then every object is listed and the caller filters, as it would anyway.
        """
        listing = (
            self._custom.list_cluster_custom_object(
                GROUP, VERSION, plural, field_selector=field_selector
            )
            if field_selector
            else self._custom.list_cluster_custom_object(GROUP, VERSION, plural)
        )
        found: Any = await _api_call(
            f"listing {plural}", listing, none_on=(400,) if field_selector else ()
        )
        if found is None:
            log.info("this API server cannot select %s by a field; listing all", plural)
            return await self.list_cluster_objects(plural)
        return list(found.get("items") or [])

    async def namespace_labels(self, name: str) -> dict[str, str] | None:
        """A namespace's labels, or None if it does not exist."""
        namespace: Any = await _api_call(
            f"reading namespace {name}", self._core.read_namespace(name)
        )
        return None if namespace is None else dict(namespace.metadata.labels or {})

    async def annotate_mapping(
        self, namespace: str, name: str, annotations: Mapping[str, str]
    ) -> bool:
        """Merge ``annotations`` into a JWTKeyMapping; False if it is gone."""
        patched = await _api_call(
            f"annotating {PLURAL}/{namespace}/{name}",
            self._custom.patch_namespaced_custom_object(  # type: ignore[call-arg]
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"metadata": {"annotations": dict(annotations)}},
                _content_type="application/merge-patch+json",
            ),
        )
        return patched is not None
