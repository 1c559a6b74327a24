"""A read's several messages to one conversation reach the broker as one run (relay.core.sequencer)
and each device gets each of them once, in seq order, as single deliveries would: the devices of
the recipient and the sender's other devices, a device that already has the run's head, a device
whose backlog still runs, a device whose outbox cannot take the run. Sans-IO: the real
MessagingService and MemoryStore over FakeConn."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
import trio
import trio.testing
from support import FakeConn, SlowBacklogStore, decode_server_frames

from relay.config import RelayConfig
from relay.core import MessagingService
from relay.core.sequencer import Sequencer
from relay.store.base import StoredMessage, direct_conversation
from relay.store.memory import MemoryStore

ANN_BOB = direct_conversation("ann", "bob")


def service(store: MemoryStore | None = None) -> MessagingService:
    return MessagingService(
        RelayConfig(db_path=None, rate_limit_burst=1000, rate_limit_messages=1000.0),
        store if store is not None else MemoryStore(),
    )


async def connect(
    svc: MessagingService, user: str, device: str, conn: FakeConn | None = None
) -> FakeConn:
    conn = conn if conn is not None else FakeConn()
    svc.on_open(conn)
    auth = {"type": "auth", "userId": user, "deviceId": device}
    await svc.on_messages(conn, [orjson.dumps(auth)])
    conn.outbox.take()
    return conn


def read_of(*texts: str, to: str = "bob", first: int = 1) -> list[bytes]:
    return [
        orjson.dumps({"type": "message", "id": f"m{first + i}", "recipientId": to, "text": text})
        for i, text in enumerate(texts)
    ]


def messages(conn: FakeConn) -> list[tuple[str, int]]:
    return [
        (f["id"], f["seq"])
        for f in decode_server_frames(conn.outbox.take())
        if f["type"] == "message"
    ]


async def test_a_read_of_several_messages_reaches_every_device_once_in_seq_order() -> None:
    svc = service()
    ann1 = await connect(svc, "ann", "a1")
    ann2 = await connect(svc, "ann", "a2")
    bob1 = await connect(svc, "bob", "b1")
    bob2 = await connect(svc, "bob", "b2")
    cy = await connect(svc, "cy", "c1")
    delivered = svc.ctx.stats.messages_delivered
    read = [
        *read_of("one", "two"),
        *read_of("to cy", to="cy", first=3),
        *read_of("three", "four", first=4),
    ]
    assert svc.on_messages_nowait(ann1, read) == len(read)
    to_bob = [("m1", 1), ("m2", 2), ("m4", 3), ("m5", 4)]
    assert messages(bob1) == to_bob
    assert messages(bob2) == to_bob
    assert messages(cy) == [("m3", 1)]
    assert messages(ann2) == [("m1", 1), ("m2", 2), ("m3", 1), ("m4", 3), ("m5", 4)]
    sent = [f for f in decode_server_frames(ann1.outbox.take()) if f["type"] == "receipt"]
    assert [(f["id"], f["status"], f["seq"]) for f in sent] == [
        ("m1", "sent", 1),
        ("m2", "sent", 2),
        ("m3", "sent", 1),
        ("m4", "sent", 3),
        ("m5", "sent", 4),
    ]
    # ann2 got 5, bob's devices 4 each, cy 1
    assert svc.ctx.stats.messages_delivered - delivered == 14


async def test_a_run_goes_to_a_device_that_has_its_head_from_the_tail_on() -> None:
    # A device can hold a run's first messages already: with a store that must be awaited a
    # run is released only once the appends before it returned, and meanwhile a backlog may
    # have brought its head from the store.
    svc = service()
    ann = await connect(svc, "ann", "a1")
    bob = await connect(svc, "bob", "b1")
    svc.on_messages_nowait(ann, read_of("one", "two", "three"))
    assert messages(bob) == [("m1", 1), ("m2", 2), ("m3", 3)]
    svc.on_messages_nowait(ann, read_of("four", first=4))
    assert messages(bob) == [("m4", 4)]
    page, _ = await svc.store.history(ANN_BOB, limit=10)
    stored = sorted(page, key=lambda m: m.seq)
    assert svc.broker is not None
    svc.broker.deliver(stored[2:], ("bob", "ann"), ann)  # #3 and #4: bob has both
    assert messages(bob) == []
    svc.on_messages_nowait(ann, read_of("five", first=5))
    assert messages(bob) == [("m5", 5)]
    page, _ = await svc.store.history(ANN_BOB, limit=10)
    stored = sorted(page, key=lambda m: m.seq)
    bob.state.sent_upto[ANN_BOB] = 3  # as if #4 and #5 had not reached this connection
    svc.broker.deliver(stored[1:], ("bob", "ann"), ann)  # #2 to #5
    assert messages(bob) == [("m4", 4), ("m5", 5)]


async def test_own_messages_of_a_run_wait_for_a_slow_backlog_and_follow_it() -> None:
    store = SlowBacklogStore()
    svc = service(store)
    ann1 = await connect(svc, "ann", "a1")
    bob = await connect(svc, "bob", "b1")
    ann1.outbox.take()
    svc.on_messages_nowait(bob, read_of("earlier", to="ann", first=100))
    store.gates["a2"] = trio.Event()
    ann2 = FakeConn()
    svc.on_open(ann2)
    auth = orjson.dumps({"type": "auth", "userId": "ann", "deviceId": "a2"})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(svc.on_messages, ann2, [auth])
        await trio.testing.wait_all_tasks_blocked()
        assert ann2.state.backlog is not None  # its backlog waits for the store
        assert svc.on_messages_nowait(ann1, read_of("one", "two", "three")) == 3
        assert messages(ann2) == []
        store.gates.pop("a2").set()
        for _ in range(5):
            await svc.maintain()
            await trio.testing.wait_all_tasks_blocked()
            svc.on_flushed(ann2)
    got = messages(ann2)
    assert got == [("m100", 1), ("m1", 2), ("m2", 3), ("m3", 4)]


async def test_a_device_whose_outbox_cannot_take_the_run_closes_and_the_others_get_it() -> None:
    svc = service()
    ann = await connect(svc, "ann", "a1")
    small = await connect(svc, "bob", "b1", FakeConn(max_frames=2))
    roomy = await connect(svc, "bob", "b2")
    assert svc.on_messages_nowait(ann, read_of("one", "two", "three")) == 3
    assert small.closed is not None and small.closed[0] == 1013
    assert messages(roomy) == [("m1", 1), ("m2", 2), ("m3", 3)]


def _stored(conversation: str, seq: int) -> StoredMessage:
    return StoredMessage(
        conversation, seq, f"{conversation}{seq}", "ann", "hi", "2026-01-01T00:00:00.000Z"
    )


def test_the_sequencer_releases_consecutive_deliveries_of_a_conversation_as_one_run() -> None:
    runs: list[list[tuple[str, int]]] = []
    sequencer = Sequencer(
        lambda batch, audience, exclude: runs.append([(m.conversation, m.seq) for m in batch])
    )
    x, y = ("bob", "ann"), ("cy", "ann")
    sequencer.run(
        ["x", "y"],
        [
            ("x", 1, _stored("x", 1), x, None),
            ("x", 2, _stored("x", 2), x, None),
            ("y", 1, _stored("y", 1), y, None),
            ("x", 3, _stored("x", 3), x, None),
        ],
        0.0,
    )
    assert runs == [[("x", 1), ("x", 2)], [("y", 1)], [("x", 3)]]


def test_a_run_whose_delivery_fails_is_logged_and_the_next_runs_still_go(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[str] = []

    def release(batch: Any, audience: Any, exclude: Any) -> None:
        if batch[0].conversation == "bad":
            raise RuntimeError("broken broker")
        runs.append(batch[0].conversation)

    sequencer = Sequencer(release)
    with caplog.at_level(logging.ERROR, "relay.core"):
        sequencer.run(
            ["bad", "good"],
            [
                ("bad", 1, _stored("bad", 1), (), None),
                ("bad", 2, _stored("bad", 2), (), None),
                ("good", 1, _stored("good", 1), (), None),
            ],
            0.0,
        )
    assert runs == ["good"]
    assert "delivery of bad #1-2 failed" in caplog.text
