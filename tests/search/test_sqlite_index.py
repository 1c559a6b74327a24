"""The SQLite search index (migration 7, sqlite/indexer.py): the writer indexes each batch's
messages in the batch's transaction, catches up with an unindexed tail (under load too),
searches are exact whatever it has indexed yet, retention removes from the index, and a
database made before the index existed is indexed once opened."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
from store_suite import AB, fast_append, msg, put, sqlite_index_rows
from store_suite import sqlite_index_progress as progress

from relay.search import parse_query
from relay.store.migrations import MIGRATIONS, _statements
from relay.store.sqlite import SqliteStore

Wait = Callable[[Path], Awaitable[None]]


def index_rows(path: Path) -> list[tuple[int, str]]:
    return [(pos, body) for pos, body, _ in sqlite_index_rows(path)]


def indexed_pos(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT indexed_pos FROM search_progress").fetchone()[0])
    finally:
        conn.close()


async def texts_found(store: SqliteStore, user: str, query: str, limit: int = 100) -> list[str]:
    page = await store.search(user, parse_query(query), limit=limit)
    return [m.text for m in page.messages]


async def test_indexed_and_unindexed_messages_answer_alike(
    tmp_path: Path, wait_indexed: Wait
) -> None:
    path = tmp_path / "relay.db"
    store = SqliteStore(path)
    store.indexer.idle = 0.0
    await store.open()
    try:
        await put(store, *(msg("a", "b", text=f"word {i}") for i in range(4)))
        await wait_indexed(path)
        assert indexed_pos(path) == 4
        # from now on nothing more is indexed
        store.indexer.in_step = False
        store.indexer.idle = 3600.0
        await put(store, *(msg("b", "a", text=f"word {i}") for i in range(4, 7)))
        assert indexed_pos(path) == 4
        expected = [f"word {i}" for i in reversed(range(7))]
        assert await texts_found(store, "a", "word") == expected
        # pages across the boundary lose and repeat nothing
        seen: list[str] = []
        before = None
        while True:
            page = await store.search("b", parse_query("wor*"), before=before, limit=2)
            seen += [m.text for m in page.messages]
            if page.next is None:
                break
            before = page.next
        assert seen == expected
        assert await texts_found(store, "c", "word") == []
    finally:
        await store.close()
    assert [pos for pos, _ in index_rows(path)] == [1, 2, 3, 4]


async def test_a_writer_that_is_never_idle_indexes_once_it_lags(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    store = SqliteStore(path)
    store.indexer.in_step = False
    store.indexer.idle = 3600.0
    store.indexer.max_lag = 5
    await store.open()
    try:
        for i in range(4):
            await put(store, msg("a", "b", text=f"batch {i} one"), msg("a", "b", text="two"))
        await store.set_last_seen("a", "2026-01-01T00:00:00.000Z")  # after the last indexing
        # from the third batch on (6 behind, more than 5) each batch had as many indexed as it
        # appended: the unindexed tail stopped growing at 4
        assert indexed_pos(path) == 4
        assert await texts_found(store, "b", "batch") == [f"batch {i} one" for i in (3, 2, 1, 0)]
    finally:
        await store.close()


async def test_in_step_each_batch_is_indexed_in_its_own_transaction(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    store = SqliteStore(path)
    store.indexer.idle = 3600.0  # no indexing between batches: only in the appends' own
    await store.open()
    try:
        await put(store, *(msg("a", "b", text=f"step {i}") for i in range(3)))
        assert progress(path) == (3, 3)
        await fast_append(store, [[msg("b", "a", text="step 3")], [msg("a", "c", text="none")]])
        assert progress(path) == (5, 5)
        assert [pos for pos, _ in index_rows(path)] == [1, 2, 3, 4, 5]
        assert await texts_found(store, "a", "step") == [f"step {i}" for i in (3, 2, 1, 0)]
        # a resend (duplicate) appends nothing and leaves the index as it was
        await store.append_many([msg("a", "b", id="dup", text="step again")])
        await store.append_many([msg("a", "b", id="dup", text="step again")])
        assert progress(path) == (6, 6)
        assert len(index_rows(path)) == 6
    finally:
        await store.close()


async def test_a_tail_is_caught_up_while_requests_keep_coming(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    store = SqliteStore(path)
    store.indexer.in_step = False  # as the bench's prefill: stored, not indexed
    store.indexer.idle = 3600.0
    store.indexer.max_lag = 1 << 40
    await store.open()
    try:
        await put(store, *(msg("a", "b", text=f"old {i}") for i in range(10)))
    finally:
        await store.close()
    assert progress(path) == (0, 10)
    store = SqliteStore(path)
    store.indexer.idle = 3600.0  # never idle: only the catch-up after each batch indexes
    store.indexer.catch_up = 3
    await store.open()
    try:

        async def batch(text: str) -> tuple[int, int]:
            await put(store, msg("b", "a", text=text))
            # a write queued behind it runs once the writer has done its work after the batch
            await store.set_last_seen("a", "2026-01-01T00:00:00.000Z")
            return progress(path)

        # each batch of one: its message and 3 more of the tail, oldest first
        assert await batch("new 0") == (4, 11)
        assert await texts_found(store, "b", "old") == [f"old {i}" for i in reversed(range(10))]
        assert await batch("new 1") == (8, 12)
        assert await batch("new 2") == (12, 13)
        assert await batch("new 3") == (14, 14)  # a short read: caught up
        # from now on in step: indexed by the commit that stores it
        await put(store, msg("b", "a", text="new 4"))
        assert progress(path) == (15, 15)
        assert await texts_found(store, "a", "new") == [f"new {i}" for i in (4, 3, 2, 1, 0)]
        assert len(index_rows(path)) == 15
    finally:
        await store.close()


async def test_retention_deletes_from_the_index(tmp_path: Path, wait_indexed: Wait) -> None:
    path = tmp_path / "relay.db"
    store = SqliteStore(path, retention_interval=0.05)
    store.indexer.idle = 0.0
    await store.open()
    try:
        await put(store, *(msg("a", "b", text=f"word {i}") for i in range(5)))
        await wait_indexed(path)
        assert [pos for pos, _ in index_rows(path)] == [1, 2, 3, 4, 5]
        store.retention.max_messages = 2  # retention on: it runs after the next write
        await put(store, msg("a", "b", text="word 5"))

        async def trimmed() -> bool:
            page, _ = await store.history(AB)
            return [m.seq for m in page] == [5, 6]

        with trio.fail_after(5):
            while not await trimmed():  # noqa: ASYNC110 (retention runs in the writer thread)
                await trio.sleep(0.01)
        await wait_indexed(path)
        assert await texts_found(store, "a", "word") == ["word 5", "word 4"]
    finally:
        await store.close()
    assert index_rows(path) == [(5, "word 4"), (6, "word 5")]
    check = sqlite3.connect(path)
    try:  # the 'delete' commands the trigger issued left a sound index
        check.execute("INSERT INTO message_search (message_search) VALUES ('integrity-check')")
    finally:
        check.close()


async def test_retention_of_unindexed_and_tokenless_messages_leaves_the_index_sound(
    tmp_path: Path, wait_indexed: Wait
) -> None:
    # The trigger removes only indexed rows: a message with no token (e2e, attachments only)
    # has none, nor has one above indexed_pos. A 'delete' for either would corrupt the index.
    path = tmp_path / "relay.db"
    store = SqliteStore(path, retention_interval=0.05)
    store.indexer.idle = 0.0
    await store.open()
    try:
        await put(store, msg("a", "b", text="kept one"), msg("a", "b", text="!!"))
        await wait_indexed(path)
        store.indexer.in_step = False
        store.indexer.idle = 3600.0
        await put(store, msg("a", "b", text="unindexed"), msg("a", "b", text="kept two"))
        store.retention.max_messages = 1
        await put(store, msg("a", "b", text="last"))

        async def trimmed() -> bool:
            page, _ = await store.history(AB)
            return [m.seq for m in page] == [5]

        with trio.fail_after(5):
            while not await trimmed():  # noqa: ASYNC110 (retention runs in the writer thread)
                await trio.sleep(0.01)
        assert await texts_found(store, "a", "kept") == []
        assert await texts_found(store, "a", "last") == ["last"]
    finally:
        await store.close()
    assert index_rows(path) == []
    check = sqlite3.connect(path)
    try:
        check.execute("INSERT INTO message_search (message_search) VALUES ('integrity-check')")
    finally:
        check.close()


def old_database(path: Path, version: int, texts: list[str], *statements: str) -> None:
    """A database of schema `version` holding `texts` as 1:1 messages a -> b (seq and pos
    1, 2, ...), then `statements`, in one transaction."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN")
    for script in MIGRATIONS[:version]:
        for statement in _statements(script):
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version}")
    for pos, text in enumerate(texts, start=1):
        conn.execute(
            "INSERT INTO messages (pos, conversation, seq, id, sender_id, text, server_timestamp,"
            " recipient_id) VALUES (?, ?, ?, ?, 'a', ?, '2026-01-01T00:00:00.000Z', 'b')",
            (pos, AB, pos, f"m{pos}", text),
        )
    last = len(texts)
    conn.execute(
        "INSERT INTO conversations VALUES (?, NULL, ?, ?, '2026-01-01T00:00:00.000Z')",
        (AB, last, last),
    )
    conn.execute("INSERT INTO participants VALUES ('a', ?, 'b', 0), ('b', ?, 'a', 0)", (AB, AB))
    conn.execute("UPDATE positions SET last_pos = ?", (last,))
    for statement in statements:
        conn.execute(statement)
    conn.execute("COMMIT")
    conn.close()


async def test_a_version_6_database_is_indexed_once_opened(
    tmp_path: Path, wait_indexed: Wait
) -> None:
    path = tmp_path / "relay.db"
    # messages stored by the version-6 schema (no index yet)
    old_database(path, 6, ["Grüße aus Köln", "", "東京タワー"])

    store = SqliteStore(path)
    store.indexer.idle = 0.0
    await store.open()
    try:
        assert await texts_found(store, "b", "grusse koln") == ["Grüße aus Köln"]
        await wait_indexed(path)
        assert await texts_found(store, "b", "タワー") == ["東京タワー"]
        assert await texts_found(store, "b", "köl*") == ["Grüße aus Köln"]
        await put(store, msg("b", "a", text="koln again"))
        assert await texts_found(store, "a", "koln") == ["koln again", "Grüße aus Köln"]
    finally:
        await store.close()
    assert [pos for pos, _ in index_rows(path)][:2] == [1, 3]


async def test_a_version_12_index_is_rebuilt_contentless(
    tmp_path: Path, wait_indexed: Wait
) -> None:
    # Migration 13 replaces the index by a contentless one with columnsize=0 and indexes every
    # message again; searches are exact before the indexer has caught up (the tail is scanned)
    # and after.
    path = tmp_path / "relay.db"
    texts = ["see you at the café", "you see", "東京タワー"]
    # the version-12 index, written as that relay's indexer did (a stale row too: the rebuild
    # must not keep it)
    old_database(
        path,
        12,
        texts,
        "INSERT INTO message_search (rowid, body, conv) VALUES (1, 'see you at the cafe', 'c0'),"
        " (2, 'stale', 'c0')",
        "UPDATE search_progress SET indexed_pos = 2",
    )

    store = SqliteStore(path)
    store.indexer.idle = 3600.0  # nothing indexed until the test says so
    store.indexer.in_step = False
    await store.open()
    try:
        assert indexed_pos(path) == 0
        assert index_rows(path) == []
        assert await texts_found(store, "b", '"see you"') == ["see you at the café"]
        assert await texts_found(store, "b", "stale") == []
        store.indexer.idle = 0.0
        store.indexer.in_step = True
        await put(store, msg("b", "a", text="see you soon"))
        await wait_indexed(path)
        assert indexed_pos(path) == 4
        assert await texts_found(store, "b", '"see you"') == ["see you soon", "see you at the café"]
        assert await texts_found(store, "a", "you") == [
            "see you soon",
            "you see",
            "see you at the café",
        ]
        assert await texts_found(store, "a", "タワー") == ["東京タワー"]
    finally:
        await store.close()
    assert [pos for pos, _ in index_rows(path)] == [1, 2, 3, 4]
    check = sqlite3.connect(path)
    try:
        (sql,) = check.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'message_search'"
        ).fetchone()
        assert "content = ''" in sql and "columnsize = 0" in sql
        tables = {name for (name,) in check.execute("SELECT name FROM sqlite_master")}
        assert not {"message_search_content", "message_search_docsize"} & tables
    finally:
        check.close()
