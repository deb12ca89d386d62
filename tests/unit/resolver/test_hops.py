"""Which upstream responses may go to the client as they came (resolver/hops.py).

A response told passable here is written to the client before aiohttp's parser reads it,
so every way a head could mean something else to the client than to the parser, or carry
a header that stays on the upstream's hop, must be told not passable. The parses below are
aiohttp's own, as in the proxy.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpResponseParser, RawResponseMessage

from jwtkeymap.resolver.hops import HOP_BY_HOP, parsed_as_sent, passable_response


def response(*lines: str, body: bytes = b"{}", status: str = "200 OK") -> bytes:
    """A response with ``lines`` as its headers and a Content-Length for ``body``."""
    fields = [f"HTTP/1.1 {status}", *lines, f"Content-Length: {len(body)}"]
    return ("\r\n".join(fields) + "\r\n\r\n").encode() + body


def head_size(data: bytes) -> int:
    return data.index(b"\r\n\r\n") + 4


async def parsed(data: bytes) -> RawResponseMessage:
    loop = asyncio.get_running_loop()
    parser = HttpResponseParser(BaseProtocol(loop), loop, 2**16, response_with_body=True)
    messages, _, _ = parser.feed_data(data)
    return messages[0][0]


LITELLM = response(
    "date: Mon, 30 Nov 2026 18:00:00 GMT",
    "server: uvicorn",
    "content-type: application/json",
    "x-litellm-call-id: 6bdac4e9",
    "x-litellm-response-cost: 1.5e-05",
    "X-Mixed:1",  # no space after the colon: passed as it came, not rewritten
)


def test_a_plain_response_may_pass():
    assert passable_response(LITELLM) == (head_size(LITELLM), len(LITELLM))


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
@pytest.mark.parametrize("spelling", ["{}: x", "{} : x", "{}:\tx"])
def test_a_header_that_stays_on_its_hop_is_never_passed(name, spelling):
    # Whatever its case or the blanks before its colon.
    for cased in (name, name.upper(), name.title()):
        data = response("content-type: application/json", spelling.format(cased))
        assert passable_response(data) == (0, 0)


@pytest.mark.parametrize(
    "line",
    ["X-Connection: close", "Connection-Id: 7", "Tex: 1", "Trailers-Seen: no", "X-Upgrade: 1"],
)
def test_a_header_named_like_one_that_stays_on_its_hop_is_passed(line):
    data = response(line)
    assert passable_response(data) == (head_size(data), len(data))


NOT_PASSABLE = {
    "bare_lf": response("X-A: 1").replace(b"\r\n", b"\n"),
    "bare_lf_in_a_value": response("X-A: 1\nX-B: 2"),
    "bare_cr_in_a_value": response("X-A: 1\rX-B: 2"),
    "folded": response("X-A: 1", " continued"),
    "folded_tab": response("X-A: 1", "\tcontinued"),
    "http10": response("X-A: 1").replace(b"HTTP/1.1", b"HTTP/1.0", 1),
    "interim_first": b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + response(),
    "switching": response(status="101 Switching Protocols"),
    # A length that is not the length of what follows: nothing does.
    "no_content": response(status="204 No Content", body=b""),
    "not_modified": response(status="304 Not Modified", body=b"").replace(b": 0", b": 9"),
    "not_http": b"HTTX/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "head_not_ended": response()[:-6],
    # A line the parser refuses or may read otherwise: not a name, a colon and a value.
    "blank_in_a_name": response("X A: 1"),
    "blank_before_a_colon": response("X-A : 1"),
    "no_colon": response("X-A"),
    "empty_name": response(": 1"),
    "status_of_four_digits": response(status="2000 OK"),
}


@pytest.mark.parametrize("name", sorted(NOT_PASSABLE))
def test_a_head_the_client_may_read_otherwise_is_not_passed(name):
    assert passable_response(NOT_PASSABLE[name]) == (0, 0)


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (response(body=b"hello"), 5),
        (response(body=b""), 0),
        (response(body=b"hello")[:-3], 5),  # the rest is still coming
        (response(body=b"hello") + b"x", 5),  # a byte more: not that one response
        (response(body=b"hi") + response(body=b"again"), 2),
        (b"HTTP/1.1 200 OK\r\nContent-Length:  12 \r\n\r\nhi", 12),
        (b"HTTP/1.1 200 OK\r\ncontent-length:3\r\n\r\nabc", 3),
        (b"HTTP/1.1 200\r\nX-Empty:\r\nContent-Length: 2\r\n\r\nhi", 2),
    ],
    ids=[
        "body",
        "empty",
        "short",
        "longer",
        "two_responses",
        "blanks",
        "lower_case",
        "no_reason_empty_value",
    ],
)
def test_a_response_is_whole_when_its_length_follows_its_head(data, size):
    end = head_size(data)
    assert passable_response(data) == (end, end + size)


@pytest.mark.parametrize(
    "data",
    [
        response("Content-Length: 2", body=b"hi"),  # two lengths
        response("content-length: 2", body=b"hi"),
        response("Content-Length : 2", body=b"hi"),
        response("Content-Length: 2, 2", body=b"hi"),
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nhi",  # no length: until the close
        b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nhi",
    ],
    ids=[
        "two_lengths",
        "two_spellings",
        "one_not_plain",
        "one_a_list",
        "no_length",
        "signed",
        "list",
    ],
)
def test_a_response_without_one_plain_length_is_not_passed(data):
    assert passable_response(data) == (0, 0)


def test_a_body_beginning_with_a_blank_is_not_a_folded_line():
    data = response(body=b" {}")
    assert passable_response(data) == (head_size(data), len(data))


async def test_the_parse_of_a_passable_head_is_what_was_passed():
    assert parsed_as_sent(LITELLM, head_size(LITELLM), await parsed(LITELLM))


async def test_a_parse_that_reads_other_lines_or_a_hop_header_is_not_what_was_passed():
    # What the parser read, checked against the head: another line count, a header that
    # stays on its hop, another version or an interim status are each a disagreement.
    with_hop = response("Keep-Alive: timeout=5")
    assert not parsed_as_sent(with_hop, head_size(with_hop), await parsed(with_hop))
    one_more = response("X-A: 1")
    assert not parsed_as_sent(one_more, head_size(one_more), await parsed(response()))
    old = response().replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    assert not parsed_as_sent(response(), head_size(response()), await parsed(old))
    early = b"HTTP/1.1 103 Early Hints\r\nContent-Length: 2\r\n\r\n"
    assert not parsed_as_sent(early, head_size(early), await parsed(early))
