"""The writer's in-step indexing from the messages it just appended (sqlite/indexer.py `_index`
with `fresh`): the index rows equal what reading the messages back gives, in a batch that also
holds other writes, and when another connection appended unindexed messages in between."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio
from store_suite import AB, msg, put, sqlite_index_rows
from store_suite import sqlite_index_progress as progress

from relay.search import index_text, parse_query
from relay.store.base import Appended
from relay.store.sqlite import SqliteStore
from relay.store.sqlite.search import conversation_token


def rows(path: Path) -> list[tuple[int, str, str]]:
    return sqlite_index_rows(path)


def expected_rows(path: Path) -> list[tuple[int, str, str]]:
    """The index rows reading every stored message back gives."""
    conn = sqlite3.connect(path)
    try:
        stored = conn.execute("SELECT pos, text, conversation FROM messages ORDER BY pos")
        return [
            (pos, body, conversation_token(conversation))
            for pos, text, conversation in stored
            if (body := index_text(text))
        ]
    finally:
        conn.close()


async def found(store: SqliteStore, user: str, query: str) -> list[str]:
    page = await store.search(user, parse_query(query), limit=100)
    return [m.text for m in page.messages]


async def test_a_batch_of_appends_and_other_writes_is_indexed_as_stored(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    # a long wait for more requests: the appends and the mark below make one writer batch
    store = SqliteStore(path, commit_interval=0.5)
    store.indexer.idle = 3600.0  # only the in-step indexing runs
    await store.open()
    try:
        await put(store, msg("a", "b", text="before"))
        answers: list[list[Appended] | None] = []
        done = trio.Event()

        def on_done(results: list[Appended] | None, error: BaseException | None) -> None:
            assert error is None
            answers.append(results)
            if len(answers) == 2:
                done.set()

        async with trio.open_nursery() as nursery:
            assert store.has_room()
            store.append_soon([msg("a", "b", text="Café crème"), msg("b", "a", text="")], on_done)
            assert store.has_room()
            store.append_soon([msg("c", "a", text="東京タワー naïve")], on_done)
            nursery.start_soon(store.mark_delivered_many, [(AB, "b", "d1", 1)])
            await done.wait()
        assert progress(path) == (4, 4)
        assert rows(path) == expected_rows(path)
        assert [pos for pos, _, _ in rows(path)] == [1, 2, 4]  # "" has no token, no row
        assert await found(store, "a", "creme") == ["Café crème"]
        assert await found(store, "a", "タワー naive") == ["東京タワー naïve"]
    finally:
        await store.close()


async def test_messages_another_connection_left_unindexed_are_indexed_in_step(
    tmp_path: Path,
) -> None:
    path = tmp_path / "relay.db"
    store = SqliteStore(path)
    store.indexer.idle = 3600.0
    other = SqliteStore(path)  # as another process on the same file, not indexing
    other.indexer.in_step = False
    other.indexer.idle = 3600.0
    other.indexer.max_lag = 1 << 40
    await store.open()
    await other.open()
    try:
        await put(store, msg("a", "b", text="first word"))
        await put(other, msg("b", "a", text="second word"), msg("b", "a", text="third word"))
        assert progress(path) == (1, 3)
        # the writer's next batch: its own message and the two above it are indexed together
        await put(store, msg("a", "b", text="fourth word"))
        assert progress(path) == (4, 4)
        assert rows(path) == expected_rows(path)
        assert [pos for pos, _, _ in rows(path)] == [1, 2, 3, 4]
        assert await found(store, "a", "word") == [
            "fourth word",
            "third word",
            "second word",
            "first word",
        ]
    finally:
        await other.close()
        await store.close()
