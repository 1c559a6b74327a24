"""Prometheus metrics of one Relay: plain counters on the hot path, read at scrape time.

Invariant: the hot path only adds to integer attributes of `Stats` (no locks, no label
lookups); `RelayMetrics.render()` turns them into Prometheus text through a collector
registered on a registry private to the Relay, so two relays in one process never share
a metric. Other parts may register their own collectors on `RelayMetrics.registry`.
"""

from __future__ import annotations

from collections.abc import Iterator

from attrs import define, field
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relay.fastpath import IMPLEMENTATION


@define(eq=False)
class Stats:
    """The counters the Trio shell bumps; each only grows, except the two gauges."""

    connections_open: int = 0  # gauge: WebSocket connections currently open
    draining: int = 0  # gauge: 1 while the relay drains for shutdown
    connections_total: int = 0  # WebSocket handshakes accepted
    handshake_failures: int = 0  # upgrades refused, timeouts, TLS failures
    frames_in: int = 0  # WebSocket frames (messages and control frames) received
    frames_out: int = 0  # WebSocket frames handed to the kernel
    bytes_in: int = 0  # bytes received on WebSocket connections (after the handshake)
    bytes_out: int = 0  # bytes written on WebSocket connections (after the handshake)
    socket_writes: int = 0  # send calls on WebSocket connections (frames coalesce into few)
    messages_dropped: int = 0  # droppable frames (typing, presence) dropped by a full outbox
    slow_consumer_closes: int = 0  # connections the relay closed 1013 (not a peer's own 1013)
    heartbeat_timeouts: int = 0  # connections closed because the peer stayed silent
    late_flushes: int = 0  # outboxes filled without waking the flusher, found by the sweep
    http_requests: dict[int, int] = field(factory=dict)  # plain-HTTP responses by status


_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("connections", "connections_total", "WebSocket connections accepted"),
    ("handshake_failures", "handshake_failures", "Opening handshakes that failed or timed out"),
    ("frames_received", "frames_in", "WebSocket frames received"),
    ("frames_sent", "frames_out", "WebSocket frames written to the kernel"),
    ("bytes_received", "bytes_in", "Bytes received on WebSocket connections"),
    ("bytes_sent", "bytes_out", "Bytes written on WebSocket connections"),
    ("socket_writes", "socket_writes", "Socket writes on WebSocket connections"),
    ("messages_dropped", "messages_dropped", "Droppable frames dropped by a full outbox"),
    (
        "slow_consumer_closes",
        "slow_consumer_closes",
        "Connections the relay closed with 1013: a full or long-backed-up outbox, or the "
        "memory budget",
    ),
    ("heartbeat_timeouts", "heartbeat_timeouts", "Connections closed for a silent peer"),
    ("late_flushes", "late_flushes", "Outboxes found pending by the periodic sweep"),
)


@define(eq=False)
class _StatsCollector(Collector):
    stats: Stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        yield GaugeMetricFamily(
            "relay_connections_open", "WebSocket connections open", value=s.connections_open
        )
        yield GaugeMetricFamily(
            "relay_draining", "1 while the relay drains for shutdown", value=s.draining
        )
        for name, attr, doc in _COUNTERS:
            yield CounterMetricFamily(f"relay_{name}", doc, value=getattr(s, attr))
        http = CounterMetricFamily(
            "relay_http_requests", "Plain-HTTP requests answered, by status", labels=["status"]
        )
        for status, count in sorted(s.http_requests.items()):
            http.add_metric([str(status)], count)
        yield http
        info = GaugeMetricFamily(
            "relay_fastpath_info", "Which fast path is in use", labels=["implementation"]
        )
        info.add_metric([IMPLEMENTATION], 1)
        yield info


@define(eq=False)
class RelayMetrics:
    """The metrics of one Relay: its `stats` and the private `registry` that exposes them."""

    stats: Stats = field(factory=Stats)
    registry: CollectorRegistry = field(factory=lambda: CollectorRegistry(auto_describe=True))

    def __attrs_post_init__(self) -> None:
        self.registry.register(_StatsCollector(self.stats))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric on the registry."""
        return generate_latest(self.registry)


#: Content type of `RelayMetrics.render()`.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
