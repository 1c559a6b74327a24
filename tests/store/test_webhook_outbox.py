"""The WebhookOutbox suite (tests/webhook_outbox_suite.py) on the memory and SQLite stores, and
what only the durable store promises: the cursor and the pending events survive a reopen."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from store_suite import msg, put
from webhook_outbox_suite import WebhookOutboxSuite, ev

from relay.store.base import Store
from relay.store.memory import MemoryStore
from relay.store.sqlite import SqliteStore


class TestMemoryOutbox(WebhookOutboxSuite):
    @pytest.fixture
    async def store(self) -> AsyncIterator[Store]:
        memory = MemoryStore()
        await memory.open()
        yield memory
        await memory.close()


class TestSqliteOutbox(WebhookOutboxSuite):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[Store]:
        sqlite = SqliteStore(tmp_path / "relay.db")
        await sqlite.open()
        yield sqlite
        await sqlite.close()


async def test_the_cursor_and_pending_events_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    first = SqliteStore(path)
    await first.open()
    await first.webhook_start()
    await put(first, msg("a", "b", id="decided"), msg("a", "b", id="undecided"))
    decided, _ = await first.webhook_candidates(limit=10)
    await first.webhook_advance(decided.position, [ev("e1", 10.0), ev("e2", 20.0)], max_pending=9)
    await first.webhook_settle(["e1"], [("e2", 50.0)])
    await first.close()

    second = SqliteStore(path)
    await second.open()
    await second.webhook_start()  # started already: the cursor stays where it was
    assert [c.message.id for c in await second.webhook_candidates(limit=10)] == ["undecided"]
    [e2] = await second.webhook_due(50.0, limit=10)
    assert (e2.id, e2.attempts, e2.next_at, e2.created_at) == ("e2", 1, 50.0, 20.0)
    await second.close()
