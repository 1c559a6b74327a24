"""The search suite runs on every store that declares Searchable: `store` is parametrized, the
SQLite store with its indexer held back (every search scans the unindexed tail) and with the
indexer in step (each message indexed in the transaction that stores it; `settle` waits until
everything is indexed, which in step it already is)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio
from services import fresh_schema, postgres_database
from store_suite import sqlite_index_progress as progress

import relay.store.sqlite.search as sqlite_search
from relay.search import parse_query
from relay.store.base import Searchable, Store
from relay.store.memory import MemoryStore
from relay.store.postgres import PostgresStore
from relay.store.sqlite import SqliteStore

Settle = Callable[[Store], Awaitable[None]]


def held_back(store: SqliteStore) -> SqliteStore:
    store.indexer.in_step = False
    store.indexer.idle = 3600.0
    store.indexer.max_lag = 1 << 40
    return store


def eager(store: SqliteStore) -> SqliteStore:
    store.indexer.idle = 0.0
    return store


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture(
    params=[
        "memory",
        "sqlite-scan",
        "sqlite-index",
        "sqlite-index-windows",
        "sqlite-index-rare",
        "sqlite-index-named",
        "sqlite-index-walk",
        "postgres",
    ]
)
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Store]:
    # The SQLite index's ways to a page (sqlite/search.py), each made the one taken: the user's
    # conversations named in the MATCH at once (their few messages: the default here);
    # "windows": the index walked newest first in windows of positions; then, below the walked
    # positions ("rare", "named", "walk": windows of 1 over 3 positions), a rare query's
    # postings walked on, a common one's MATCH naming the user's conversations, or, as for a
    # user in too many to name, their newest messages scanned first (a few rows only)
    if request.param.startswith("sqlite-index-"):
        monkeypatch.setattr(sqlite_search, "NAMED", -1)
    if request.param == "sqlite-index-windows":  # FTS5's own prefix query, not the expansion
        monkeypatch.setattr(sqlite_search, "EXPANDED", 0)
    if request.param in ("sqlite-index-rare", "sqlite-index-named", "sqlite-index-walk"):
        monkeypatch.setattr(sqlite_search, "WINDOW", 1)
        monkeypatch.setattr(sqlite_search, "WALK", 3)
    if request.param in ("sqlite-index-named", "sqlite-index-walk"):
        monkeypatch.setattr(sqlite_search, "COMMON", -1)
        if request.param == "sqlite-index-walk":
            monkeypatch.setattr(sqlite_search, "CONVERSATIONS_IN_MATCH", 0)
            monkeypatch.setattr(sqlite_search, "SCAN_ROWS", 2)
    if request.param == "memory":
        made: Store = MemoryStore()
    elif request.param == "postgres":
        made = PostgresStore(fresh_schema(request.getfixturevalue("pg_database")))
    elif request.param == "sqlite-scan":
        made = held_back(SqliteStore(tmp_path / "r.db"))
    else:
        made = eager(SqliteStore(tmp_path / "r.db"))
    assert isinstance(made, Searchable)
    await made.open()
    yield made
    await made.close()


async def _wait_indexed(path: Path) -> None:
    """Until the writer's indexer has indexed every message of the file (it works in its own
    thread, with no event to await; bounded)."""
    with trio.fail_after(5):
        while (seen := progress(path))[0] < seen[1]:  # noqa: ASYNC110
            await trio.sleep(0.005)


@pytest.fixture
def wait_indexed() -> Callable[[Path], Awaitable[None]]:
    """`await wait_indexed(path)`: until the store of that file has indexed every message."""
    return _wait_indexed


@pytest.fixture
def settle() -> Settle:
    """Await before searching: an eager SQLite store has then indexed everything it stored."""

    async def run(store: Store) -> None:
        if isinstance(store, SqliteStore) and store.indexer.idle == 0.0:
            await _wait_indexed(Path(store.path))

    return run


@pytest.fixture
def found(store: Store, settle: Settle) -> Callable[..., Awaitable[list[str]]]:
    """`await found(user, query, conversation=None, limit=100)`: the texts of `user`'s search
    for `query` (one page), newest first."""

    async def run(
        user: str, query: str, *, conversation: str | None = None, limit: int = 100
    ) -> list[str]:
        assert isinstance(store, Searchable)
        await settle(store)
        page = await store.search(user, parse_query(query), conversation=conversation, limit=limit)
        return [m.text for m in page.messages]

    return run
