"""The fast lane's repeated heads (resolver/heads.py): what is recognized, what is not.

The heads are parsed by aiohttp's own request parser, as in the lane; the head a repeat
sends upstream is compared with the one the proxy makes for the same request from scratch.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpRequestParser, RawRequestMessage

from jwtkeymap.resolver.check import Answer
from jwtkeymap.resolver.heads import RepeatedHead
from jwtkeymap.resolver.proxy import upstream_request_headers
from jwtkeymap.resolver.upstream import BUFFERED_BODY_MAX, Upstream

MAPPED = Answer(200, {"x-jwtkeymap-decision": "mapped", "x-jwtkeymap-key-hash": "a" * 64})
REPOINTED = Answer(200, {"x-jwtkeymap-decision": "mapped", "x-jwtkeymap-key-hash": "b" * 64})


def head(*lines: str, length: str | None = "13") -> bytes:
    """A request head: the request line, then ``lines``, with ``length`` as Content-Length."""
    fields = ["POST /v1/chat/completions HTTP/1.1", "Host: proxy.test", *lines]
    if length is not None:
        fields.insert(2, f"Content-Length: {length}")
    return ("\r\n".join(fields) + "\r\n\r\n").encode()


AUTH = "Authorization: Bearer eyJ.a.b"


def parse(data: bytes) -> RawRequestMessage:
    """aiohttp's parse of one request head."""
    loop = asyncio.new_event_loop()
    try:
        parser = HttpRequestParser(BaseProtocol(loop), loop, 2**16)
        messages, _, _ = parser.feed_data(data)
    finally:
        loop.close()
    return messages[0][0]


def known(data: bytes, *, max_bytes: int = 8190) -> RepeatedHead:
    repeat = RepeatedHead.of(
        data,
        parse(data),
        authorization="Bearer eyJ.a.b",
        digest=b"d",
        max_bytes=max_bytes,
        max_length=BUFFERED_BODY_MAX,
    )
    assert repeat is not None
    return repeat


def test_the_same_head_with_any_length_is_recognized():
    repeat = known(head(AUTH))
    for length in (0, 7, 13, 4096, BUFFERED_BODY_MAX):
        again = head(AUTH, length=str(length))
        assert repeat.sizes(again + b"{}") == (len(again), length)


def test_the_head_is_recognized_from_its_first_piece_on():
    # What follows the head (a body, a piece of one, the next request) is the lane's to
    # count: the sizes are the head's and what its length says.
    repeat = known(head(AUTH))
    again = head(AUTH, length="20")
    assert repeat.sizes(again) == (len(again), 20)
    assert repeat.sizes(again[:-1]) is None  # not all of it: parsed when it is whole


@pytest.mark.parametrize(
    "other",
    [
        head(AUTH).replace(b"POST", b"PUT "),
        head(AUTH).replace(b"completions", b"completionz"),
        head("Authorization: Bearer eyJ.a.c"),
        head(AUTH.replace("Bearer", "bearer")),
        head(AUTH, "X-Extra: 1"),
        head(AUTH).replace(b"Content-Length", b"Content-length"),
        head(AUTH).replace(b"Content-Length: ", b"Content-Length:  "),
        head(AUTH).replace(b"\r\n\r\n", b"\r\n \r\n"),
    ],
    ids=["method", "path", "token", "scheme_case", "header", "name_case", "space", "end"],
)
def test_a_head_that_differs_anywhere_but_the_length_digits_is_not(other):
    assert known(head(AUTH)).sizes(other) is None


@pytest.mark.parametrize(
    "length",
    ["013", "00", "+13", "-1", "1_0", "0x10", "1 3", str(BUFFERED_BODY_MAX + 1), "999999"],
)
def test_a_length_the_lane_would_not_take_as_written_is_not(length):
    # A leading zero, a sign, a longer number: the parser reads those (or refuses them).
    assert known(head(AUTH)).sizes(head(AUTH, length=length)) is None


def test_a_longer_number_does_not_carry_a_head_past_the_field_limit():
    data = head(AUTH, length="7")
    repeat = known(data, max_bytes=len(data) + 1)
    assert repeat.sizes(head(AUTH, length="70")) == (len(data) + 1, 70)
    assert repeat.sizes(head(AUTH, length="700")) is None


def test_a_head_without_a_length_is_recognized_as_itself_only():
    data = head(AUTH, length=None).replace(b"POST", b"GET")
    repeat = known(data)
    assert repeat.sizes(data) == (len(data), 0)
    assert repeat.sizes(data + b"GET /next") == (len(data), 0)  # the next one: pipelined
    with_length = head(AUTH, length="5").replace(b"POST", b"GET")
    assert repeat.sizes(with_length) is None


@pytest.mark.parametrize(
    "lines",
    [
        # Not the form the parser and the lane agree on for the length: not remembered.
        ("Content-Length: 13",),  # twice (the parser refuses it; nothing is taken here)
        ("X-Note: 1\r\ncontent-length: 13",),
    ],
    ids=["two_lengths", "two_lengths_folded"],
)
def test_a_head_with_two_length_lines_is_not_remembered(lines):
    data = head(AUTH, *lines)
    message = parse(head(AUTH))  # a parse that saw one length (as the lane would need)
    args = {"authorization": None, "digest": None, "max_bytes": 8190, "max_length": 10}
    assert RepeatedHead.of(data, message, **args) is None


def test_a_length_the_parse_did_not_read_is_not_remembered():
    args = {"authorization": None, "digest": None, "max_bytes": 8190, "max_length": 10}
    assert RepeatedHead.of(head(AUTH, length="14"), parse(head(AUTH)), **args) is None
    no_length = parse(head(AUTH, length=None))
    assert RepeatedHead.of(head(AUTH), no_length, **args) is None


def upstream_head(upstream: Upstream, message: RawRequestMessage, answer: Answer, body: bytes):
    """What the proxy sends upstream for this request, made from scratch."""
    headers = upstream_request_headers(
        message.headers, answer, strip_authorization=False, client="127.0.0.1", scheme="http"
    )
    return upstream.request_head(message.method, message.path, headers, body or None)


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_the_head_sent_upstream_is_the_one_made_from_scratch(method):
    upstream = Upstream("http://litellm.test:4000/base")
    data = head(AUTH).replace(b"POST", method.encode())
    repeat = known(data)
    message = repeat.message
    assert repeat.upstream_head(MAPPED, 13) is None  # nothing made yet
    made = upstream_head(upstream, message, MAPPED, b"x" * 13)
    repeat.keep_upstream_head(MAPPED, made, 13)
    for length in (1, 9, 10, 13, 100, 4096, BUFFERED_BODY_MAX):
        expected = upstream_head(upstream, message, MAPPED, b"x" * length)
        assert repeat.upstream_head(MAPPED, length) == expected
    # A new answer (re-pointed, re-signed) is a new head.
    assert repeat.upstream_head(REPOINTED, 13) is None


def test_a_head_sent_without_a_length_serves_bodiless_repeats_only():
    # A GET without a length is sent upstream without one. Its repeats have no body either
    # (sizes says 0), and a head made so is never used for one that has: the upstream would
    # read that body as the next request.
    upstream = Upstream("http://litellm.test:4000")
    data = head(AUTH, length=None).replace(b"POST", b"GET")
    repeat = known(data)
    made = upstream_head(upstream, repeat.message, MAPPED, b"")
    assert b"Content-Length" not in made
    repeat.keep_upstream_head(MAPPED, made, 0)
    assert repeat.upstream_head(MAPPED, 0) == made
    assert repeat.upstream_head(MAPPED, 5) is None
