"""Prometheus metrics of the resolver, on a registry of its own (one per application).

Counters that ``core`` already keeps (cache statistics, JWKS refreshes, bus
messages) are read at scrape time by a collector, so the hot path pays nothing
for them.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import Final, NamedTuple, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from jwtkeymap.core.cache import CacheStats
from jwtkeymap.core.invalidation.coherence import InvalidationBus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The check answers in ~0.1 ms from the cache and ~1 ms from the database.
_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


class JwksStatus(NamedTuple):
    """One issuer's key set, as metrics show it."""

    issuer: str
    refreshes: int
    loaded: bool


class Observed(Protocol):
    """What the metrics read at scrape time (the resolver's service provides it)."""

    def cache_stats(self) -> Iterable[tuple[str, CacheStats, int]]:
        """(name, stats, size) of every cache."""

    def jwks_status(self) -> Iterable[JwksStatus]:
        """Each issuer's key set."""

    def invalidation(self) -> InvalidationBus:
        """The invalidation bus."""


class Metrics:
    """The resolver's metrics and their registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # The check path counts in plain integers (a dict increment and a bisect);
        # the families are built at scrape time. prometheus_client's own Counter and
        # Histogram take a lock per update, which costs more than a cache hit.
        self.decisions: dict[tuple[str, str], int] = {}
        self.check_seconds = _Histogram(_LATENCY_BUCKETS)
        # Database round trips of the policy engine, by operation (lookup, register).
        self.db_seconds: dict[str, _Histogram] = {}
        # Requests the mode's fast lane answered (resolver/lane.py; of those, the ones
        # whose head it knew already: resolver/heads.py), connections it handed to the
        # application. Reverse-proxy mode: upstream answers by status class ("error":
        # unreachable), fast-lane responses passed on before they were parsed
        # (resolver/hops.py).
        self.upstream: dict[str, int] = {}
        self.fast_lane = 0
        self.repeated_heads = 0
        self.passed_responses = 0
        self.handovers: dict[str, int] = {}
        self.registry.register(_CheckCollector(self))

    def count(self, decision: str, reason: str | None, seconds: float) -> None:
        """Count one check answer and its latency."""
        labels = (decision, reason or "")
        self.decisions[labels] = self.decisions.get(labels, 0) + 1
        self.check_seconds.observe(seconds)

    def count_upstream(self, status: int | None) -> None:
        """Count an upstream answer by its status class (``None``: unreachable)."""
        label = "error" if status is None else _STATUS_CLASSES.get(status // 100, "other")
        self.upstream[label] = self.upstream.get(label, 0) + 1

    def count_handover(self, reason: str) -> None:
        """Count a connection the fast lane handed to the application."""
        self.handovers[reason] = self.handovers.get(reason, 0) + 1

    def observe_query(self, operation: str, seconds: float) -> None:
        """Record one database operation's latency (the store's query observer)."""
        histogram = self.db_seconds.get(operation)
        if histogram is None:
            histogram = self.db_seconds[operation] = _Histogram(_LATENCY_BUCKETS)
        histogram.observe(seconds)

    def attach(self, observed: Observed) -> None:
        """Expose the core counters of ``observed`` at scrape time."""
        self.registry.register(_ServiceCollector(observed))

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)


_STATUS_CLASSES: Final = {n: f"{n}xx" for n in range(1, 6)}


class _Histogram:
    """A lock-free histogram for one event loop: bucket counts, exported cumulatively."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Record one value."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``le`` buckets, as the exposition wants them."""
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return buckets

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        """The metric family, with cumulative ``le`` buckets."""
        buckets = self.buckets()
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.sum)


class _CheckCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        decisions = CounterMetricFamily(
            "jwtkeymap_decisions",
            "Check answers by decision and reason.",
            labels=["decision", "reason"],
        )
        for labels, value in sorted(self._metrics.decisions.items()):
            decisions.add_metric(list(labels), value)
        yield decisions
        yield self._metrics.check_seconds.family(
            "jwtkeymap_check_duration_seconds",
            "Time to answer a check (token, policy, cache or database).",
        )
        db = HistogramMetricFamily(
            "jwtkeymap_db_query_duration_seconds",
            "Database round trips of the policy engine, by operation.",
            labels=["operation"],
        )
        for operation, histogram in sorted(self._metrics.db_seconds.items()):
            db.add_metric([operation], histogram.buckets(), histogram.sum)
        yield db
        yield _counter(
            "jwtkeymap_upstream_responses",
            "Reverse-proxy mode: upstream responses by status class (error: unreachable).",
            "status",
            self._metrics.upstream,
        )
        yield CounterMetricFamily(
            "jwtkeymap_fast_lane_requests",
            "Requests answered by the fast lane (the check's or the proxy's).",
            value=self._metrics.fast_lane,
        )
        yield CounterMetricFamily(
            "jwtkeymap_fast_lane_repeated_heads",
            "Fast-lane requests whose head repeated the connection's last one but for "
            "its Content-Length (not parsed again).",
            value=self._metrics.repeated_heads,
        )
        yield CounterMetricFamily(
            "jwtkeymap_proxy_passed_responses",
            "Reverse-proxy mode: fast-lane responses that came whole in one read and were "
            "written to the client before they were parsed.",
            value=self._metrics.passed_responses,
        )
        yield _counter(
            "jwtkeymap_fast_lane_handovers",
            "Connections the fast lane handed to the application, by the first request it "
            "did not take.",
            "reason",
            self._metrics.handovers,
        )


def _counter(name: str, documentation: str, label: str, counts: dict[str, int]) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in sorted(counts.items()):
        family.add_metric([value], count)
    return family


class _ServiceCollector(Collector):
    def __init__(self, observed: Observed) -> None:
        self._observed = observed

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        observed = self._observed
        hits = CounterMetricFamily("jwtkeymap_cache_hits", "Cache hits.", labels=["cache"])
        misses = CounterMetricFamily("jwtkeymap_cache_misses", "Cache misses.", labels=["cache"])
        evictions = CounterMetricFamily(
            "jwtkeymap_cache_evictions", "Entries evicted for capacity.", labels=["cache"]
        )
        entries = GaugeMetricFamily("jwtkeymap_cache_entries", "Entries held.", labels=["cache"])
        loads = CounterMetricFamily(
            "jwtkeymap_cache_loads",
            "Loads run for misses (one per single flight, however many callers waited).",
            labels=["cache"],
        )
        for name, stats, size in observed.cache_stats():
            hits.add_metric([name], stats.hits)
            loads.add_metric([name], stats.loads)
            misses.add_metric([name], stats.misses)
            evictions.add_metric([name], stats.evictions)
            entries.add_metric([name], size)
        yield from (hits, misses, evictions, entries, loads)

        refreshes = CounterMetricFamily(
            "jwtkeymap_jwks_refreshes", "JWKS fetches by issuer.", labels=["issuer"]
        )
        loaded = GaugeMetricFamily(
            "jwtkeymap_jwks_loaded", "1 when the issuer's key set holds keys.", labels=["issuer"]
        )
        for jwks in observed.jwks_status():
            refreshes.add_metric([jwks.issuer], jwks.refreshes)
            loaded.add_metric([jwks.issuer], 1 if jwks.loaded else 0)
        yield from (refreshes, loaded)

        bus = observed.invalidation()
        received = CounterMetricFamily(
            "jwtkeymap_invalidations_received",
            "Invalidation messages by channel and kind (identity, key, all, malformed).",
            labels=["channel", "kind"],
        )
        evicted = CounterMetricFamily(
            "jwtkeymap_invalidation_evictions", "Cache entries evicted by invalidations."
        )
        disconnects = CounterMetricFamily(
            "jwtkeymap_invalidation_disconnects", "Channel losses.", labels=["channel"]
        )
        connected = GaugeMetricFamily(
            "jwtkeymap_invalidation_connected",
            "1 while the invalidation channels see every change (the cache is coherent).",
        )
        channel_up = GaugeMetricFamily(
            "jwtkeymap_invalidation_channel_connected",
            "1 while this invalidation channel is connected.",
            labels=["channel"],
        )
        applied = GaugeMetricFamily(
            "jwtkeymap_invalidation_last_applied_timestamp_seconds",
            "Unix time the last invalidation message was applied (0: none yet).",
        )
        applied.add_metric([], bus.stats.last_applied)
        for (channel, kind), value in sorted(bus.stats.received.items()):
            received.add_metric([channel, kind], value)
        evicted.add_metric([], bus.stats.evicted)
        for channel, value in sorted(bus.stats.disconnects.items()):
            disconnects.add_metric([channel], value)
        connected.add_metric([], 1 if bus.connected else 0)
        for source in bus.sources:
            channel_up.add_metric([source.name], 1 if source.connected else 0)
        yield from (received, evicted, disconnects, connected, channel_up, applied)
