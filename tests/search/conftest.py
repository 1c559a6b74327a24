"""The search suite runs on every store that declares Searchable: `store` is parametrized."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.store.base import Searchable, Store
from relay.store.memory import MemoryStore
from relay.store.sqlite import SqliteStore


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    made: Store = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "r.db")
    assert isinstance(made, Searchable)
    await made.open()
    yield made
    await made.close()
