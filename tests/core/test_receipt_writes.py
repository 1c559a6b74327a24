"""Where a `delivered` receipt rides: a 1:1's in the sender's own write with its `sent` (its
sender is told at the recipient's flush), a group's in the sender's next write after the tick
that stores the marks, or alone one tick later.

Real relay, real sockets, trio's MockClock moved by hand: the relay's tick (250 ms: delivery
marks written, receipts queued) happens only when the test jumps the clock. Socket writes are
the relay's own count (relay_socket_writes_total).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from trio.testing import MockClock, wait_all_tasks_blocked

from relay import Relay
from relay.store.base import direct_conversation
from relay.store.memory import MemoryStore
from relay.transport.server import TICK_INTERVAL
from tests.support import JsonClient, start_relay, watermarks_of, ws_connect


@asynccontextmanager
async def _client(relay: Relay, user: str) -> AsyncIterator[JsonClient]:
    async with ws_connect(relay.url) as ws:
        client = JsonClient(ws)
        await client.send({"type": "auth", "userId": user})
        await client.expect("auth_ok")
        yield client


async def _tick(clock: MockClock) -> None:
    """One relay tick: its maintain() writes the marks and queues the receipts they cause."""
    await wait_all_tasks_blocked()
    clock.jump(TICK_INTERVAL)
    await wait_all_tasks_blocked()


async def test_direct_delivered_receipt_rides_the_senders_sent(
    nursery: trio.Nursery, mock_clock: MockClock
) -> None:
    store = MemoryStore()
    relay = await start_relay(nursery, store=store)
    stats = relay.metrics.stats
    async with _client(relay, "alice") as alice, _client(relay, "bob") as bob:
        await wait_all_tasks_blocked()
        writes, frames = stats.socket_writes, stats.frames_out
        await alice.send({"type": "message", "id": "m1", "recipientId": "bob", "text": "one"})
        await alice.expect("receipt", id="m1", status="sent")
        await bob.expect("message", id="m1")
        await wait_all_tasks_blocked()
        # alice: `sent` and `delivered` in one write, before any tick; bob: m1 in another
        assert stats.frames_out - frames == 3
        assert stats.socket_writes - writes == 2
        delivered = await alice.expect("receipt", id="m1", status="delivered")
        assert delivered["userId"] == "bob" and delivered["peerId"] == "bob"
        assert delivered["seq"] == 1

        # the tick stores bob's mark, and tells alice nothing twice
        writes, frames = stats.socket_writes, stats.frames_out
        await _tick(mock_clock)
        await _tick(mock_clock)
        assert (stats.socket_writes, stats.frames_out) == (writes, frames)
        assert alice.pending == []
        marks = await watermarks_of(store, direct_conversation("alice", "bob"), "bob")
        assert marks.delivered_seq == 1


async def test_group_delivered_receipt_joins_the_senders_next_write(
    nursery: trio.Nursery, mock_clock: MockClock
) -> None:
    relay = await start_relay(nursery)
    stats = relay.metrics.stats
    async with _client(relay, "alice") as alice, _client(relay, "bob") as bob:
        await alice.send({"type": "group_create", "groupId": "g", "members": ["bob"]})
        await alice.expect("group")
        await bob.expect("group")
        await alice.send({"type": "message", "id": "m1", "groupId": "g", "text": "one"})
        await alice.expect("receipt", id="m1", status="sent")
        await bob.expect("message", id="m1")
        await _tick(mock_clock)  # bob's flush is marked: alice's `delivered` is queued
        writes, frames = stats.socket_writes, stats.frames_out

        await alice.send({"type": "message", "id": "m2", "groupId": "g", "text": "two"})
        delivered = await alice.expect("receipt", id="m1", status="delivered")
        assert delivered["userId"] == "bob" and delivered["groupId"] == "g"
        assert delivered["seq"] == 1
        await alice.expect("receipt", id="m2", status="sent")
        await bob.expect("message", id="m2")
        await wait_all_tasks_blocked()
        # alice: `delivered` m1 and `sent` m2 in one write; bob: m2 in another
        assert stats.frames_out - frames == 3
        assert stats.socket_writes - writes == 2
        assert alice.pending == []

        # alice writes nothing more: m2's receipt waits one tick for company, then goes alone
        await _tick(mock_clock)
        writes = stats.socket_writes
        await _tick(mock_clock)
        delivered = await alice.expect("receipt", id="m2", status="delivered")
        assert delivered["seq"] == 2
        assert stats.socket_writes - writes == 1
