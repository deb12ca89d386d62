"""Invalidation messages and the coherence switch: pure logic, no connections."""

from __future__ import annotations

import pytest

from jwtkeymap.core.cache import Mapped, MappingCache
from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.invalidation.channel import Backoff
from jwtkeymap.core.invalidation.coherence import InvalidationBus
from jwtkeymap.core.invalidation.messages import Invalidation, apply_message, parse_message
from jwtkeymap.core.invalidation.redis import RedisChannel, heartbeat_channel
from jwtkeymap.core.keys import KeyIdentity
from jwtkeymap.core.settings import load_settings

KEY = KeyIdentity(token_hash="c" * 64)


def filled() -> MappingCache:
    cache = MappingCache(max_entries=10, positive_ttl=60, negative_ttl=60)
    for issuer in ("https://a", "https://b"):
        cache.put(MappingIdentity(issuer, "sub", "alice"), Mapped("m1", "", KEY))
    cache.put(MappingIdentity("https://a", "sub", "bob"), Mapped("m2", "", KeyIdentity("d" * 64)))
    return cache


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ('{"all": true}', Invalidation("all")),
        ('{"key": "0123456789ab"}', Invalidation("key", key_fingerprint="0123456789ab")),
        (
            '{"issuer": "", "claim_name": "sub", "claim_value": "alice"}',
            Invalidation("identity", identity=MappingIdentity("", "sub", "alice")),
        ),
    ],
)
def test_the_three_shapes_parse_and_round_trip(payload, expected):
    message = parse_message(payload)
    assert message == expected
    assert parse_message(message.to_json()) == expected


@pytest.mark.parametrize(
    "payload",
    ["", "null", "[]", '"x"', '{"all": false}', '{"issuer": "", "claim_name": "sub"}',
     '{"issuer": 1, "claim_name": "sub", "claim_value": "a"}', '{"key": ""}'],
)  # fmt: skip
def test_anything_else_is_malformed(payload):
    with pytest.raises(ValueError):
        parse_message(payload)


def test_global_identity_evicts_every_issuer_scoped_one_only_its_own():
    cache = filled()
    assert apply_message(cache, parse_message('{"issuer": "https://a", "claim_name": "sub", '
                                              '"claim_value": "alice"}')) == 1  # fmt: skip
    assert len(cache) == 2
    cache = filled()
    assert apply_message(cache, Invalidation("identity", MappingIdentity("", "sub", "alice"))) == 2
    assert len(cache) == 1


def test_key_and_all_messages():
    cache = filled()
    assert apply_message(cache, Invalidation("key", key_fingerprint=KEY.fingerprint)) == 2
    assert len(cache) == 1
    assert apply_message(cache, Invalidation("all")) == 1
    assert len(cache) == 0


class Target:
    def __init__(self) -> None:
        self.cache = filled()
        self.calls: list[str] = []

    def suspend(self) -> None:
        self.calls.append("suspend")

    def resume(self) -> None:
        self.calls.append("resume")


async def test_coherent_while_listen_is_up_redis_is_a_redundant_path():
    settings = load_settings(None, database_url="postgresql://x@h/db", redis_url="redis://h")
    target = Target()
    bus = InvalidationBus(settings, target)
    pg, redis = bus.sources
    bus.channel_up(redis)
    assert not bus.connected and target.calls == []
    bus.channel_up(pg)
    assert bus.connected and target.calls == ["resume"]
    bus.channel_down(redis)  # LISTEN still sees every change: keep serving
    assert bus.connected and target.calls == ["resume"]
    bus.channel_down(pg)
    assert not bus.connected and target.calls == ["resume", "suspend"]
    assert bus.stats.disconnects == {"redis": 1, "postgres": 1}


async def test_redis_only_channel_must_be_up():
    settings = load_settings(
        None, database_url="postgresql://x@h/db", redis_url="redis://h", invalidation_listen=False
    )
    target = Target()
    bus = InvalidationBus(settings, target)
    [redis] = bus.sources
    bus.channel_up(redis)
    assert bus.connected and target.calls == ["resume"]
    bus.channel_down(redis)
    assert not bus.connected and target.calls == ["resume", "suspend"]


def test_redis_alone_requires_the_relays_heartbeat_redis_beside_listen_does_not():
    alone = InvalidationBus(
        load_settings(
            None,
            database_url="postgresql://x@h/db",
            redis_url="redis://h",
            invalidation_listen=False,
            invalidation_relay_timeout_seconds=7,
        ),
        Target(),
    )
    beside = InvalidationBus(
        load_settings(None, database_url="postgresql://x@h/db", redis_url="redis://h"), Target()
    )
    [redis] = alone.sources
    assert isinstance(redis, RedisChannel) and redis.relay_timeout == 7
    redundant = beside.sources[1]
    assert isinstance(redundant, RedisChannel) and redundant.relay_timeout == 0


def test_heartbeats_go_next_to_the_channel():
    assert heartbeat_channel("jwtkeymap_invalidate") == "jwtkeymap_invalidate:relay"


async def test_malformed_message_flushes_and_is_counted():
    settings = load_settings(None, database_url="postgresql://x@h/db")
    target = Target()
    bus = InvalidationBus(settings, target)
    [pg] = bus.sources
    bus.received(pg, "garbage")
    assert len(target.cache) == 0
    assert bus.stats.received == {("postgres", "malformed"): 1}


async def test_no_channel_means_ttl_only_coherence():
    bus = InvalidationBus(load_settings(None), Target())
    await bus.start()
    assert not bus.configured
    assert bus.connected


def test_backoff_grows_to_its_cap_and_resets():
    backoff = Backoff(initial=0.1, maximum=1.0)
    delays = [backoff.next() for _ in range(8)]
    assert all(0.05 <= d <= 1.0 for d in delays)
    assert max(delays[5:]) > 0.4
    backoff.reset()
    assert backoff.next() <= 0.1
