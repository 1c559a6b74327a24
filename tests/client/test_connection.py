"""RelayClient's reconnection rules and lifetime against a port nobody listens on (virtual time)."""

from __future__ import annotations

import itertools
import socket

import pytest
import trio
import trio.testing

from relay.client import (
    ConnectionChanged,
    ConnectionLost,
    ConnectionState,
    Event,
    EventStream,
    MessageStatus,
    RelayClient,
)


def closed_port() -> int:
    """A loopback port that refuses connections (bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def _record(stream: EventStream, log: list[tuple[float, Event]]) -> None:
    async for event in stream:
        log.append((trio.current_time(), event))


async def test_attempts_and_delay_are_honoured_then_disconnected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    url = f"ws://127.0.0.1:{closed_port()}"
    log: list[tuple[float, Event]] = []
    client = RelayClient(
        url, user_id="alice", reconnect_attempts=3, reconnect_delay=2.0, jitter=0.0
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_record, client.events(), log)
        async with client:
            start = trio.current_time()
            with pytest.raises(ConnectionLost, match="gave up after 3 attempts"):
                await client.wait_online()
            # a message written now can never go out: the client says so instead of hanging
            with pytest.raises(ConnectionLost):
                await client.send_message("bob", "hello?")
            with pytest.raises(ConnectionLost):
                await client.refresh_conversations()
            assert client.connection_state is ConnectionState.DISCONNECTED
            assert trio.current_time() - start == pytest.approx(6.0)
    changes = [(round(t - start, 3), e) for t, e in log if isinstance(e, ConnectionChanged)]
    connecting = [(t, e.attempt) for t, e in changes if e.state is ConnectionState.CONNECTING]
    assert connecting == [(0.0, 0), (2.0, 1), (4.0, 2), (6.0, 3)]
    offline = [e for _, e in changes if e.state is ConnectionState.OFFLINE]
    assert [e.attempt for e in offline] == [1, 2, 3]
    assert all(e.reason for e in offline)
    final = [e for _, e in changes if e.state is ConnectionState.DISCONNECTED]
    assert final[0].reason is not None and "gave up" in final[0].reason


async def test_pending_waits_raise_connection_lost_when_the_client_gives_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    url = f"ws://127.0.0.1:{closed_port()}"
    async with RelayClient(url, user_id="alice", reconnect_attempts=5, jitter=0.0) as client:
        msg = await client.send_message("bob", "queued while offline")
        assert client.state.outbox == [msg]
        with pytest.raises(ConnectionLost):
            await client.wait_message(msg.id, MessageStatus.SENT)
        with pytest.raises(ConnectionLost):
            await client.flush()
        # the default without its jitter: 5 attempts, 3 s apart
        assert trio.current_time() == pytest.approx(15.0)
        # nothing was dropped: the message still waits, pending, for a later reconnect()
        assert [m.status for m in client.state.outbox] == [MessageStatus.PENDING]


async def test_reconnect_starts_over_after_giving_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    url = f"ws://127.0.0.1:{closed_port()}"
    async with RelayClient(
        url, user_id="alice", reconnect_attempts=1, reconnect_delay=1.0, jitter=0.0
    ) as c:
        with pytest.raises(ConnectionLost):
            await c.wait_online()
        t0 = trio.current_time()
        c.reconnect()
        with pytest.raises(ConnectionLost):
            await c.wait_online()
        assert trio.current_time() - t0 == pytest.approx(1.0)


async def test_exponential_backoff_and_jitter_shape_the_delays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    url = f"ws://127.0.0.1:{closed_port()}"
    log: list[tuple[float, Event]] = []
    client = RelayClient(
        url,
        user_id="alice",
        reconnect_attempts=4,
        reconnect_delay=1.0,
        backoff=2.0,
        max_delay=5.0,
        jitter=0.0,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_record, client.events(), log)
        async with client:
            with pytest.raises(ConnectionLost):
                await client.wait_online()
    times = [
        round(t, 3)
        for t, e in log
        if isinstance(e, ConnectionChanged) and e.state is ConnectionState.CONNECTING
    ]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx([1.0, 2.0, 4.0, 5.0])


async def test_aclose_stops_the_client_but_not_the_callers_code(
    autojump_clock: trio.testing.MockClock,
) -> None:
    url = f"ws://127.0.0.1:{closed_port()}"
    outcome: list[str] = []
    async with RelayClient(url, user_id="alice") as c:

        async def waiter() -> None:
            try:
                await c.wait_online()
            except ConnectionLost as exc:
                outcome.append(str(exc))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.sleep(1.0)  # still retrying (3 s apart)
            await c.aclose()
        assert outcome == ["client closed"]
        await trio.sleep(30.0)  # this body was not cancelled, and no attempt runs any more
        assert c.connection_state is ConnectionState.DISCONNECTED
        with pytest.raises(ConnectionLost):
            await c.send_message("bob", "too late")
