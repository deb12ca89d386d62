"""The check contract: from a core Decision (or a token error) to an HTTP answer.

Pure functions, no I/O (a refused identity value is only logged): the same
answer serves Envoy's HTTP ext_authz, nginx's ``auth_request`` and the
reverse-proxy mode.

* Allow is exactly 200 (Envoy treats anything else as a denial), with the
  identity headers that are known and in their strict form (visible ASCII, no
  comma, no surrounding space, at most 256 characters; others are not sent) and,
  when assertions are on, the signed ``x-jwtkeymap-assertion`` (``core.assertion``)
  that a gateway can verify.
  Every identity header this answer does not set is named in
  ``x-envoy-auth-headers-to-remove``: Envoy does not show the client's headers
  to the check, so naming the unset ones is what keeps a spoofed copy from
  reaching the upstream (the set ones are overwritten).
* Denials carry a JSON body ``{"error": {type, code, reason, message}}`` and the
  reason again in ``jwtkeymap-denial-reason`` (for a proxy that answers a denial with a
  body of its own, as nginx's ``auth_request`` does; outside the ``x-jwtkeymap-`` names,
  which a denial never carries); 401 adds ``WWW-Authenticate``, 503 adds ``Retry-After``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Final

from aiohttp.http_writer import _serialize_headers
from multidict import CIMultiDict

from jwtkeymap.core.assertion import HEADER, AssertionSigner
from jwtkeymap.core.errors import InvalidToken
from jwtkeymap.core.policy import Decision, Verdict
from jwtkeymap.core.tokens import MAX_TOKEN_BYTES

log = logging.getLogger("jwtkeymap.resolver")

HEADER_PREFIX: Final = "x-jwtkeymap-"
DECISION_HEADER: Final = "x-jwtkeymap-decision"
KEY_HASH_HEADER: Final = "x-jwtkeymap-key-hash"
TEAM_HEADER: Final = "x-jwtkeymap-team-id"
USER_HEADER: Final = "x-jwtkeymap-user-id"
ORG_HEADER: Final = "x-jwtkeymap-org-id"
DENIAL_REASON_HEADER: Final = "jwtkeymap-denial-reason"
ASSERTION_HEADER: Final = HEADER
REMOVE_HEADER: Final = "x-envoy-auth-headers-to-remove"
IDENTITY_HEADERS: Final = (
    DECISION_HEADER,
    KEY_HASH_HEADER,
    TEAM_HEADER,
    USER_HEADER,
    ORG_HEADER,
    ASSERTION_HEADER,
)

# Each value of the removal header, held once: a remembered answer per client would
# otherwise keep its own copy of one of a few dozen strings.
_REMOVALS: dict[str, str] = {}

RETRY_AFTER_SECONDS: Final = "1"
_WWW_AUTHENTICATE: Final = 'Bearer error="invalid_token"'


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """What the resolver replies to one check."""

    status: int
    headers: Mapping[str, str]
    body: bytes = b""
    decision: str = "denied"
    reason: str | None = None
    message: str = ""
    # The identity headers this answer sets (what the upstream should receive), and
    # whether the request may go to the upstream: worked out once, since a remembered
    # answer serves many requests.
    identity: Mapping[str, str] = dataclasses.field(init=False, repr=False, compare=False)
    allowed: bool = dataclasses.field(init=False, repr=False, compare=False)
    _head_lines: bytes | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        identity = {k: v for k, v in self.headers.items() if k.startswith(HEADER_PREFIX)}
        object.__setattr__(self, "identity", identity)
        object.__setattr__(self, "allowed", self.status == 200)

    def head_lines(self) -> bytes:
        """This answer's status line and header lines as an HTTP/1.1 response sends them
        (each ended by CRLF; no ``Date`` and no blank line yet), made once: a remembered
        answer serves many requests. The fast lanes write it (``lane.answer_bytes``)."""
        lines = self._head_lines
        if lines is None:
            headers = CIMultiDict(self.headers)
            headers["Content-Length"] = str(len(self.body))
            status = f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}"
            lines = _serialize_headers(status, headers)[:-2]  # (the blank line)
            object.__setattr__(self, "_head_lines", lines)
        return lines


def bearer_token(authorization: str | None) -> str:
    """Extract the token of an ``Authorization: Bearer`` header; raise InvalidToken otherwise."""
    if not authorization:
        raise InvalidToken("the request has no Authorization header")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise InvalidToken("the Authorization header is not a Bearer token")
    token = token.strip()
    if not token or " " in token:
        raise InvalidToken("the Bearer token is empty or malformed")
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidToken(f"the Bearer token is longer than {MAX_TOKEN_BYTES} characters")
    return token


MAX_IDENTITY_VALUE_LENGTH: Final = 256
# The one form an identity header value is sent in: visible ASCII but the comma (a list
# separator to many parsers), inner spaces allowed, no surrounding ones, at most 256.
# Anything else (spaces a parser trims, NEL, U+2028, non-ASCII, "a, team-admin") could
# be read as another id, so it is not sent at all: the header is named for removal.
_IDENTITY_VALUE: Final = re.compile(
    r"[\x21-\x2b\x2d-\x7e]([\x20-\x2b\x2d-\x7e]*[\x21-\x2b\x2d-\x7e])?"
)


def _header_safe(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) <= MAX_IDENTITY_VALUE_LENGTH and _IDENTITY_VALUE.fullmatch(value):
        return value
    log.warning(
        "identity header value refused",
        extra={"header": name, "length": len(value), "reason": "not visible ASCII without commas"},
    )
    return None


def allow(
    decision: Decision,
    *,
    strip_authorization: bool = False,
    signer: AssertionSigner | None = None,
) -> Answer:
    """The 200 answer for an allowed decision, with identity, assertion and removal headers."""
    headers = {DECISION_HEADER: decision.outcome.value}
    if signer is not None:
        headers[ASSERTION_HEADER] = signer.assertion(
            decision.outcome.value, decision.key, decision.identity
        )
    key = decision.key
    if key is not None:
        for name, value in (
            (KEY_HASH_HEADER, key.token_hash),
            (TEAM_HEADER, _header_safe(TEAM_HEADER, key.team_id)),
            (USER_HEADER, _header_safe(USER_HEADER, key.user_id)),
            (ORG_HEADER, _header_safe(ORG_HEADER, key.org_id)),
        ):
            if value is not None:
                headers[name] = value
    remove = [h for h in IDENTITY_HEADERS if h not in headers]
    if strip_authorization:
        remove.append("authorization")
    if remove:
        value = ", ".join(remove)
        headers[REMOVE_HEADER] = _REMOVALS.setdefault(value, value)
    return Answer(200, headers, decision=decision.outcome.value)


def refuse(status: int, reason: str, message: str) -> Answer:
    """A denial with the JSON error body and the headers its status calls for."""
    body = json.dumps(
        {"error": {"type": "auth_error", "code": status, "reason": reason, "message": message}}
    ).encode()
    headers = {"Content-Type": "application/json", DENIAL_REASON_HEADER: reason}
    if status == 401:
        headers["WWW-Authenticate"] = _WWW_AUTHENTICATE
    elif status == 503:
        headers["Retry-After"] = RETRY_AFTER_SECONDS
    return Answer(status, headers, body, decision="denied", reason=reason, message=message)


# A request header field over ``max_header_field_bytes`` (both engines answer it so).
HEADER_TOO_LARGE: Final = refuse(
    431, "header_too_large", "JWT Key Mapping: a request header field is too large."
)


def answer(
    decision: Decision,
    *,
    strip_authorization: bool = False,
    signer: AssertionSigner | None = None,
) -> Answer:
    """Translate a policy decision into the HTTP answer (signed when ``signer`` is given)."""
    if decision.outcome is not Verdict.DENIED:
        return allow(decision, strip_authorization=strip_authorization, signer=signer)
    reason = decision.reason.value if decision.reason is not None else "denied"
    return refuse(decision.status, reason, decision.message)


def invalid_token(message: str) -> Answer:
    """The 401 for a missing, malformed, expired or badly signed token."""
    return refuse(401, "invalid_token", f"JWT Key Mapping: {message}")
