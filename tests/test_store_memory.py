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
