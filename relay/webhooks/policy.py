"""When a webhook event is sent again, and when it is given up (sans-IO).

An event's life, one transition table (h11 `_state.py` style; a move without an entry raises
WebhookError instead of leaving an event in a state nobody designed):

    PENDING --SEND--> SENDING --ACCEPTED--> DELIVERED       (the receiver answered 2xx)
    SENDING --FAILED--> PENDING                             (anything else: retried later)
    PENDING | SENDING --EXPIRE--> EXPIRED                   (older than webhook_max_age)
    PENDING --OVERFLOW--> DROPPED                           (the backlog was full: oldest first)

Only PENDING is kept in the store; the others end the event (DELIVERED, EXPIRED, DROPPED are
final) or last one request (SENDING).

Backoff: after the n-th failed attempt (n >= 1) the event waits `initial * 2**(n-1)` seconds,
at most `maximum`, with "equal jitter": a uniform draw in [half, whole] of that wait, so
receivers that failed together do not get their retries together, yet no retry comes sooner
than half its step. The draw comes from an injected random.Random (seeded in tests). No retry
is scheduled past the moment the event reaches `max_age`: the last attempt is made then, and
failing that the event expires. An event whose retry was due before that moment but found only
after it (the relay was down meanwhile) expires without another attempt.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence

from attrs import define, field, frozen

from relay.errors import WebhookError
from relay.store.base import OutboxEvent


class EventState(enum.Enum):
    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    EXPIRED = "expired"
    DROPPED = "dropped"


class EventInput(enum.Enum):
    SEND = "send"
    ACCEPTED = "accepted"
    FAILED = "failed"
    EXPIRE = "expire"
    OVERFLOW = "overflow"


_S, _In = EventState, EventInput
TRANSITIONS: dict[tuple[EventState, EventInput], EventState] = {
    (_S.PENDING, _In.SEND): _S.SENDING,
    (_S.PENDING, _In.EXPIRE): _S.EXPIRED,
    (_S.PENDING, _In.OVERFLOW): _S.DROPPED,
    (_S.SENDING, _In.ACCEPTED): _S.DELIVERED,
    (_S.SENDING, _In.FAILED): _S.PENDING,
    (_S.SENDING, _In.EXPIRE): _S.EXPIRED,
}
del _S, _In


def transition(state: EventState, event: EventInput) -> EventState:
    """The state after `event` in `state`; WebhookError when the table has no such move."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise WebhookError(f"webhook event: no move {event.name} from {state.name}") from None


def accepted(status: int) -> bool:
    """Whether a receiver's HTTP status delivers the events: any 2xx (redirects are not
    followed: a 3xx is a failed attempt, as is every 4xx and 5xx)."""
    return 200 <= status < 300


@frozen
class Backoff:
    initial: float
    maximum: float

    def delay(self, failures: int, rng: random.Random) -> float:
        """The wait after the `failures`-th failed attempt (see the module docstring)."""
        step = min(self.maximum, self.initial * 2.0 ** min(max(failures - 1, 0), 64))
        return step / 2 + rng.random() * step / 2


@frozen
class Settlement:
    """What a delivery attempt leaves for the store: ids to remove (delivered or expired) and
    ids to try again at their next_at."""

    delivered: tuple[str, ...] = ()
    expired: tuple[str, ...] = ()
    retried: tuple[tuple[str, float], ...] = ()

    @property
    def removed(self) -> tuple[str, ...]:
        return self.delivered + self.expired


@define
class DeliveryPolicy:
    backoff: Backoff
    max_age: float
    rng: random.Random = field(factory=random.Random)

    def sort_out(
        self, events: Sequence[OutboxEvent], now: float
    ) -> tuple[list[OutboxEvent], Settlement]:
        """The due `events` split into those to send now and those already too old to send:
        past max_age although due before it (the relay itself was down meanwhile). An event
        due exactly at its max_age is its last attempt, and is sent."""
        send: list[OutboxEvent] = []
        expired: list[str] = []
        for event in events:
            deadline = event.created_at + self.max_age
            if event.next_at < deadline <= now:
                transition(EventState.PENDING, EventInput.EXPIRE)
                expired.append(event.id)
            else:
                transition(EventState.PENDING, EventInput.SEND)
                send.append(event)
        return send, Settlement(expired=tuple(expired))

    def settle(self, sent: Sequence[OutboxEvent], ok: bool, now: float) -> Settlement:
        """What becomes of the events of one request: `ok` whether the receiver accepted it."""
        if ok:
            for _ in sent:
                transition(EventState.SENDING, EventInput.ACCEPTED)
            return Settlement(delivered=tuple(e.id for e in sent))
        expired: list[str] = []
        retried: list[tuple[str, float]] = []
        for event in sent:
            deadline = event.created_at + self.max_age
            if now >= deadline:
                transition(EventState.SENDING, EventInput.EXPIRE)
                expired.append(event.id)
                continue
            transition(EventState.SENDING, EventInput.FAILED)
            wait = self.backoff.delay(event.attempts + 1, self.rng)
            retried.append((event.id, min(now + wait, deadline)))
        return Settlement(expired=tuple(expired), retried=tuple(retried))
