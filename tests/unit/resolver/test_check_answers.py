"""Decision → HTTP answer, and Authorization parsing: pure logic."""

from __future__ import annotations

import asyncio
import json
import time
from email.utils import parsedate_to_datetime

import pytest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpResponseParser

from jwtkeymap.core.errors import InvalidToken
from jwtkeymap.core.keys import KeyIdentity
from jwtkeymap.core.policy import ADMIN, FALLBACK, Decision, DenialReason, Verdict, denial
from jwtkeymap.resolver import check
from jwtkeymap.resolver.lane import answer_bytes

KEY = KeyIdentity(token_hash="a" * 64, team_id="t", user_id=None, org_id="o")


def test_mapped_answer_sets_known_ids_and_removes_the_rest():
    result = check.answer(Decision(Verdict.MAPPED, key=KEY))
    assert result.status == 200
    assert result.body == b""
    assert result.headers["x-jwtkeymap-decision"] == "mapped"
    assert result.headers["x-jwtkeymap-key-hash"] == "a" * 64
    assert result.headers["x-jwtkeymap-team-id"] == "t"
    assert result.headers["x-jwtkeymap-org-id"] == "o"
    assert "x-jwtkeymap-user-id" not in result.headers
    # The unset user id goes, and so does the assertion this unsigned answer does not set.
    assert result.headers["x-envoy-auth-headers-to-remove"] == (
        "x-jwtkeymap-user-id, x-jwtkeymap-assertion"
    )


@pytest.mark.parametrize("decision", [FALLBACK, ADMIN])
def test_keyless_allow_removes_every_key_header(decision):
    result = check.answer(decision)
    assert result.status == 200
    removed = result.headers["x-envoy-auth-headers-to-remove"].split(", ")
    assert set(removed) == set(check.IDENTITY_HEADERS) - {"x-jwtkeymap-decision"}
    assert result.identity == {"x-jwtkeymap-decision": decision.outcome.value}


def test_answers_share_one_removal_value_each():
    # A remembered answer per client must not carry its own copy of this string.
    one = check.answer(Decision(Verdict.MAPPED, key=KEY))
    two = check.answer(Decision(Verdict.MAPPED, key=KeyIdentity("b" * 64, team_id="u", org_id="p")))
    name = "x-envoy-auth-headers-to-remove"
    assert one.headers[name] is two.headers[name]


def test_strip_authorization_adds_it_to_the_removal_list():
    result = check.answer(Decision(Verdict.MAPPED, key=KEY), strip_authorization=True)
    assert "authorization" in result.headers["x-envoy-auth-headers-to-remove"].split(", ")


def test_header_unsafe_ids_are_dropped_not_sent():
    key = KeyIdentity(token_hash="b" * 64, team_id="evil\r\nX-Injected: 1", user_id="u")
    result = check.answer(Decision(Verdict.MAPPED, key=key))
    assert "x-jwtkeymap-team-id" not in result.headers
    assert "x-jwtkeymap-team-id" in result.headers["x-envoy-auth-headers-to-remove"]


@pytest.mark.parametrize(
    ("status", "reason", "extra"),
    [
        (403, DenialReason.UNREGISTERED_CLIENT, None),
        (503, DenialReason.DATABASE_UNAVAILABLE, "Retry-After"),
        (500, DenialReason.DATABASE_REQUIRED, None),
    ],
)
def test_denials_carry_the_json_error_body(status, reason, extra):
    result = check.answer(denial(status, reason, "msg"))
    assert result.status == status
    assert not result.allowed
    body = json.loads(result.body)
    assert body == {
        "error": {
            "type": "auth_error",
            "code": status,
            "reason": reason.value,
            "message": "JWT Key Mapping: msg",
        }
    }
    assert result.headers["Content-Type"] == "application/json"
    # The reason as a header too, for a proxy that answers with a body of its own (nginx).
    assert result.headers["jwtkeymap-denial-reason"] == reason.value
    if extra:
        assert extra in result.headers
    assert not result.identity


def test_invalid_token_is_401_with_www_authenticate():
    result = check.invalid_token("token has expired")
    assert result.status == 401
    assert result.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert json.loads(result.body)["error"]["reason"] == "invalid_token"


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc.def.ghi", "abc.def.ghi"), ("bearer  tok ", "tok"), ("BEARER x", "x")],
)
def test_bearer_token_is_extracted(header, token):
    assert check.bearer_token(header) == token


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "Bearer ", "Bearer a b"])
def test_bad_authorization_headers_are_invalid_tokens(header):
    with pytest.raises(InvalidToken):
        check.bearer_token(header)


@pytest.mark.parametrize(
    "value",
    [
        " team-admin",
        "team-a ",
        "a, team-admin",
        "a\u0085b",
        "a\u2028b",
        "équipe",
        "t" * (check.MAX_IDENTITY_VALUE_LENGTH + 1),
        "\t",
        "",
    ],
)
def test_identity_values_outside_the_strict_form_are_not_sent(value, caplog):
    key = KeyIdentity(token_hash="c" * 64, team_id=value, user_id="u", org_id="o")
    result = check.answer(Decision(Verdict.MAPPED, key=key))
    assert "x-jwtkeymap-team-id" not in result.headers
    assert "x-jwtkeymap-team-id" in result.headers["x-envoy-auth-headers-to-remove"]
    assert result.headers["x-jwtkeymap-user-id"] == "u"
    if value:
        assert "identity header value refused" in caplog.text


@pytest.mark.parametrize(
    "value", ["team-a", "a b", "user@example.com", "t" * check.MAX_IDENTITY_VALUE_LENGTH, "~!#"]
)
def test_identity_values_in_the_strict_form_are_sent_as_they_are(value):
    key = KeyIdentity(token_hash="c" * 64, team_id=value)
    assert check.answer(Decision(Verdict.MAPPED, key=key)).headers["x-jwtkeymap-team-id"] == value


@pytest.mark.parametrize(
    "result",
    [
        check.answer(Decision(Verdict.MAPPED, key=KEY)),
        check.invalid_token("the token has expired"),
        check.refuse(503, "database_unavailable", "down"),
    ],
    ids=["allowed", "401", "503"],
)
async def test_an_answer_on_the_wire_is_prepared_once_and_parses_back_to_itself(result):
    head = result.head_lines()
    assert result.head_lines() is head  # kept with the answer: a remembered one serves many
    wire = answer_bytes(result)
    loop = asyncio.get_running_loop()
    parser = HttpResponseParser(BaseProtocol(loop), loop, 2**16, response_with_body=True)
    (message, payload), *rest = parser.feed_data(wire)[0]
    assert not rest and payload.is_eof()
    assert message.code == result.status and message.version == (1, 1)
    assert payload.read_nowait() == result.body
    sent = {k.lower(): v for k, v in message.headers.items()}
    # An origin server's Date (RFC 9110, 6.6.1), of this second.
    date = parsedate_to_datetime(sent.pop("date"))
    assert abs(date.timestamp() - time.time()) < 5
    assert sent == {**{k.lower(): v for k, v in result.headers.items()},
                    "content-length": str(len(result.body))}  # fmt: skip
