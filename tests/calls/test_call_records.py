"""The call record (contract v2, "Calls"): durable in the SQLite store, written once even when
the store fails first, and dropped with a warning (not retried forever, no traceback) when
the settings refuse it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
from support import start_relay

from relay.store.base import Appended, NewMessage, direct_conversation
from relay.store.memory import MemoryStore
from relay.store.sqlite import SqliteStore

WAIT = 5.0
OFFER = "v=0\r\ns=offer\r\n"


async def missed_call(url: str, raw: Any) -> str:
    """alice calls bob, who has no device: `unavailable`, one record. Its callId."""
    async with raw(url, "alice") as alice:
        await alice.send(
            {"type": "call_invite", "callId": "c1", "peerId": "bob", "media": "audio", "sdp": OFFER}
        )
        assert (await alice.expect("call_end"))["reason"] == "unavailable"
        record = await alice.expect("message")
        assert record["call"] == {
            "callId": "c1",
            "media": "audio",
            "outcome": "unavailable",
            "durationMs": 0,
        }
        assert "meta" not in record
    return "c1"


async def test_the_record_survives_a_restart_of_a_sqlite_relay(tmp_path: Path, raw: Any) -> None:
    db = tmp_path / "relay.db"
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery, db_path=str(db))
        await missed_call(relay.url, raw)
        nursery.cancel_scope.cancel()
    store = SqliteStore(str(db))
    await store.open()
    try:
        page, _ = await store.history(direct_conversation("alice", "bob"))
        (msg,) = page
        assert msg.sender_id == "alice" and msg.recipient_id == "bob"
        assert msg.call == {
            "callId": "c1",
            "media": "audio",
            "outcome": "unavailable",
            "durationMs": 0,
        }
        assert msg.meta is None
        (conv,) = await store.conversations("bob")
        assert conv.unread == 1
    finally:
        await store.close()


class FailingOnce(MemoryStore):
    """append_many fails the first time it is asked."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    async def append_many(self, messages: Sequence[NewMessage]) -> list[Appended]:
        if self.failures:
            self.failures -= 1
            raise OSError("disk on fire")
        return await super().append_many(messages)


async def test_a_record_the_store_failed_is_written_by_a_later_maintain(
    nursery: trio.Nursery, raw: Any
) -> None:
    store = FailingOnce()
    relay = await start_relay(nursery, store=store)
    await missed_call(relay.url, raw)
    assert store.failures == 0
    page, _ = await store.history(direct_conversation("alice", "bob"))
    assert [m.call["callId"] for m in page if m.call] == ["c1"]


async def test_a_record_the_settings_refuse_is_dropped_with_a_warning(
    nursery: trio.Nursery, raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore()
    relay = await start_relay(nursery, store=store, max_text_chars=10)  # its text is longer
    with caplog.at_level(logging.WARNING, logger="relay.core"):
        async with raw(relay.url, "alice") as alice:
            await alice.send(
                {"type": "call_invite", "callId": "c1", "peerId": "bob", "media": "audio",
                 "sdp": OFFER}
            )  # fmt: skip
            assert (await alice.expect("call_end"))["reason"] == "unavailable"
            await alice.send({"type": "ping", "ref": "p"})
            await alice.expect("pong")
    page, _ = await store.history(direct_conversation("alice", "bob"))
    assert page == []
    assert any("cannot be stored" in r.getMessage() for r in caplog.records)
    assert not any(r.exc_info for r in caplog.records)


RECORD = {"callId": "c1", "media": "audio", "outcome": "unavailable", "durationMs": 0}


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Each store kind the relay runs on, opened (the PostgreSQL one in a fresh database)."""
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "sqlite":
        store: Any = SqliteStore(str(tmp_path / "relay.db"))
        await store.open()
        yield store
        await store.close()
        return
    from services import postgres_database

    from relay.store.postgres import PostgresStore

    with postgres_database() as url:
        store = PostgresStore(url)
        await store.open()
        yield store
        await store.close()


async def test_the_record_is_a_top_level_call_field_everywhere_a_message_appears(
    nursery: trio.Nursery, raw: Any, any_store: Any
) -> None:
    relay = await start_relay(nursery, store=any_store)
    await missed_call(relay.url, raw)
    async with raw(relay.url, "bob") as bob:
        # the backlog of a device that was not connected
        backlog = await bob.expect("message")
        assert backlog["call"] == RECORD and "meta" not in backlog
        assert backlog["senderId"] == "alice" and backlog["text"].startswith("Missed audio call")
        await bob.send({"type": "history", "peerId": "alice", "ref": "h"})
        (paged,) = (await bob.expect("history", ref="h"))["messages"]
        assert paged["call"] == RECORD and paged["id"] == backlog["id"]
        await bob.send({"type": "conversations", "ref": "c"})
        (item,) = (await bob.expect("conversations", ref="c"))["items"]
        assert item["lastMessage"]["call"] == RECORD and item["unread"] == 1
    # as stored: the store's own value, read back
    page, _ = await any_store.history(direct_conversation("alice", "bob"))
    assert [(m.call, m.meta) for m in page] == [(RECORD, None)]


@pytest.mark.parametrize("value", [RECORD, None, "c1", {}])
async def test_a_client_cannot_send_a_call_field(
    nursery: trio.Nursery, raw: Any, value: Any
) -> None:
    store = MemoryStore()
    relay = await start_relay(nursery, store=store)
    async with raw(relay.url, "alice") as alice:
        await alice.send(
            {"type": "message", "id": "m1", "recipientId": "bob", "text": "hi", "call": value}
        )
        receipt = await alice.expect("receipt", id="m1")
        assert (receipt["status"], receipt["reason"], receipt["field"]) == (
            "failed",
            "invalid",
            "call",
        )
        assert "only the relay writes call records" in receipt["message"]
        # a plain message still goes through on the same connection
        await alice.send({"type": "message", "id": "m2", "recipientId": "bob", "text": "hi"})
        assert (await alice.expect("receipt", id="m2"))["status"] == "sent"
    page, _ = await store.history(direct_conversation("alice", "bob"))
    assert [m.id for m in page] == ["m2"]
