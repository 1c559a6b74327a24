"""Prometheus metrics of one Relay: plain counters on the hot path, read at scrape time.

Invariant: the hot path only adds to integer attributes of `Stats` (no locks, no label
lookups); `RelayMetrics.render()` turns them into Prometheus text through a collector
registered on a registry private to the Relay, so two relays in one process never share
a metric. Other parts may register their own collectors on `RelayMetrics.registry`.

Histograms are `Histogram`s: a list of bucket counts, one `bisect` and two additions per
observation, rendered as a HistogramMetricFamily at scrape time. One thread observes each
(the Trio thread: delivery latency; the SQLite writer thread: commits); a scrape that reads
it meanwhile may see the sum a step ahead of the counts, never a count that goes back.
Labelled counters (failures by reason) are dicts bumped on their failure paths only.

The process: `/metrics` is this registry followed by prometheus_client's default registry
(`process_*`, `python_*`, and whatever the embedding program registered there), so two relays
in one process still show only their own `relay_*` metrics. `export_to_default()` (what
`relay serve`, one relay per process, calls) puts this relay's collectors on the default
registry as well, so that a program's own exporter of that registry sees them; `render()`
then renders the default registry alone (each metric once).

Who feeds it: the shell (relay.transport) holds `stats`; a handler or store that keeps
metrics of its own is an `Instrumented` and is handed this RelayMetrics once, before serving.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from attrs import define, field
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from relay.fastpath import IMPLEMENTATION

#: Bucket bounds of the delivery latency (accept to socket write), seconds.
DELIVERY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
#: Bucket bounds of a SQLite commit's duration, seconds.
COMMIT_SECONDS_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
#: Bucket bounds of a search's time in the relay (its frame handled to its answer queued), s.
SEARCH_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
#: Bucket bounds of a SQLite commit's size, requests (an append of n messages weighs n).
COMMIT_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


@define(eq=False)
class Histogram:
    """Observations counted into buckets (`counts[i]`: values <= bounds[i] and > bounds[i-1];
    the last: above every bound), and their sum."""

    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)
    total: float = 0.0

    def __attrs_post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        counts = list(self.counts)  # one snapshot: cumulative buckets never go down
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.bounds, counts, strict=False):
            running += n
            buckets.append((repr(float(bound)), running))
        buckets.append(("+Inf", running + counts[-1]))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.total)


def _delivery_histogram() -> Histogram:
    return Histogram(DELIVERY_BUCKETS)


def _search_histogram() -> Histogram:
    return Histogram(SEARCH_BUCKETS)


def _commit_size_histogram() -> Histogram:
    return Histogram(COMMIT_SIZE_BUCKETS)


def _commit_seconds_histogram() -> Histogram:
    return Histogram(COMMIT_SECONDS_BUCKETS)


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
    frames_compressed: int = 0  # server frames compressed (permessage-deflate), once per payload
    http_requests: dict[int, int] = field(factory=dict)  # plain-HTTP responses by status
    # --- the messaging core (relay.core) ---
    users_online: int = 0  # gauge: users with at least one signed-in connection
    devices_online: int = 0  # gauge: signed-in connections
    messages_accepted: int = 0  # messages answered `sent` (stored)
    messages_delivered: int = 0  # live message frames queued to recipients' devices
    backlog_sent: int = 0  # stored messages queued to a device by its backlog
    messages_failed: dict[str, int] = field(factory=dict)  # answered `failed`, by reason
    rate_limited: dict[str, int] = field(factory=dict)  # frames refused rate_limited, by frame
    auth_failures: dict[str, int] = field(factory=dict)  # sign-ins refused, by reason
    error_frames: dict[str, int] = field(factory=dict)  # `error` frames answered, by code
    #: time.monotonic() when the oldest message answered or released for delivery since the
    #: last flush was accepted (0.0: none); the flush observes it into `delivery_seconds`
    delivery_mark: float = 0.0
    delivery_seconds: Histogram = field(factory=_delivery_histogram)
    search_seconds: Histogram = field(factory=_search_histogram)  # each search answered
    # --- the SQLite store's writer thread ---
    commit_size: Histogram = field(factory=_commit_size_histogram)
    commit_seconds: Histogram = field(factory=_commit_seconds_histogram)
    store_failures: int = 0  # write transactions that failed (every request in them failed)

    def message_failed(self, reason: str, n: int = 1) -> None:
        """`n` messages answered `failed` with `reason` (rate_limited also counts a
        rate-limited message frame)."""
        failed = self.messages_failed
        failed[reason] = failed.get(reason, 0) + n
        if reason == "rate_limited":
            self.frame_rate_limited("message", n)

    def frame_rate_limited(self, frame: str, n: int = 1) -> None:
        limited = self.rate_limited
        limited[frame] = limited.get(frame, 0) + n

    def auth_failed(self, reason: str) -> None:
        failures = self.auth_failures
        failures[reason] = failures.get(reason, 0) + 1

    def error_frame(self, code: str) -> None:
        errors = self.error_frames
        errors[code] = errors.get(code, 0) + 1


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
    ("messages_accepted", "messages_accepted", "Messages accepted: stored and answered sent"),
    (
        "messages_delivered",
        "messages_delivered",
        "Live message frames queued to recipients' devices (one per device)",
    ),
    (
        "backlog_messages_sent",
        "backlog_sent",
        "Stored messages queued to a device by its backlog after auth_ok",
    ),
    ("store_failures", "store_failures", "SQLite write transactions that failed"),
    (
        "frames_compressed",
        "frames_compressed",
        "Server frames compressed with permessage-deflate (once per payload, whatever the "
        "number of recipients)",
    ),
)

#: Labelled counters: (name, Stats attribute, label, documentation).
_LABELLED: tuple[tuple[str, str, str, str], ...] = (
    ("messages_failed", "messages_failed", "reason", "Messages answered failed, by reason"),
    (
        "rate_limited_frames",
        "rate_limited",
        "frame",
        "Frames refused rate_limited, by frame type (message, group)",
    ),
    ("auth_failures", "auth_failures", "reason", "Sign-ins refused, by reason"),
    ("error_frames", "error_frames", "code", "Error frames answered, by error code"),
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
        yield GaugeMetricFamily(
            "relay_users_online",
            "Users with at least one signed-in connection",
            value=s.users_online,
        )
        yield GaugeMetricFamily(
            "relay_devices_online", "Signed-in connections", value=s.devices_online
        )
        for name, attr, doc in _COUNTERS:
            yield CounterMetricFamily(f"relay_{name}", doc, value=getattr(s, attr))
        for name, attr, label, doc in _LABELLED:
            family = CounterMetricFamily(f"relay_{name}", doc, labels=[label])
            for key, count in sorted(dict(getattr(s, attr)).items()):
                family.add_metric([key], count)
            yield family
        yield s.delivery_seconds.family(
            "relay_delivery_seconds",
            "Seconds from accepting a message to the flush writing its sent answer and "
            "deliveries to the kernel (one observation per flush: its oldest message)",
        )
        yield s.search_seconds.family(
            "relay_search_seconds",
            "Seconds from handling a search frame to queueing its answer (its wait for the "
            "store's searcher included), per search answered with a page",
        )
        yield s.commit_size.family(
            "relay_store_commit_batch_size",
            "Requests per SQLite commit (an append of n messages: n)",
        )
        yield s.commit_seconds.family(
            "relay_store_commit_seconds", "Seconds per SQLite write transaction, BEGIN to COMMIT"
        )
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
class _RegistryCollector(Collector):
    """A registry's collectors as one collector (for the default registry)."""

    registry: CollectorRegistry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()


@define(eq=False)
class RelayMetrics:
    """The metrics of one Relay: its `stats` and the private `registry` that exposes them."""

    stats: Stats = field(factory=Stats)
    registry: CollectorRegistry = field(factory=lambda: CollectorRegistry(auto_describe=True))
    #: the default registry this relay's collectors are on (export_to_default), or None
    _exported: CollectorRegistry | None = None
    _proxy: _RegistryCollector | None = None

    def __attrs_post_init__(self) -> None:
        self.registry.register(_StatsCollector(self.stats))

    def render(self) -> bytes:
        """The Prometheus text of this relay's registry and the process-wide default one."""
        if self._exported is not None:
            return generate_latest(self._exported)
        return generate_latest(self.registry) + generate_latest(REGISTRY)

    def export_to_default(self, default: CollectorRegistry = REGISTRY) -> None:
        """Register this relay's metrics on the default registry too (one relay per process:
        a second relay's would collide, and registering raises ValueError)."""
        if self._exported is not None:
            return
        proxy = _RegistryCollector(self.registry)
        default.register(proxy)
        self._proxy = proxy
        self._exported = default

    def unexport(self) -> None:
        """Undo export_to_default."""
        if self._exported is not None and self._proxy is not None:
            self._exported.unregister(self._proxy)
        self._exported = None
        self._proxy = None


@runtime_checkable
class Instrumented(Protocol):
    """A handler or store that feeds a relay's metrics: handed them once, before serving
    (the handler passes them on to its store)."""

    def instrument(self, metrics: RelayMetrics) -> None: ...


#: Content type of `RelayMetrics.render()`.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
