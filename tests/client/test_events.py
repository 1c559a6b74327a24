"""The client's event fan-out: bounded subscribers that lag, never block, and end on close."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from relay.client import ConnectionChanged, ConnectionState, Lagged, RelayClient


async def test_a_lagging_subscriber_gets_lagged_and_the_state_stays_complete() -> None:
    client = RelayClient("ws://127.0.0.1:9", user_id="alice", event_buffer=4)
    slow = client.events()
    fast = client.events(buffer=1000)
    for i in range(10):
        await client.send_message("bob", f"m{i}")  # 2 events each: added + conversation changed
    got = slow.drain()
    assert len(got) == 4  # the buffer, nothing more, and the client never blocked
    await client.send_message("bob", "after")
    assert slow.receive_nowait() == Lagged(dropped=16)
    assert len(fast.drain()) == 22
    assert [m.text for m in client.state.messages(client.state.outbox[0].conversation)] == [
        *(f"m{i}" for i in range(10)),
        "after",
    ]


async def test_streams_end_when_the_client_closes_and_later_ones_are_ended(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = RelayClient("ws://127.0.0.1:9", user_id="alice")
    stream = client.events()
    async with client:
        await trio.sleep(1.0)
    with trio.fail_after(1.0):
        got = [event async for event in stream]  # ends: the client closed it
    assert got and got[-1] == ConnectionChanged(ConnectionState.DISCONNECTED, 0, "client closed")
    with pytest.raises(trio.EndOfChannel):
        await client.events().receive()
