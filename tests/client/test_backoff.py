"""ReconnectPolicy: attempts, delays, backoff and jitter; and what the default jitter does to
clients a relay dropped all at once (real relay and clients, trio's MockClock)."""

from __future__ import annotations

import contextlib
import random

import pytest
import trio
import trio.testing

from relay.client import (
    ConnectionChanged,
    ConnectionState,
    EventStream,
    ReconnectPolicy,
    RelayClient,
)
from relay.client.backoff import DEFAULT_JITTER
from relay.errors import ConfigError
from tests.support import start_relay


def test_policy_delays() -> None:
    p = ReconnectPolicy(jitter=0.0)
    assert (p.attempts, p.delay) == (5, 3.0)
    assert [p.delay_before(n) for n in (1, 2, 5)] == [3.0, 3.0, 3.0]
    jittered = ReconnectPolicy(delay=10.0, jitter=0.5)
    rng = random.Random(7)
    samples = [jittered.delay_before(1, rng) for _ in range(200)]
    assert all(5.0 <= d <= 15.0 for d in samples)
    assert max(samples) - min(samples) > 5.0  # actually spread, not constant
    with pytest.raises(ConfigError):
        ReconnectPolicy(jitter=2.0)
    with pytest.raises(ConfigError):
        ReconnectPolicy(attempts=-1)


def test_policy_backoff_grows_to_the_cap_and_attempts_count_from_one() -> None:
    p = ReconnectPolicy(delay=1.0, backoff=2.0, max_delay=5.0, jitter=0.0)
    assert [p.delay_before(n) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    with pytest.raises(ValueError):
        p.delay_before(0)
    with pytest.raises(ConfigError, match="delay must be >= 0"):
        ReconnectPolicy(delay=-1.0)
    with pytest.raises(ConfigError, match="backoff must be >= 1"):
        ReconnectPolicy(backoff=0.5)


def test_default_policy_is_jittered_around_three_seconds() -> None:
    p = ReconnectPolicy()
    assert (p.attempts, p.delay, p.jitter) == (5, 3.0, DEFAULT_JITTER)
    rng = random.Random(3)
    samples = [p.delay_before(n, rng) for n in (1, 2, 5) for _ in range(100)]
    assert all(1.5 <= d <= 4.5 for d in samples)
    assert max(samples) - min(samples) > 2.0
    steady = ReconnectPolicy(jitter=0.0)  # the original app's fixed schedule, when asked for
    assert [steady.delay_before(n) for n in (1, 2, 5)] == [3.0, 3.0, 3.0]


async def test_clients_dropped_together_come_back_spread_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A relay stops (1012) under 20 clients on the default policy: their first attempts
    after the drop are spread over the jitter's span, not one instant."""
    attempts: dict[int, float] = {}
    dropped_at: list[float] = []
    all_back = trio.Event()

    async def watch(i: int, stream: EventStream) -> None:
        online_seen = False
        async for event in stream:
            if not isinstance(event, ConnectionChanged):
                continue
            if event.state is ConnectionState.ONLINE:
                online_seen = True
            elif online_seen and event.state is ConnectionState.CONNECTING and i not in attempts:
                attempts[i] = trio.current_time()
                if len(attempts) == 20:
                    all_back.set()
                return

    async with trio.open_nursery() as outer:
        relay_scope = trio.CancelScope()

        async def serve_until_stopped(task_status: trio.TaskStatus[str]) -> None:
            with relay_scope:
                async with trio.open_nursery() as inner:
                    relay = await start_relay(inner)
                    task_status.started(relay.url)
                    await trio.sleep_forever()

        url = await outer.start(serve_until_stopped)
        clients = [RelayClient(url, user_id=f"u{i}", rng=random.Random(i)) for i in range(20)]
        for i, client in enumerate(clients):
            outer.start_soon(watch, i, client.events())
        async with contextlib.AsyncExitStack() as stack:
            for client in clients:
                await stack.enter_async_context(client)
            for client in clients:
                await client.wait_online()
            dropped_at.append(trio.current_time())
            relay_scope.cancel()  # drains: every client is closed with 1012 at once
            with trio.fail_after(30):
                await all_back.wait()
    delays = sorted(t - dropped_at[0] for t in attempts.values())
    assert delays[0] >= 1.4 and delays[-1] <= 4.6  # 3 s +- 50% (and the drain's moment)
    assert delays[-1] - delays[0] > 1.5  # spread out, not a herd
    assert len({round(d, 3) for d in delays}) == len(delays)
