"""The Kubernetes edge: a kopf operator for JWTKeyMapping resources, and offline apply/diff.

Everything that decides what the database should hold lives in
``jwtkeymap.core.reconcile``; this package only translates between Kubernetes
objects (or manifests on disk) and that core.
"""

from jwtkeymap.operator.handlers import Runtime, register
from jwtkeymap.operator.resource import (
    ADOPT_ANNOTATION,
    API_VERSION,
    FINALIZER,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    MappingSpec,
    SpecError,
    parse_spec,
)

__all__ = [
    "ADOPT_ANNOTATION",
    "API_VERSION",
    "FINALIZER",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "MappingSpec",
    "Runtime",
    "SpecError",
    "parse_spec",
    "register",
]
