"""The delivery policy (sans-IO): the event state table, backoff with jitter, expiry."""

from __future__ import annotations

import random

import pytest

from relay.errors import WebhookError
from relay.store.base import OutboxEvent
from relay.webhooks.policy import (
    TRANSITIONS,
    Backoff,
    DeliveryPolicy,
    EventInput,
    EventState,
    accepted,
    transition,
)


def ev(ident: str, created: float = 0.0, attempts: int = 0) -> OutboxEvent:
    return OutboxEvent(ident, "{}", created, created, attempts)


def test_every_move_without_an_entry_raises() -> None:
    final = {EventState.DELIVERED, EventState.EXPIRED, EventState.DROPPED}
    for state in EventState:
        for event in EventInput:
            if (state, event) in TRANSITIONS:
                assert transition(state, event) is TRANSITIONS[(state, event)]
                assert state not in final
            else:
                with pytest.raises(WebhookError, match=f"no move {event.name}"):
                    transition(state, event)


def test_only_2xx_delivers() -> None:
    assert [s for s in (199, 200, 204, 299, 300, 301, 404, 410, 500) if accepted(s)] == [
        200,
        204,
        299,
    ]


def test_backoff_doubles_up_to_the_maximum_with_equal_jitter() -> None:
    backoff = Backoff(initial=1.0, maximum=60.0)
    rng = random.Random(7)
    for failures, step in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (500, 60.0)]:
        waits = [backoff.delay(failures, rng) for _ in range(200)]
        assert all(step / 2 <= w <= step for w in waits)
        assert max(waits) - min(waits) > step / 4  # jittered, not one value
    # the same seed, the same waits: tests and replays are deterministic
    assert [backoff.delay(3, random.Random(1)) for _ in range(3)] == [
        backoff.delay(3, random.Random(1)) for _ in range(3)
    ]


def test_a_refused_request_reschedules_each_event_by_its_own_attempts() -> None:
    policy = DeliveryPolicy(Backoff(1.0, 100.0), max_age=1000.0, rng=random.Random(3))
    done = policy.settle([ev("a", attempts=0), ev("b", attempts=4)], ok=False, now=10.0)
    assert done.delivered == () and done.expired == ()
    (a, a_at), (b, b_at) = done.retried
    assert (a, b) == ("a", "b")
    assert 10.5 <= a_at <= 11.0  # first failure: 0.5..1 s
    assert 18.0 <= b_at <= 26.0  # fifth failure: 8..16 s


def test_an_accepted_request_delivers_every_event() -> None:
    policy = DeliveryPolicy(Backoff(1.0, 100.0), max_age=1000.0)
    done = policy.settle([ev("a"), ev("b")], ok=True, now=10.0)
    assert (done.delivered, done.retried, done.removed) == (("a", "b"), (), ("a", "b"))


def test_the_last_attempt_is_at_max_age_then_the_event_expires() -> None:
    policy = DeliveryPolicy(Backoff(50.0, 50.0), max_age=100.0, rng=random.Random(0))
    done = policy.settle([ev("a", created=0.0, attempts=3)], ok=False, now=90.0)
    assert done.retried == (("a", 100.0),)  # not past the deadline
    done = policy.settle([ev("a", created=0.0, attempts=4)], ok=False, now=100.0)
    assert (done.expired, done.retried) == (("a",), ())


def test_due_events_already_too_old_expire_without_a_request() -> None:
    policy = DeliveryPolicy(Backoff(1.0, 1.0), max_age=100.0)
    last = OutboxEvent("last", "{}", 0.0, 100.0, 5)  # its retry is its last attempt
    events = [ev("old", created=0.0), ev("young", created=50.0), last]
    send, gone = policy.sort_out(events, now=120.0)
    assert [e.id for e in send] == ["young", "last"]
    assert gone.expired == ("old",)
