"""Secret data to key hash: decoded, trimmed, hashed; errors name the Secret, never the value."""

from __future__ import annotations

import base64

import pytest

from jwtkeymap.core.keys import hash_key
from jwtkeymap.operator.secrets import (
    SecretKeyMissing,
    SecretNotFound,
    decode_value,
    key_hash_from_data,
)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_hashes_the_decoded_value_without_trailing_newline() -> None:
    data = {"apiKey": b64("sk-abc\n")}
    assert key_hash_from_data(data, secret="ns/s", key="apiKey") == hash_key("sk-abc")


def test_plain_values() -> None:
    assert key_hash_from_data({"k": " sk-x "}, secret="s", key="k", encoded=False) == hash_key(
        "sk-x"
    )


@pytest.mark.parametrize(
    ("data", "error", "text"),
    [
        (None, SecretNotFound, "Secret ns/s not found"),
        ({}, SecretKeyMissing, "has no key 'apiKey'"),
        ({"apiKey": b64("  \n")}, SecretKeyMissing, "is empty"),
        ({"apiKey": "***not base64***"}, SecretKeyMissing, "not UTF-8 text"),
        (
            {"apiKey": base64.b64encode(b"\xff\xfe").decode()},
            SecretKeyMissing,
            "not UTF-8",
        ),
    ],
)
def test_errors(data: dict[str, str] | None, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text) as caught:
        key_hash_from_data(data, secret="ns/s", key="apiKey")
    assert "sk-" not in str(caught.value)


def test_decode_value_accepts_only_base64_utf8_text() -> None:
    assert decode_value(b64("sk-ä")) == "sk-ä"
    for bad in ("***", base64.b64encode(b"\xff").decode(), "c2stw6Q=\u00e4"):
        with pytest.raises(ValueError):
            decode_value(bad)
