"""Which append each store declares for the core to make without awaiting: MemoryStore appends
inline (InlineAppend), SqliteStore queues for its writer (QueuedAppend); never both, so the core's
one isinstance test picks one path. That each answers as append_many is in the shared suite
(store_suite.StoreSuite.test_the_fast_append_answers_as_append_many)."""

from __future__ import annotations

from pathlib import Path

from relay.store.base import InlineAppend, QueuedAppend, Store
from relay.store.memory import MemoryStore
from relay.store.sqlite import SqliteStore


def test_the_memory_store_appends_inline() -> None:
    store = MemoryStore()
    assert isinstance(store, Store)
    assert isinstance(store, InlineAppend)
    assert not isinstance(store, QueuedAppend)


def test_the_sqlite_store_queues_its_appends(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "relay.db")
    assert isinstance(store, Store)
    assert isinstance(store, QueuedAppend)
    assert not isinstance(store, InlineAppend)
