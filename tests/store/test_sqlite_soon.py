"""SqliteStore.append_soon: an append queued without waiting, answered by a callback once it is
durable; and the core's use of it (MessagingService answers `sent` only from that callback).

What users rely on: a message is acknowledged only once committed, one sender's appends are
answered in the order they were queued, a failure answers failed (never sent), and a full
queue makes the caller wait instead of queueing without bound.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from store_suite import AB, msg
from support import FakeConn, decode_server_frames

from relay.config import RelayConfig
from relay.core import MessagingService
from relay.errors import StoreError
from relay.store.base import Appended, direct_conversation
from relay.store.sqlite import SqliteStore

Outcome = tuple[list[Appended] | None, BaseException | None]


class Outcomes(list[Outcome]):
    """The callbacks' outcomes, in the order they came; `wait_for(n)` until there are n."""

    def __init__(self) -> None:
        super().__init__()
        self._grew = trio.Event()

    def append(self, outcome: Outcome) -> None:
        super().append(outcome)
        self._grew.set()

    async def wait_for(self, count: int) -> None:
        with trio.fail_after(5):
            while len(self) < count:
                self._grew = trio.Event()
                await self._grew.wait()


class FlushedConn(FakeConn):
    """A FakeConn that says when a frame was queued to it."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed = trio.Event()

    def send(self, frame: bytes, droppable: bool = False) -> bool:
        self.flushed.set()
        return super().send(frame, droppable)


async def test_callbacks_come_in_queue_order_once_committed(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "relay.db")
    await store.open()
    outcomes = Outcomes()
    durable_when_answered: list[int] = []

    def on_done(results: list[Appended] | None, error: BaseException | None) -> None:
        outcomes.append((results, error))
        # committed: a new connection (another process, say) sees it now
        durable_when_answered.append(_count_rows(tmp_path / "relay.db"))

    for i in range(5):
        assert store.has_room()
        store.append_soon([msg("a", "b", id=f"m{i}"), msg("a", "b", id=f"n{i}")], on_done)
    assert outcomes == []  # nothing is answered before the writer commits
    await outcomes.wait_for(5)
    seqs = [[r.message.seq for r in results or []] for results, _ in outcomes]
    assert seqs == [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]]
    assert all(error is None for _, error in outcomes)
    assert all(count >= 2 * (i + 1) for i, count in enumerate(durable_when_answered))
    # the same as append_many would say of a resend
    again = await store.append_many([msg("a", "b", id="m0")])
    assert again[0].duplicate and again[0].message.seq == 1
    await store.close()


async def test_a_full_queue_has_no_room_until_an_append_is_answered(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "relay.db", max_pending=1)
    await store.open()
    outcomes = Outcomes()
    store.append_soon([msg("a", "b")], lambda r, e: outcomes.append((r, e)))
    assert not store.has_room()
    with pytest.raises(trio.WouldBlock):  # a caller that did not ask is refused, not queued
        store.append_soon([msg("a", "b")], lambda r, e: outcomes.append((r, e)))
    await outcomes.wait_for(1)
    assert store.has_room()
    await store.close()
    assert not store.has_room()
    with pytest.raises(StoreError):
        store.append_soon([msg("a", "b")], lambda r, e: None)


async def test_an_append_that_cannot_commit_is_answered_with_an_error(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "relay.db", pragmas=[("max_page_count", 1)])
    outcomes = Outcomes()
    try:
        await store.open()
    except StoreError:
        pytest.fail("a one-page limit must still let the store open")  # pragma: no cover
    store.append_soon([msg("a", "b", text="x" * 50_000)], lambda r, e: outcomes.append((r, e)))
    await outcomes.wait_for(1)
    ((results, error),) = outcomes
    assert results is None
    assert isinstance(error, StoreError)
    assert await store.last_seq(AB) == 0
    await store.close()


async def test_the_core_answers_sent_only_from_the_commit(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "relay.db")
    service = MessagingService(RelayConfig(db_path=str(tmp_path / "relay.db")), store)
    await service.start()
    ann, bob = FlushedConn(), FlushedConn()
    for conn, user in ((ann, "ann"), (bob, "bob")):
        service.on_open(conn)
        await service.on_messages(conn, [orjson.dumps({"type": "auth", "userId": user})])
        conn.outbox.take()
        conn.flushed = trio.Event()  # from here on: the deliveries
    payloads: list[Any] = [
        orjson.dumps({"type": "message", "id": f"m{i}", "recipientId": "bob", "text": "hi"})
        for i in range(3)
    ]
    payloads.append(orjson.dumps({"type": "ping"}))
    assert service.on_messages_nowait(ann, payloads) == 3  # the ping waits for on_messages
    assert decode_server_frames(ann.outbox.take()) == []  # not durable yet: no `sent`
    with trio.fail_after(5):
        await bob.flushed.wait()
    sent = decode_server_frames(ann.outbox.take())
    assert [(f["id"], f["status"], f["seq"]) for f in sent] == [
        ("m0", "sent", 1),
        ("m1", "sent", 2),
        ("m2", "sent", 3),
    ]
    delivered = decode_server_frames(bob.outbox.take())
    assert [(f["id"], f["seq"]) for f in delivered] == [("m0", 1), ("m1", 2), ("m2", 3)]
    history, _ = await store.history(direct_conversation("ann", "bob"))
    assert [m.id for m in history] == ["m0", "m1", "m2"]
    await service.aclose()


def _count_rows(path: Path) -> int:
    import sqlite3

    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
