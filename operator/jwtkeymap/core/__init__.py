"""The core of jwtkeymap: claims, policy, cache, store, tokens, keys and settings.

Nothing here knows about Kubernetes or serves HTTP; the operator and the
resolver are two thin edges over this package.
"""

from jwtkeymap.core.bus import Invalidation, InvalidationBus
from jwtkeymap.core.cache import Inactive, Mapped, MappingCache, Unmapped
from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.clock import Clock, ManualClock, SystemClock
from jwtkeymap.core.errors import (
    ClaimError,
    ClaimInvalid,
    ClaimMissing,
    ConfigError,
    DatabaseUnavailable,
    IdentityProviderUnavailable,
    InvalidToken,
    JwtKeyMapError,
    KeyNotFound,
    MappingConflict,
    MappingNotFound,
    SchemaError,
    StoreError,
)
from jwtkeymap.core.keys import KeyIdentity, fingerprint, generate_key, hash_key
from jwtkeymap.core.policy import Decision, Outcome, Reason, Resolver
from jwtkeymap.core.settings import Behavior, Settings, load_settings
from jwtkeymap.core.store import MappingRow, NewKey, Store
from jwtkeymap.core.tokens import TokenVerifier, VerifiedToken
from jwtkeymap.core.userinfo import UserinfoClient

__all__ = [
    "Behavior",
    "ClaimError",
    "ClaimInvalid",
    "ClaimMissing",
    "Clock",
    "ConfigError",
    "DatabaseUnavailable",
    "Decision",
    "IdentityProviderUnavailable",
    "Inactive",
    "InvalidToken",
    "Invalidation",
    "InvalidationBus",
    "JwtKeyMapError",
    "KeyIdentity",
    "KeyNotFound",
    "ManualClock",
    "Mapped",
    "MappingCache",
    "MappingConflict",
    "MappingIdentity",
    "MappingNotFound",
    "MappingRow",
    "NewKey",
    "Outcome",
    "Reason",
    "Resolver",
    "SchemaError",
    "Settings",
    "Store",
    "StoreError",
    "SystemClock",
    "TokenVerifier",
    "Unmapped",
    "UserinfoClient",
    "VerifiedToken",
    "fingerprint",
    "generate_key",
    "hash_key",
    "load_settings",
]
