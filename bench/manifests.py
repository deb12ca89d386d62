"""The JWTKeyMapping (and policy) manifests the operator benchmarks create, built in one place.

Mapping N is named ``user-NNNNN`` and maps the email ``user-NNNNN@bench.example`` (any
issuer); a benchmark that changes mapping N later finds it by that name. Loaded by path
(``support.modules.load_by_path``): bench/ is never on sys.path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


def mappings(namespace: str, keys: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One JWTKeyMapping per key spec (``{"hash": …}`` or ``{"secretRef": …}``), in order."""
    return [
        {
            "apiVersion": "jwtkeymap.io/v1alpha1",
            "kind": "JWTKeyMapping",
            "metadata": {"name": f"user-{i:05d}", "namespace": namespace},
            "spec": {
                "issuer": "*",
                "claim": {"name": "email", "value": f"user-{i:05d}@bench.example"},
                "key": dict(key),
            },
        }
        for i, key in enumerate(keys)
    ]


def manifest_list(namespace: str, count: int, tokens: Sequence[str]) -> str:
    """A kubectl List (JSON) of ``count`` mappings, the N-th to the key hashed ``tokens[N]``."""
    items = mappings(namespace, [{"hash": tokens[i]} for i in range(count)])
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def open_policy(namespace: str, claim: str) -> dict[str, Any]:
    """A JWTKeyMappingPolicy letting ``namespace`` map any value of ``claim`` (any issuer)."""
    return {
        "apiVersion": "jwtkeymap.io/v1alpha1",
        "kind": "JWTKeyMappingPolicy",
        "metadata": {"name": f"bench-{namespace}"},
        "spec": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "issuers": ["*"],
            "claims": [{"name": claim, "values": ["*"]}],
        },
    }
