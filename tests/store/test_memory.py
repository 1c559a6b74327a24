"""The shared store suite on MemoryStore."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from store_suite import StoreSuite

from relay.store.base import Store
from relay.store.memory import MemoryStore


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    memory = MemoryStore()
    await memory.open()
    yield memory
    await memory.close()


class TestMemoryStore(StoreSuite):
    async def test_is_a_store(self, store: Store) -> None:
        assert isinstance(store, Store)


async def test_stored_messages_add_nothing_to_a_full_collection() -> None:
    # What keeps collector pauses short with millions of messages in memory: with the compiled
    # fast path the stored rows and the conversation lists are not tracked (and so not walked
    # by a full collection); a message with meta keeps its row tracked (it holds a dict).
    import gc

    from store_suite import msg

    import relay.fastpath

    store = MemoryStore()
    plain = [msg("a", "b", text=f"hello {i}") for i in range(200)]
    with_meta = msg("a", "b", text="x", meta={"k": [1]})
    await store.append_many([*plain, with_meta])
    history, _ = await store.history(plain[0].conversation, limit=300)
    assert [m.text for m in history] == [m.text for m in plain] + ["x"]
    assert history[-1].meta == {"k": [1]}
    rows = store._messages[plain[0].conversation]
    tracked_rows = sum(gc.is_tracked(row) for row in rows)
    if relay.fastpath.IMPLEMENTATION == "cython":
        # walked by a full collection: one entry per conversation and per sender, not per message
        assert not gc.is_tracked(rows)
        assert not gc.is_tracked(store._order[plain[0].conversation])
        assert tracked_rows == 1  # the row holding meta
    else:
        assert gc.is_tracked(rows)  # the pure build cannot hide them; values are the same
