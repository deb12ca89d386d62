"""What stays on one hop of the proxy, and which responses may pass as they came.

A proxy removes the headers that describe its own connection (``Connection`` and those it
names, ``Keep-Alive``, ``Transfer-Encoding``, ...) before it passes a message on. A
response without any of them has nothing to remove. Such a response, a chat completion,
is written to the client as it came once all of it has arrived, before aiohttp's parser
reads it, so the parse is not between the upstream's answer and the client
(bench/README.md, "Responses passed before they are parsed").

Which responses those are is told from their bytes here, conservatively: an HTTP/1.1
final status that has a body, then lines that are each a field name (a token), a colon
and a value ended by CRLF with no CR or LF in it (so no folded line), none of them a
hop-by-hop header in any case, and exactly one ``Content-Length`` line, a plain number;
the response is whole when exactly that many bytes follow its head. aiohttp's parser
still reads every byte once they are written, and where it reads them otherwise than as
that one response (``parsed_as_sent``), the client's connection is cut: never answered
as if it had not been.
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
_TOKEN: Final = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"  # a field name (RFC 9110)
# A head line that is not a field name, a colon and a value (a blank in or before the
# name, a folded line, no colon), or a field that stays on its hop in any case; the CRLF
# that ends the last line is followed by the empty line.
_BAD_LINE: Final = re.compile(rb"\r\n(?:(?!" + _TOKEN + rb":|\r\n|\Z)|(?i:" + _HOP_NAMES + rb"):)")
# The Content-Length line of a head, as aiohttp's parser accepts it; and any line of
# that name, whatever its value.
LENGTH_LINE: Final = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]+)[ \t]*(?=\r\n)", re.I)
_LENGTH_NAME: Final = re.compile(rb"\r\ncontent-length:", re.I)
_FINAL_STATUS: Final = (b"2", b"3", b"4", b"5")
_NO_BODY: Final = (b"204", b"304")  # a length there is not the length of what follows
_AFTER_STATUS: Final = (b" ", b"\r")


def carries_hop_by_hop(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> bool:
    """Tell whether a message has a header that stays on its hop."""
    return any(map(headers.__contains__, HOP_BY_HOP))


def passable_response(data: bytes) -> tuple[int, int]:
    """The size of the head of the response ``data`` begins with and of that whole response
    (head and body), when it may go to the client as it came; (0, 0) when it may not or
    its head is not all in ``data``."""
    # Bytes operations and searches that skip to each CRLF: a head is a KiB, read cold.
    if not data.startswith(b"HTTP/1.1 ") or data[9:10] not in _FINAL_STATUS:
        return 0, 0
    if data[9:12] in _NO_BODY or not data[10:12].isdigit() or data[12:13] not in _AFTER_STATUS:
        return 0, 0
    end = data.find(b"\r\n\r\n") + 4
    if end < 4:
        return 0, 0
    lines = data.count(b"\r\n", 0, end)
    if data.count(b"\n", 0, end) != lines or data.count(b"\r", 0, end) != lines:
        return 0, 0  # a bare CR or LF: a line the parser may end elsewhere
    if _BAD_LINE.search(data, 0, end - 2) is not None:
        return 0, 0
    length = LENGTH_LINE.search(data, 0, end)
    if length is None or len(_LENGTH_NAME.findall(data, 0, end)) != 1:
        return 0, 0  # none, or another Content-Length line (a list, a sign, a second one)
    return end, end + int(length[1])


def parsed_as_sent(data: bytes, end: int, message: RawResponseMessage) -> bool:
    """Whether aiohttp's parse of the head ``data[:end]`` (from ``passable_response``) is what
    the client reads in it: the same lines, one header each, none on the hop."""
    return (
        message.version == HttpVersion11
        and message.code >= 200
        and data.count(b"\r\n", 0, end) == len(message.raw_headers) + 2
        and not carries_hop_by_hop(message.headers)
    )
