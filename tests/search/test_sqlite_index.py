"""The SQLite search index stays in step with the messages: retention removes from it, and a
database made before the index existed is indexed when it is opened."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio
from store_suite import AB, msg, put

from relay.search import parse_query
from relay.store.migrations import MIGRATIONS, SCHEMA_VERSION, _statements
from relay.store.sqlite import SqliteStore


def index_rows(path: Path) -> list[tuple[int, str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT rowid, body FROM message_search ORDER BY rowid").fetchall()
    finally:
        conn.close()


async def test_retention_deletes_from_the_index(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    store = SqliteStore(path, retention_max_messages=2, retention_interval=0.05)
    await store.open()
    try:
        await put(store, *(msg("a", "b", text=f"word {i}") for i in range(5)))

        async def trimmed() -> bool:
            page, _ = await store.history(AB)
            return [m.seq for m in page] == [4, 5]

        with trio.fail_after(2):
            while not await trimmed():  # noqa: ASYNC110 (retention runs in the writer thread)
                await trio.sleep(0.02)
        page = await store.search("a", parse_query("word"))
        assert [m.text for m in page.messages] == ["word 4", "word 3"]
    finally:
        await store.close()
    assert index_rows(path) == [(4, "word 3"), (5, "word 4")]


async def test_a_version_5_database_is_indexed_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN")
    for script in MIGRATIONS[:5]:
        for statement in _statements(script):
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 5")
    conn.execute("COMMIT")
    conn.close()
    old = SqliteStore(path)
    # messages stored by the version-5 schema (the index does not exist yet)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for pos, text in enumerate(["Grüße aus Köln", "", "東京タワー"], start=1):
        conn.execute(
            "INSERT INTO messages (pos, conversation, seq, id, sender_id, text, server_timestamp,"
            " recipient_id) VALUES (?, ?, ?, ?, 'a', ?, '2026-01-01T00:00:00.000Z', 'b')",
            (pos, AB, pos, f"m{pos}", text),
        )
    conn.execute(
        "INSERT INTO conversations VALUES (?, NULL, 3, 3, '2026-01-01T00:00:00.000Z')", (AB,)
    )
    conn.execute("INSERT INTO participants VALUES ('a', ?, 'b', 0), ('b', ?, 'a', 0)", (AB, AB))
    conn.execute("UPDATE positions SET last_pos = 3")
    conn.execute("COMMIT")
    conn.close()

    await old.open()
    try:
        assert [m.seq for m in (await old.search("b", parse_query("grusse koln"))).messages] == [1]
        assert [m.seq for m in (await old.search("b", parse_query("タワー"))).messages] == [3]
        [fresh] = await put(old, msg("b", "a", text="koln again"))
        found = await old.search("a", parse_query("koln"))
        assert [m.seq for m in found.messages] == [fresh.seq, 1]
    finally:
        await old.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    finally:
        conn.close()
    assert [row[0] for row in index_rows(path)] == [1, 3, 4]
