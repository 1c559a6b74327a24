"""The webhooks' Trio shell: the scan that makes events, and the sender that POSTs them.

    WebhookSender.run ── nursery
      ├─ scan: stored messages after the store's webhook cursor, once `webhook_delay` old ->
      │        the events owed (relay.webhooks.events) -> store (events + cursor, one write)
      └─ send: due events, `webhook_batch` per POST {"events":[…]}, signed -> 2xx: removed;
               else rescheduled with backoff and jitter, or expired (relay.webhooks.policy)

Why a scan of the store instead of a note taken when a message is delivered: the decision is
derived from what is durable (the message, the recipients' delivered watermarks) plus who is
connected now, and the cursor moves in the same write that stores the events, so a crash at
any point (after the `sent` receipt, before the delay ran out, during a POST) loses no event:
after a restart the scan resumes from the cursor and the sender from the pending events.
Latency: an event is made between `webhook_delay` and `webhook_delay` plus one poll
(`delay / 4`, within 0.05 to 0.5 s) after its message was stored.

At least once: an event leaves the store only after a 2xx for a request carrying it, so a
request whose answer was lost is sent again; receivers dedupe by `id`. One request is in flight
at a time, oldest events first.

A failure of the store or of the receiver never ends the relay: it is logged, and the loop
that met it tries again after a pause.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable

import httpx
import trio
from attrs import define, field, frozen

from relay.clock import iso_utc
from relay.config import RelayConfig
from relay.errors import ConfigError
from relay.store.base import OutboxEvent, Store, Watermarks, WebhookOutbox
from relay.webhooks.events import recipients, stored_at, undelivered_events
from relay.webhooks.policy import Backoff, DeliveryPolicy, Settlement, accepted
from relay.webhooks.signature import SIGNATURE_HEADER, read_secret_file, sign
from relay.webhooks.stats import WebhookStats

log = logging.getLogger("relay.webhooks")

#: stored messages the scan reads at once
SCAN_BATCH = 500
#: the scan's poll, bounds (s): a quarter of the delay, within them
POLL_MIN, POLL_MAX = 0.05, 0.5
#: longest idle wait of the sender (s); a new event wakes it at once
IDLE_MAX = 30.0
#: pause after a failure of the store (s)
ERROR_PAUSE = 1.0
#: failed requests in a row per warning logged
FAILURES_LOGGED = 100


@frozen
class WebhookSettings:
    """The webhook settings of a RelayConfig, with the signing key read from its file."""

    url: str
    key: bytes = field(repr=False)
    delay: float = 2.0
    max_age: float = 86400.0
    retry_initial: float = 1.0
    retry_max: float = 300.0
    timeout: float = 10.0
    batch: int = 100
    max_pending: int = 100_000

    @classmethod
    def from_config(cls, config: RelayConfig) -> WebhookSettings | None:
        """None when webhooks are off; ConfigError when the secret file cannot be read."""
        if config.webhook_url is None or config.webhook_secret_file is None:
            return None
        return cls(
            url=config.webhook_url,
            key=read_secret_file(config.webhook_secret_file),
            delay=config.webhook_delay,
            max_age=config.webhook_max_age,
            retry_initial=config.webhook_retry_initial,
            retry_max=config.webhook_retry_max,
            timeout=config.webhook_timeout,
            batch=config.webhook_batch,
            max_pending=config.webhook_max_pending,
        )


@define(eq=False)
class WebhookSender:
    """Makes and delivers the webhook events of one relay; `await nursery.start(sender.run)`.

    `connected(user)`: whether a device of the user is connected (the router's answer).
    `rng`: the jitter's source (seed it for reproducible waits). `wall`: unix seconds."""

    settings: WebhookSettings
    store: Store  # and a WebhookOutbox (ConfigError when not)
    connected: Callable[[str], bool]
    stats: WebhookStats = field(factory=WebhookStats)
    rng: random.Random = field(factory=random.Random)
    wall: Callable[[], float] = time.time
    transport: httpx.AsyncBaseTransport | None = None
    _outbox: WebhookOutbox = field(init=False)
    _policy: DeliveryPolicy = field(init=False)
    _wake: trio.Event = field(init=False, factory=trio.Event)
    _failing: int = field(init=False, default=0)  # failed requests in a row

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.store, WebhookOutbox):
            raise ConfigError(
                f"webhooks need a store that keeps their events; {type(self.store).__name__} "
                "does not (WebhookOutbox)"
            )
        self._outbox = self.store
        s = self.settings
        self._policy = DeliveryPolicy(Backoff(s.retry_initial, s.retry_max), s.max_age, self.rng)

    @property
    def poll(self) -> float:
        return min(POLL_MAX, max(POLL_MIN, self.settings.delay / 4))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Scan and send until cancelled; started once the cursor is placed and the client made.
        Cancelled mid-request, the request's events stay pending (sent again later)."""
        await self._outbox.webhook_start()
        await self._count()
        log.info(
            "webhooks: to %s, %g s after a message for a user with no device connected; "
            "%d event(s) pending",
            httpx.URL(self.settings.url).host,
            self.settings.delay,
            self.stats.pending,
        )
        timeout = httpx.Timeout(self.settings.timeout)
        async with (
            httpx.AsyncClient(timeout=timeout, transport=self.transport) as client,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(self._forever, "scan", self.scan_once, False)
            nursery.start_soon(self._forever, "send", lambda: self.send_once(client), True)
            task_status.started()

    async def _forever(
        self, name: str, step: Callable[[], Awaitable[float]], wakeable: bool
    ) -> None:
        while True:
            wake = self._wake
            try:
                wait = await step()
            except Exception:
                log.exception("webhooks: %s failed; trying again in %g s", name, ERROR_PAUSE)
                wait = ERROR_PAUSE
            if wait <= 0:
                await trio.lowlevel.checkpoint()
            elif wakeable:
                with trio.move_on_after(wait):
                    await wake.wait()
            else:
                await trio.sleep(wait)

    def _nudge(self) -> None:
        self._wake.set()
        self._wake = trio.Event()

    async def _count(self) -> None:
        self.stats.pending, _ = await self._outbox.webhook_pending()

    # --- scan -----------------------------------------------------------------------------------
    async def scan_once(self) -> float:
        """Decide the stored messages that are `delay` old; returns how long to wait before
        the next scan."""
        settings = self.settings
        candidates = await self._outbox.webhook_candidates(limit=SCAN_BATCH)
        if not candidates:
            return self.poll
        now = self.wall()
        created = iso_utc(now)
        wait = 0.0 if len(candidates) == SCAN_BATCH else self.poll
        position: int | None = None
        events: list[OutboxEvent] = []
        members: dict[str, dict[str, Watermarks]] = {}  # this scan's reads, by conversation
        for candidate in candidates:
            message = candidate.message
            due = stored_at(message) + settings.delay
            if due > now:
                wait = due - now
                break
            position = candidate.position
            if now - due >= settings.max_age:
                continue  # it would be given up at once (webhooks were off, or the relay down)
            peer = message.recipient_id
            if message.group_id is None and (peer is None or peer == message.sender_id):
                continue
            if message.group_id is None and peer is not None and self.connected(peer):
                self.stats.reached += 1
                continue
            marks = members.get(message.conversation)
            if marks is None:
                marks = members[message.conversation] = await self.store.member_watermarks(
                    message.conversation
                )
            owed = undelivered_events(message, marks, self.connected, created)
            self.stats.reached += len(recipients(message, marks)) - len(owed)
            # its age counts from when it became due: the same for every event of a message,
            # and in message order, which is what the backlog bound drops the oldest by
            events.extend(OutboxEvent(e.id, e.to_json(), due, now, 0) for e in owed)
        if position is not None:
            dropped = await self._outbox.webhook_advance(
                position, events, max_pending=settings.max_pending
            )
            self.stats.made += len(events)
            self.stats.dropped += dropped
            if dropped:
                log.warning(
                    "webhooks: %d undelivered event(s) dropped, oldest first: more than "
                    "webhook_max_pending (%d) waiting",
                    dropped,
                    settings.max_pending,
                )
            if events:
                await self._count()
                self._nudge()
        return wait

    # --- send -----------------------------------------------------------------------------------
    async def send_once(self, client: httpx.AsyncClient) -> float:
        """One request of due events (or none due); returns how long to wait before the next,
        unless a new event comes first."""
        now = self.wall()
        due = await self._outbox.webhook_due(now, limit=self.settings.batch)
        if not due:
            self.stats.pending, next_at = await self._outbox.webhook_pending()
            return IDLE_MAX if next_at is None else min(IDLE_MAX, max(next_at - now, 0.0))
        send, gone = self._policy.sort_out(due, now)
        outcome = Settlement()
        if send:
            ok = await self._post(client, send)
            outcome = self._policy.settle(send, ok, self.wall())
        await self._outbox.webhook_settle(gone.removed + outcome.removed, outcome.retried)
        stats = self.stats
        stats.delivered += len(outcome.delivered)
        stats.retried += len(outcome.retried)
        stats.expired += len(gone.expired) + len(outcome.expired)
        if gone.expired or outcome.expired:
            log.warning(
                "webhooks: %d event(s) given up after webhook_max_age (%g s)",
                len(gone.expired) + len(outcome.expired),
                self.settings.max_age,
            )
        await self._count()
        return 0.0

    async def _post(self, client: httpx.AsyncClient, events: list[OutboxEvent]) -> bool:
        """POST the events in one signed request; whether the receiver accepted them. The
        answer's body is never read (a receiver cannot make the relay buffer anything)."""
        body = b'{"events":[' + b",".join(e.body.encode() for e in events) + b"]}"
        headers = {
            "content-type": "application/json",
            SIGNATURE_HEADER: sign(self.settings.key, body, int(self.wall())),
        }
        self.stats.requests += 1
        try:
            async with client.stream(
                "POST", self.settings.url, content=body, headers=headers
            ) as response:
                status = response.status_code
        except httpx.HTTPError as exc:
            self._failed(f"request failed: {_reason(exc)}")
            return False
        if accepted(status):
            if self._failing:
                log.info("webhooks: the receiver accepts again after %d failed request(s)",
                         self._failing)  # fmt: skip
                self._failing = 0
            return True
        self._failed(f"the receiver answered {status}")
        return False

    def _failed(self, why: str) -> None:
        """A failed request: a warning when the receiver starts failing, then one every
        FAILURES_LOGGED in a row (an outage costs a few lines, not one per request)."""
        self._failing += 1
        if self._failing % FAILURES_LOGGED == 1:
            log.warning(
                "webhooks: %s (%d failed request(s) in a row; events are retried with backoff)",
                why,
                self._failing,
            )


def _reason(exc: httpx.HTTPError) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
