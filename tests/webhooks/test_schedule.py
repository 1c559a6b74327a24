"""The sender's schedule on Trio's MockClock: when the event is made and when each retry goes,
to the exact (virtual) second, from a seeded jitter.

The receiver here is an httpx.MockTransport: the test is about the timing, and a real socket
cannot take part in virtual time (test_delivery.py runs the same path against a real HTTP
receiver on 127.0.0.1)."""

from __future__ import annotations

import itertools
import random

import httpx
import orjson
import pytest
import trio
import trio.testing

from relay.clock import iso_utc
from relay.store.base import NewMessage, direct_conversation
from relay.store.memory import MemoryStore
from relay.webhooks import verify
from relay.webhooks.policy import Backoff
from relay.webhooks.sender import WebhookSender, WebhookSettings

EPOCH = 1_800_000_000.0
KEY = b"k3y"


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def wall() -> float:
    return EPOCH + trio.current_time()


def settings(**kw: float) -> WebhookSettings:
    base: dict[str, float] = {"delay": 2.0, "retry_initial": 1.0, "retry_max": 8.0}
    return WebhookSettings(url="https://backend.example/hooks", key=KEY, **{**base, **kw})


async def stored(store: MemoryStore, ident: str, to: str = "bob") -> None:
    await store.append_many(
        [NewMessage(direct_conversation("ann", to), ident, "ann", "hi", iso_utc(wall()), to)]
    )


async def test_retries_follow_the_backoff_with_the_seeded_jitter(
    clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    seen: list[tuple[float, int]] = []  # (virtual time, status answered)
    done = trio.Event()

    async def receive(request: httpx.Request) -> httpx.Response:
        verify(KEY, request.content, request.headers["relay-signature"], now=wall())
        status = 500 if len(seen) < 4 else 200
        seen.append((trio.current_time(), status))
        if status == 200:
            done.set()
        return httpx.Response(status)

    sender = WebhookSender(
        settings(),
        store,
        lambda user: False,
        rng=random.Random(42),
        wall=wall,
        transport=httpx.MockTransport(receive),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sender.run)
        start = trio.current_time()
        await stored(store, "m1")
        await done.wait()
        nursery.cancel_scope.cancel()

    # made when the delay ran out (the scan sleeps exactly until then), sent at once; then each
    # retry after the policy's wait for that failure, drawn from the same seeded generator
    expected = [start + 2.0]
    jitter = random.Random(42)
    for failures in range(1, 5):
        expected.append(expected[-1] + Backoff(1.0, 8.0).delay(failures, jitter))
    assert [t for t, _ in seen] == pytest.approx(expected)
    assert [s for _, s in seen] == [500, 500, 500, 500, 200]
    assert (sender.stats.retried, sender.stats.delivered, sender.stats.pending) == (4, 1, 0)


async def test_an_unreachable_receiver_is_tried_until_max_age_then_given_up(
    clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    attempts: list[float] = []

    async def refuse(request: httpx.Request) -> httpx.Response:
        attempts.append(trio.current_time())
        raise httpx.ConnectError("connection refused", request=request)

    sender = WebhookSender(
        settings(max_age=60.0),
        store,
        lambda user: False,
        rng=random.Random(1),
        wall=wall,
        transport=httpx.MockTransport(refuse),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sender.run)
        start = trio.current_time()
        await stored(store, "m1")
        for _ in range(1000):  # virtual seconds: the clock jumps, nothing waits
            if sender.stats.expired:
                break
            await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    made = start + 2.0
    assert attempts[0] == pytest.approx(made)
    assert attempts[-1] == pytest.approx(made + 60.0)  # the last attempt at max_age
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert all(g <= 8.0 + 1e-9 for g in gaps)  # never more than retry_max apart
    assert sender.stats.pending == 0 and sender.stats.delivered == 0


async def test_a_full_backlog_drops_the_oldest_events(clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    delivered: list[str] = []
    accept = trio.Event()

    async def receive(request: httpx.Request) -> httpx.Response:
        if not accept.is_set():
            return httpx.Response(503)
        delivered.extend(e["userId"] for e in orjson.loads(request.content)["events"])
        return httpx.Response(200)

    sender = WebhookSender(
        settings(max_pending=2),
        store,
        lambda user: False,
        wall=wall,
        transport=httpx.MockTransport(receive),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sender.run)
        for user in ("u1", "u2", "u3"):
            await stored(store, f"to-{user}", to=user)
            await trio.sleep(0.1)  # three messages 0.1 s apart: the oldest is u1's
        for _ in range(100):  # virtual time, as below
            if sender.stats.made == 3:
                break
            await trio.sleep(0.1)
        accept.set()
        for _ in range(1000):
            if len(delivered) == 2:
                break
            await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    assert sorted(delivered) == ["u2", "u3"]
    assert sender.stats.dropped == 1
