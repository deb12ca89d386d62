"""What stays on one hop of the proxy, and which responses may pass as they came.

A proxy removes the headers that describe its own connection (``Connection`` and those it
names, ``Keep-Alive``, ``Transfer-Encoding``, ...) before it passes a message on. A
response without any of them has nothing to remove. Such a response, a chat completion,
is written to the client as it came once all of it has arrived, before aiohttp's parser
reads it, so the parse is not between the upstream's answer and the client
(bench/README.md, "Responses passed before they are parsed").

Which responses those are is told from their bytes here, conservatively and in one pass
of a regular expression: an HTTP/1.1 final status that has a body, then lines that are
each a field name (a token), a colon and a value ended by CRLF with no CR or LF in it (so
no folded line), none of them a hop-by-hop header in any case, and exactly one plain
``Content-Length``; the response is whole when exactly that many bytes follow its head.
aiohttp's parser still reads every byte once they are written, and where it reads them
otherwise than as that one response (``parsed_as_sent``), the client's connection is cut:
never answered as if it had not been.
"""

from __future__ import annotations

import re
from typing import Final

from aiohttp.http_parser import RawResponseMessage
from aiohttp.http_writer import HttpVersion11
from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_HOP_NAMES: Final = b"|".join(re.escape(name.encode()) for name in sorted(HOP_BY_HOP))
# The Content-Length line of a head, as aiohttp's parser accepts it.
_LENGTH: Final = rb"content-length:[ \t]*([0-9]+)[ \t]*"
LENGTH_LINE: Final = re.compile(rb"\r\n" + _LENGTH + rb"(?=\r\n)", re.IGNORECASE)
# Any other header line: a field name (an RFC 9110 token: no blank, no CR or LF), its
# colon and a value up to CRLF with no CR or LF in it; not a field a proxy must not pass
# on, whatever its case, nor another length.
_OTHER_LINE: Final = (
    rb"(?!(?i:" + _HOP_NAMES + rb"|content-length):)[-!#$%&'*+.^_`|~0-9A-Za-z]+:[^\r\n]*\r\n"
)
# A whole passable head, in one pass: an HTTP/1.1 final status that has a body (a length
# after a 204 or 304 is not the length of what follows), one plain length among the lines.
_PASSABLE: Final = re.compile(
    rb"HTTP/1\.1 (?!204|304)[2-5][0-9][0-9](?: [^\r\n]*)?\r\n"
    rb"(?:" + _OTHER_LINE + rb")*"
    rb"(?i:" + _LENGTH + rb")\r\n"
    rb"(?:" + _OTHER_LINE + rb")*"
    rb"\r\n"
)


def carries_hop_by_hop(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> bool:
    """Tell whether a message has a header that stays on its hop."""
    return any(map(headers.__contains__, HOP_BY_HOP))


def passable_response(data: bytes) -> tuple[int, int]:
    """The size of the head of the response ``data`` begins with and of that whole response
    (head and body), when it may go to the client as it came; (0, 0) when it may not or
    its head is not all in ``data``."""
    head = _PASSABLE.match(data)
    if head is None:
        return 0, 0
    end = head.end()
    return end, end + int(head[1])


def parsed_as_sent(data: bytes, end: int, message: RawResponseMessage) -> bool:
    """Whether aiohttp's parse of the head ``data[:end]`` (from ``passable_response``) is what
    the client reads in it: the same lines, one header each, none on the hop."""
    return (
        message.version == HttpVersion11
        and message.code >= 200
        and data.count(b"\r\n", 0, end) == len(message.raw_headers) + 2
        and not carries_hop_by_hop(message.headers)
    )
