"""--listen parsing, and which paths are checks."""

from __future__ import annotations

import pytest

from jwtkeymap.resolver.handlers import is_check_path
from jwtkeymap.resolver.server import parse_listen


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        ("127.0.0.1:1", ("127.0.0.1", 1)),
        ("[::1]:9000", ("::1", 9000)),
        (":8080", ("0.0.0.0", 8080)),
    ],
)
def test_valid(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["8080", "host", "host:", "host:0", "host:65536", "h:80x"])
def test_invalid(text):
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen(text)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/check", True),
        ("/check/", True),
        ("/check/v1/chat/completions", True),
        ("/check//x", True),
        ("/checkx", False),
        ("/check.json", False),
        ("/CHECK", False),
        ("/", False),
        ("", False),
        ("/healthz", False),
    ],
)
def test_check_paths(path, expected):
    assert is_check_path(path) is expected
