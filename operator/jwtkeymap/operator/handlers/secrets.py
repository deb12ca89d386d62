"""A changed Secret wakes the JWTKeyMappings that read it.

The changed Secret's version is written into an annotation of each dependent
mapping; that change makes kopf run the mapping's update handler, so a rotated
key is picked up at once, with no polling per resource.
"""

from __future__ import annotations

from typing import Any, Final

import kopf

from jwtkeymap.core.errors import JwtKeyMapError
from jwtkeymap.operator.handlers.runtime import runtime_of
from jwtkeymap.operator.resource import SECRET_VERSION_ANNOTATION

SECRET_CHANGED_ID: Final = "secret-changed"


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
    if not type:
        return  # the initial listing: resume handlers read every Secret anyway
    runtime = runtime_of(memo)
    version = str(body.metadata.get("resourceVersion") or "")
    if type == "DELETED":
        version = f"deleted-{version}"
    ns = namespace or ""
    for mapping, seen in runtime.registry.secret_users(ns, name):
        if seen == version:
            continue
        try:
            await runtime.kube.annotate_mapping(ns, mapping, {SECRET_VERSION_ANNOTATION: version})
        except JwtKeyMapError as exc:
            logger.warning("could not mark %s/%s for resync: %s", namespace, mapping, exc)
