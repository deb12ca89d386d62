"""The fast lane's memory of a connection's last request head, to skip parsing it again.

A client on a kept-alive connection sends the same request head time after time: the
same method, path and headers, the same bearer token; only the ``Content-Length`` of its
body changes. Parsing that head again (aiohttp's parser builds a URL, a header map and a
body stream for it) is most of what the lane spends on a request on a machine whose
caches are cold between requests (bench/README.md, "Where the hop's time goes").

So once aiohttp's parser has read a head and the lane has taken its request, the lane
keeps the head's bytes, split around the digits of its ``Content-Length``. A later
request whose head is those bytes again, with other digits there, is the same request
with another body length: the parse, the lane's checks of it and the headers it sends
upstream are those of the first, and nothing is parsed. Nothing else is recognized: a
byte that differs anywhere else, a longer number, a head that arrives in pieces, and the
request goes through the parser as before. The head's ``Authorization`` is part of those
bytes, so its digest is kept too; the answer for it is still looked up in the memo for
each request, and the headers sent upstream are rebuilt whenever that answer changes.
"""

from __future__ import annotations

from typing import Final

from aiohttp.http_parser import RawRequestMessage

from jwtkeymap.resolver.hops import LENGTH_LINE

# What may stand in its place in a repeated head: up to five ASCII digits, no leading 0.
_LENGTH_DIGITS: Final = 5
# The lines a head sent upstream is recognized by (the proxy writes it, so one spelling).
_UPSTREAM_LENGTH: Final = b"\r\nContent-Length: "


class RepeatedHead:
    """One parsed request head, recognized again when it comes back with another length."""

    __slots__ = (
        "_after",
        "_answer",
        "_before",
        "_max_bytes",
        "_max_length",
        "_upstream_after",
        "_upstream_before",
        "authorization",
        "digest",
        "message",
    )

    def __init__(
        self,
        message: RawRequestMessage,
        before: bytes,
        after: bytes | None,
        *,
        authorization: str | None,
        digest: bytes | None,
        max_bytes: int,
        max_length: int,
    ) -> None:
        self.message = message
        self.authorization = authorization
        self.digest = digest
        self._before = before  # the head up to its length's digits (all of it without one)
        self._after = after  # the head after them (None: the head had no Content-Length)
        self._max_bytes = max_bytes
        self._max_length = max_length
        self._answer: object = None  # the answer the upstream head was made for
        self._upstream_before = b""
        self._upstream_after: bytes | None = None

    @classmethod
    def of(
        cls,
        head: bytes,
        message: RawRequestMessage,
        *,
        authorization: str | None,
        digest: bytes | None,
        max_bytes: int,
        max_length: int,
    ) -> RepeatedHead | None:
        """The head of a request the lane took (``head`` its bytes, ``message`` aiohttp's
        parse of them), or None when it cannot be told again by its bytes alone."""
        lines = list(LENGTH_LINE.finditer(head))
        length = message.headers.get("Content-Length")
        if len(lines) > 1 or (length is None) != (not lines):
            return None
        if length is None:
            return cls(message, head, None, authorization=authorization, digest=digest,
                       max_bytes=max_bytes, max_length=max_length)  # fmt: skip
        if lines[0].group(1).decode("ascii") != length:  # [0-9]+ decodes
            return None
        start, end = lines[0].span(1)
        return cls(message, head[:start], head[end:], authorization=authorization,
                   digest=digest, max_bytes=max_bytes, max_length=max_length)  # fmt: skip

    def sizes(self, data: bytes) -> tuple[int, int] | None:
        """The size of the head ``data`` begins with and of its body, when that head is
        this one again (with any length up to the lane's); None otherwise."""
        before = self._before
        if not data.startswith(before):
            return None
        after = self._after
        if after is None:
            return len(before), 0
        # Plain bytes operations, no regular expression: this runs on every request.
        start = len(before)
        end = data.find(after, start, start + _LENGTH_DIGITS + len(after))
        if end < 0:
            return None
        digits = data[start:end]
        if not digits.isdigit() or (digits[0] == 0x30 and len(digits) > 1):
            return None  # a sign, a space, a leading zero: the parser reads it as written
        length = int(digits)
        head = end + len(after)
        if length > self._max_length or head > self._max_bytes:
            return None
        return head, length

    def upstream_head(self, answer: object, length: int) -> bytes | None:
        """The head sent upstream for this request with a body of ``length`` bytes, when
        it was made for this same ``answer`` before."""
        if answer is not self._answer:
            return None
        after = self._upstream_after
        if after is None:  # made without a length: good for an empty body only
            return self._upstream_before if length == 0 else None
        return self._upstream_before + b"%d" % length + after

    def keep_upstream_head(self, answer: object, head: bytes, length: int) -> None:
        """Remember ``head``, sent upstream for ``answer`` with a body of ``length``."""
        at = head.find(_UPSTREAM_LENGTH + b"%d\r\n" % length)
        if head.find(_UPSTREAM_LENGTH, at + 1) >= 0:
            self._answer = None  # not in the form the proxy writes: made anew each time
            return
        self._answer = answer
        if at < 0:  # a bodiless request (a GET): no length, and none in any repeat
            self._upstream_before, self._upstream_after = head, None
            return
        start = at + len(_UPSTREAM_LENGTH)
        self._upstream_before = head[:start]
        self._upstream_after = head[start + len(b"%d" % length) :]
