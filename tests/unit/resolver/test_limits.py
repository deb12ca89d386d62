"""The listener's limits as settings give them (issue 14, F1)."""

from __future__ import annotations

import pytest

from jwtkeymap.core.errors import ConfigError
from jwtkeymap.core.settings import load_settings
from jwtkeymap.resolver.limits import (
    CHECK_KEEPALIVE_SECONDS,
    PROXY_KEEPALIVE_SECONDS,
    Limits,
    oversized_field,
)


def test_keepalive_is_short_for_the_public_listener_and_long_behind_proxies() -> None:
    assert Limits.of(load_settings(None, upstream="http://u:1")).keepalive_timeout == 75
    assert Limits.of(load_settings(None)).keepalive_timeout == CHECK_KEEPALIVE_SECONDS
    # Longer than Envoy's (1 h) and nginx's (60 s) pool idle timeouts.
    assert CHECK_KEEPALIVE_SECONDS > 3600 > PROXY_KEEPALIVE_SECONDS
    assert Limits.of(load_settings(None, keepalive_timeout_seconds=5)).keepalive_timeout == 5


def test_only_authorization_may_exceed_the_field_limit() -> None:
    limits = Limits.of(load_settings(None))
    long = b"x" * 9000
    assert not oversized_field([(b"Authorization", long), (b"Host", b"h")], limits)
    assert not oversized_field([(b"authorization", long)], limits)
    assert oversized_field([(b"Cookie", long)], limits)
    assert not oversized_field([(b"Cookie", b"x" * 8000)], limits)


def test_the_head_must_hold_the_authorization_header() -> None:
    with pytest.raises(ConfigError, match="max_request_head_bytes"):
        load_settings(None, max_authorization_bytes=64 * 1024, max_request_head_bytes=32 * 1024)
