"""A changed Secret wakes the JWTKeyMappings that read it; only referenced Secrets are watched.

The changed Secret's version is written into an annotation of each dependent
mapping; that change makes kopf run the mapping's update handler, so a rotated
key is picked up at once, with no polling per resource.

kopf's ``labels=`` filter acts on events already received, so the watch is
narrowed on the server instead: kopf lists and watches Secrets with the label
selector :data:`WATCHED_SELECTOR`, and a Secret that no mapping references is
never sent to the operator. The operator labels each Secret a mapping reads
(:meth:`Kube.secret_data`); a referenced Secret that does not exist yet is
looked for with a backoff (:func:`look_for_awaited`) and labelled when it appears.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

import kopf
from prometheus_client import Counter

from jwtkeymap.core.errors import JwtKeyMapError
from jwtkeymap.operator.handlers.runtime import runtime_of
from jwtkeymap.operator.kube import Kube
from jwtkeymap.operator.resource import SECRET_VERSION_ANNOTATION, WATCHED_SELECTOR

SECRET_CHANGED_ID: Final = "secret-changed"
WATCH_ID: Final = "watch-referenced-secrets"
UNWATCH_ID: Final = "stop-awaiting-secrets"
SECRETS: Final = ("", "v1", "secrets")
_MEMO_KEY: Final = "jwtkeymap.awaiting"
_TICK_SECONDS: Final = 0.5  # how often the awaited Secrets are checked for one that is due

log = logging.getLogger(__name__)

SECRET_EVENTS: Final = Counter(
    "jwtkeymap_operator_secret_events",
    "Secret events received by the operator's watch, by type (listed: the initial listing).",
    ["type"],
)


async def secret_changed(
    type: str,
    namespace: str | None,
    name: str,
    body: kopf.Body,
    logger: kopf.Logger,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    """Annotate every mapping that last saw another version of this Secret."""
    SECRET_EVENTS.labels(type or "listed").inc()
    if not type:
        return  # the initial listing: resume handlers read every Secret anyway
    runtime = runtime_of(memo)
    version = str(body.metadata.get("resourceVersion") or "")
    if type == "DELETED":  # deleted, or its label removed: the mapping re-reads (and relabels) it
        version = f"deleted-{version}"
    ns = namespace or ""
    for mapping, seen in runtime.registry.secret_users(ns, name):
        if seen == version:
            continue
        try:
            await runtime.kube.annotate_mapping(ns, mapping, {SECRET_VERSION_ANNOTATION: version})
        except JwtKeyMapError as exc:
            logger.warning("could not mark %s/%s for resync: %s", namespace, mapping, exc)


async def look_for_awaited(kube: Kube, *, max_age: float) -> None:
    """Forever: label each awaited Secret that is due; one that exists leaves the list.

    Labelling is the look: a merge patch on a missing Secret is a 404, and on one that
    appeared it brings it into the watch, whose event then wakes its mappings.
    """
    awaited = kube.awaited
    while True:
        for namespace, name in awaited.due(max_age=max_age):
            try:
                found = await kube.label_secret(namespace, name)
            except Exception as exc:  # one failed look must not end the loop
                log.warning("looking for Secret %s/%s: %s", namespace, name, exc)
                found = False
            if found:
                awaited.discard(namespace, name)
            else:
                awaited.later(namespace, name)
        await asyncio.sleep(_TICK_SECONDS)


async def watch_referenced(
    memo: kopf.Memo, settings: kopf.OperatorSettings, *, max_age: float, **_: Any
) -> None:
    """Startup: watch labelled Secrets only, and start looking for the awaited ones."""
    settings.watching.label_selectors[SECRETS] = WATCHED_SELECTOR
    try:
        kube = runtime_of(memo).kube
    except KeyError:  # the runtime's startup handler failed and is retried: so is this one
        raise kopf.TemporaryError("the runtime is not open yet", delay=1) from None
    if _MEMO_KEY not in memo:
        memo[_MEMO_KEY] = asyncio.create_task(look_for_awaited(kube, max_age=max_age))


async def stop_awaiting(memo: kopf.Memo, **_: Any) -> None:
    """Cleanup (before the runtime closes): stop looking for awaited Secrets."""
    task: asyncio.Task[None] | None = memo.pop(_MEMO_KEY, None)
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
