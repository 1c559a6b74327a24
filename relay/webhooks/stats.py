"""The webhooks' Prometheus metrics, on the Relay's private registry (relay.metrics).

Invariant: the counters only grow; `pending` is the store's count of undelivered events as last
read (after every change the sender made to it).
"""

from __future__ import annotations

from collections.abc import Iterator

from attrs import define
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


@define(eq=False)
class WebhookStats:
    made: int = 0  # events made by the scan
    reached: int = 0  # recipients who had a device connected, or the message, after the delay
    delivered: int = 0  # events the receiver accepted (2xx)
    retried: int = 0  # failed attempts of an event that will be tried again
    expired: int = 0  # events given up after webhook_max_age
    dropped: int = 0  # events dropped, oldest first, from a full backlog (webhook_max_pending)
    requests: int = 0  # HTTP requests made
    pending: int = 0  # gauge: events waiting for delivery


@define(eq=False)
class WebhookCollector(Collector):
    stats: WebhookStats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        outcomes = CounterMetricFamily(
            "relay_webhook_deliveries",
            "Webhook event delivery attempts by outcome: delivered (2xx), retried (failed, "
            "to be tried again), expired (given up after webhook_max_age), dropped (backlog full)",
            labels=["outcome"],
        )
        for outcome in ("delivered", "retried", "expired", "dropped"):
            outcomes.add_metric([outcome], getattr(s, outcome))
        yield outcomes
        yield GaugeMetricFamily(
            "relay_webhook_pending", "Webhook events waiting for delivery", value=s.pending
        )
        yield CounterMetricFamily(
            "relay_webhook_events", "message.undelivered events made", value=s.made
        )
        yield CounterMetricFamily(
            "relay_webhook_recipients_reached",
            "Recipients who had a device connected or the message delivered within "
            "webhook_delay (no event)",
            value=s.reached,
        )
        yield CounterMetricFamily(
            "relay_webhook_requests", "Webhook HTTP requests made", value=s.requests
        )
