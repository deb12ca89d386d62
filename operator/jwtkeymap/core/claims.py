"""Claims: reading the identifying claim out of a token and canonicalising it.

LiteLLM turned any claim into a string with ``str()`` (``True`` became ``"True"``,
lists became their Python repr) and accepted ``""`` as an identity (W4). Here a
claim names a client only if it is a non-empty string or an integer, rendered
canonically; everything else is refused explicitly.

W-numbers name LiteLLM's weaknesses: docs/litellm-weaknesses.md.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import unicodedata
from collections.abc import Mapping
from typing import Any, Final

from jwtkeymap.core.errors import ClaimInvalid, ClaimMissing

MAX_CLAIM_VALUE_LENGTH: Final = 1024
# How a declared mapping names its scope: an issuer URL, or ANY_ISSUER for the global
# scope, which LiteLLM stores as ``''``.
ISSUER_URL: Final = r"https?://\S+"
ANY_ISSUER: Final = "*"
_ESCAPED_DOT: Final = "\x00"
# Claims that hold OAuth scopes: a space-separated list of words (RFC 8693 4.2).
SCOPE_CLAIMS: Final = frozenset({"scope", "scp"})


class MatchRule(enum.StrEnum):
    """How a claim is compared with an expected value (the admin rule)."""

    # The claim is the string, or a list with the string as an element.
    EXACT = "exact"
    # The claim is a list with the string as an element.
    ELEMENT = "element"
    # The claim is a space-separated string with the string as a word, or such a list.
    WORD = "word"


@dataclasses.dataclass(frozen=True, slots=True)
class MappingIdentity:
    """The identity a mapping is keyed by. Issuer ``""`` means "any trusted issuer"."""

    issuer: str
    claim_name: str
    claim_value: str

    def label(self) -> str:
        """``[issuer ]claim=value``, as messages and logs name a mapping."""
        scope = f"{self.issuer} " if self.issuer else ""
        return f"{scope}{self.claim_name}={self.claim_value}"

    def as_global(self) -> MappingIdentity:
        """The same claim, without an issuer scope."""
        return dataclasses.replace(self, issuer="")

    def to_json(self) -> dict[str, str]:
        """A JSON-ready dict, as used on the invalidation bus."""
        return {
            "issuer": self.issuer,
            "claim_name": self.claim_name,
            "claim_value": self.claim_value,
        }


@functools.lru_cache(maxsize=256)
def split_path(path: str) -> tuple[str, ...]:
    """Split a dot path; ``\\.`` escapes a literal dot. No prefix is special.

    Paths come from settings, so the few in use are parsed once.
    """
    if not path:
        raise ValueError("claim path is empty")
    parts = tuple(
        p.replace(_ESCAPED_DOT, ".") for p in path.replace("\\.", _ESCAPED_DOT).split(".")
    )
    if any(not p for p in parts):
        raise ValueError(f"claim path {path!r} has an empty segment")
    return parts


def extract(claims: Mapping[str, Any], path: str) -> Any:
    """Return the value at ``path`` in ``claims``; raise ClaimMissing when absent or null."""
    node: Any = claims
    for part in split_path(path):
        if not isinstance(node, Mapping) or part not in node:
            raise ClaimMissing(f"Required claim '{path}' is missing from the JWT")
        node = node[part]
    if node is None:
        raise ClaimMissing(f"Required claim '{path}' is missing from the JWT")
    return node


def canonicalize(value: Any, *, field: str, casefold: bool = False) -> str:
    """Render a claim value as the canonical string a mapping stores.

    Non-empty strings are kept as they are (optionally case-folded), integers
    become their decimal form. Booleans, floats, arrays and objects are refused:
    each has more than one plausible string form, and guessing would merge
    distinct clients.
    """
    if isinstance(value, bool):
        raise ClaimInvalid(f"Claim '{field}' is a boolean; expected a string or an integer")
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        kind = {list: "an array", dict: "an object", float: "a number with a fraction"}.get(
            type(value), f"a {type(value).__name__}"
        )
        raise ClaimInvalid(f"Claim '{field}' is {kind}; expected a string or an integer")
    if not value:
        raise ClaimInvalid(f"Claim '{field}' is an empty string")
    if len(value) > MAX_CLAIM_VALUE_LENGTH:
        raise ClaimInvalid(f"Claim '{field}' is longer than {MAX_CLAIM_VALUE_LENGTH} characters")
    if "\x00" in value or (not value.isascii() and _has_surrogate(value)):
        raise ClaimInvalid(f"Claim '{field}' contains characters that cannot be stored")
    text: str = value
    return unicodedata.normalize("NFKC", text).casefold() if casefold else text


def _has_surrogate(value: str) -> bool:
    # A lone surrogate (from a JSON \ud800 escape) has no UTF-8 form.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def identity_from_claims(
    claims: Mapping[str, Any], *, issuer: str, field: str, casefold: bool = False
) -> MappingIdentity:
    """Build the mapping identity of a token; raise ClaimMissing or ClaimInvalid."""
    value = canonicalize(extract(claims, field), field=field, casefold=casefold)
    return MappingIdentity(issuer=issuer, claim_name=field, claim_value=value)


def optional_string(claims: Mapping[str, Any], path: str | None) -> str | None:
    """Read an optional identity claim (team, user, org) as a string, or None."""
    if not path:
        return None
    try:
        return canonicalize(extract(claims, path), field=path)
    except (ClaimMissing, ClaimInvalid):
        return None


def default_rule(path: str) -> MatchRule:
    """WORD for a scope claim (``scope``, ``scp``), EXACT for any other."""
    return MatchRule.WORD if split_path(path)[-1] in SCOPE_CLAIMS else MatchRule.EXACT


def matches(
    claims: Mapping[str, Any], path: str, expected: str, rule: MatchRule | None = None
) -> bool:
    """Tell whether the claim at ``path`` holds ``expected`` under ``rule``.

    Only scope claims are split into words by default: a role of ``"guest admin"``
    must not pass for the role ``"admin"``.
    """
    try:
        value = extract(claims, path)
    except ClaimMissing:
        return False
    rule = rule or default_rule(path)
    if isinstance(value, list):
        return expected in value
    if not isinstance(value, str) or rule is MatchRule.ELEMENT:
        return False
    if rule is MatchRule.WORD:
        return expected in value.split(" ")
    return value == expected


def sanitize_for_message(value: str, limit: int = 64) -> str:
    """Make a client-supplied value safe to echo in an error message."""
    cleaned = "".join(c if c.isprintable() and c not in "'\"\\" else "?" for c in value)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"
