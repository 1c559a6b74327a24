"""The shared store suite on SqliteStore, plus what only a durable store promises."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from store_suite import StoreSuite

from relay.store.base import Store
from relay.store.sqlite import SqliteStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    sqlite = SqliteStore(tmp_path / "relay.db")
    await sqlite.open()
    yield sqlite
    await sqlite.close()


class TestSqliteStore(StoreSuite):
    async def test_is_a_store(self, store: Store) -> None:
        assert isinstance(store, Store)
