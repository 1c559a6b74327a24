"""The shared store suite on SqliteStore, plus what only a durable store promises: data survives
a reopen, a bad database file is refused at open with a clear reason, and a write that did not
commit is never reported as stored."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import trio
from store_suite import AB, AC, StoreSuite, group, msg, put, seqs

from relay.clock import iso_utc
from relay.config import RelayConfig
from relay.errors import StoreError, StoreUnavailable
from relay.store import MemoryStore, store_from_config
from relay.store.base import (
    NewMessage,
    Store,
    Watermarks,
    direct_conversation,
    group_conversation,
)
from relay.store.migrations import MIGRATIONS, SCHEMA_VERSION, _statements
from relay.store.sqlite import SqliteStore
from relay.store.sqlite.connect import READER_CACHE_KIB, Connector

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    sqlite = SqliteStore(tmp_path / "relay.db")
    await sqlite.open()
    yield sqlite
    await sqlite.close()


class TestSqliteStore(StoreSuite):
    async def test_is_a_store(self, store: Store) -> None:
        assert isinstance(store, Store)


async def snapshot(store: Store) -> dict[str, Any]:
    """Everything a user can observe about users a, b, c and group g."""
    seen: dict[str, Any] = {}
    for user in ("a", "b", "c"):
        seen[f"conversations {user}"] = await store.conversations(user)
        seen[f"contacts {user}"] = await store.contacts(user)
        for device in ("", "phone", "watch"):
            seen[f"undelivered {user}/{device}"] = await store.undelivered(user, device)
        seen[f"coverage {user}"] = await store.coverage(user, limit=100)
    seen["watermarks ab"] = await store.member_watermarks(AB)
    seen["watermarks g"] = await store.member_watermarks(group_conversation("g"))
    seen["history ab"] = await store.history(AB)
    seen["history g"] = await store.history(group_conversation("g"))
    seen["group"] = await store.get_group("g")
    seen["last seen"] = await store.last_seen(["a", "b", "c"])
    return seen


async def test_everything_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    first = SqliteStore(path)
    await first.open()
    await first.create_group(group("g", ["a", "b", "c"]))
    await put(first, msg("a", "b", id="k1"), msg("b", "a"), msg("a", "b"), msg("c", group="g"))
    await put(first, msg("a", group="g", meta={"reply": 1}), msg("c", "b"))
    await first.mark_delivered(AB, "b", "phone", 3)
    await first.mark_read(AB, "a", 2)
    await first.set_group_members("g", ["a", "c"])
    await first.set_last_seen("b", "2026-02-05T10:30:00.000Z")
    before = await snapshot(first)
    await first.close()

    second = SqliteStore(path)
    await second.open()
    try:
        assert await snapshot(second) == before
        assert await second.member_watermarks(AB) == {"a": Watermarks(2, 2), "b": Watermarks(3, 0)}
        # the idempotency key is kept: a resend is the stored message, not a new one
        [again] = await second.append_many([msg("a", "b", id="k1", text="resent")])
        assert again.duplicate and again.message.seq == 1 and again.message.text == "text of k1"
        # seq continues: no reuse, no gap
        [next_ab, next_g] = await put(second, msg("b", "a"), msg("c", group="g"))
        assert (next_ab.seq, next_g.seq) == (4, 3)
    finally:
        await second.close()


async def test_device_cursors_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    first = SqliteStore(path)
    await first.open()
    await put(first, *(msg("a", "b") for _ in range(4)))
    await first.mark_delivered(AB, "b", "phone", 1)
    await first.mark_delivered(AB, "b", "watch", 3)
    await first.close()
    second = SqliteStore(path)
    await second.open()
    try:
        assert seqs(await second.undelivered("b", "phone")) == [2, 3, 4]
        assert seqs(await second.undelivered("b", "watch")) == [4]
        assert seqs(await second.undelivered("b", "new")) == [4]
    finally:
        await second.close()


# --- a bad database is refused at open ------------------------------------------------------------


async def open_fails(path: Path, **kwargs: Any) -> str:
    store = SqliteStore(path, **kwargs)
    with pytest.raises(StoreUnavailable) as caught:
        await store.open()
    await store.close()
    return str(caught.value)


async def test_missing_directory(tmp_path: Path) -> None:
    reason = await open_fails(tmp_path / "nowhere" / "relay.db")
    assert "does not exist" in reason and "nowhere" in reason


async def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    path.write_bytes(b"this is not a database, just some bytes\n" * 200)
    reason = await open_fails(path)
    assert "not a SQLite database" in reason
    assert path.read_bytes().startswith(b"this is not a database")  # left as it was


async def test_corrupt_pages(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    made = SqliteStore(path)
    await made.open()
    for n in range(20):
        await put(made, *(msg("a", "b", text=f"{n} " + "x" * 500) for _ in range(10)))
    await made.close()
    data = bytearray(path.read_bytes())
    (page_size,) = struct.unpack(">H", data[16:18])
    assert len(data) > 12 * page_size
    for page in range(3, len(data) // page_size):  # keep the header and schema pages
        offset = page * page_size
        data[offset : offset + 64] = b"\xa5" * 64
    path.write_bytes(bytes(data))
    reason = await open_fails(path)
    assert "corrupt" in reason, reason


async def test_another_applications_database(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.commit()
    conn.close()
    reason = await open_fails(path)
    assert "not a relay database" in reason and "invoices" in reason, reason
    conn = sqlite3.connect(path)  # and it was left alone
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("invoices",)]
    conn.close()


async def test_database_from_a_newer_relay(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    assert "newer" in await open_fails(path)


@pytest.mark.parametrize("existing", [True, False], ids=["relay-db", "fresh-file"])
async def test_locked_by_another_connection(tmp_path: Path, existing: bool) -> None:
    path = tmp_path / "relay.db"
    if existing:
        made = SqliteStore(path)
        await made.open()
        await made.close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        assert "locked" in await open_fails(path, busy_timeout=0.2)
    finally:
        other.execute("ROLLBACK")
        other.close()
    store = SqliteStore(path, busy_timeout=0.2)
    await store.open()  # the lock is gone: it opens
    await store.close()


def _unprivileged_open(path: Path) -> str:
    """Open `path` in a child process that file permissions apply to (root's override dropped)."""
    script = textwrap.dedent(
        f"""
        import trio
        from relay.errors import StoreUnavailable
        from relay.store.sqlite import SqliteStore

        async def main():
            store = SqliteStore({str(path)!r}, busy_timeout=0.2)
            try:
                await store.open()
            except StoreUnavailable as exc:
                print("unavailable:", exc)
            else:
                print("opened")
                await store.close()

        trio.run(main)
        """
    )
    command = [sys.executable, "-c", script]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: root ignores file permissions")
        command = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", *command]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def test_read_only_file(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    made = SqliteStore(path)
    await made.open()
    await made.close()
    assert _unprivileged_open(path) == "opened"  # the check itself can open a writable one
    path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    try:
        reason = _unprivileged_open(path)
    finally:
        path.chmod(0o644)
    assert reason.startswith("unavailable:") and "read-only" in reason, reason


async def test_read_only_directory(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    directory.mkdir()
    path = directory / "relay.db"
    directory.chmod(0o555)
    try:
        fresh = _unprivileged_open(path)  # cannot even create the file
        assert fresh.startswith("unavailable:"), fresh
        assert "cannot be opened" in fresh or "read-only" in fresh, fresh
    finally:
        directory.chmod(0o755)
    made = SqliteStore(path)
    await made.open()
    await made.close()  # leaves no -wal/-shm file: a reopen must create them
    directory.chmod(0o555)
    try:
        existing = _unprivileged_open(path)
    finally:
        directory.chmod(0o755)
    assert existing.startswith("unavailable:"), existing


# --- a write that did not commit is never reported as stored ---------------------------------------


async def test_full_disk_fails_the_append_and_stores_nothing(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    setup = SqliteStore(path)
    await setup.open()
    kept = await put(setup, msg("a", "b"), msg("b", "a"))
    await setup.close()

    # max_page_count at or below the current size: the file cannot grow by one page
    full = SqliteStore(path, pragmas=[("max_page_count", 1)])
    await full.open()
    try:
        big = [msg("a", "b", text="x" * 4000) for _ in range(40)]
        with pytest.raises(StoreError) as caught:
            await full.append_many(big)
        assert "full" in str(caught.value)
        assert await full.last_seq(AB) == 2
        with pytest.raises(StoreError):
            await full.append_many([msg("a", "c", text="y" * 4000) for _ in range(40)])
    finally:
        await full.close()

    after = SqliteStore(path)
    await after.open()
    try:
        page, more = await after.history(AB)
        assert (page, more) == (kept, False)
        assert await after.undelivered("b", "") == [kept[0]]
        # nothing of the failed batches was stored: their ids are free, seq continues at 3
        results = await after.append_many(big[:2])
        assert [(r.message.seq, r.duplicate) for r in results] == [(3, False), (4, False)]
    finally:
        await after.close()


async def test_a_lock_held_at_run_time_fails_the_append_then_it_recovers(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    store = SqliteStore(path, busy_timeout=0.2)
    await store.open()
    try:
        await put(store, msg("a", "b"))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(StoreError) as caught:
                await store.append_many([msg("a", "b", id="during-lock")])
            assert "locked" in str(caught.value)
        finally:
            other.execute("ROLLBACK")
            other.close()
        [again] = await put(store, msg("a", "b", id="during-lock"))
        assert again.seq == 2  # not stored before: no duplicate, no gap
    finally:
        await store.close()


# --- concurrency and lifecycle --------------------------------------------------------------------


async def test_cancelled_appends_free_their_slot_and_commit_whole(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "relay.db", max_pending=2, commit_interval=0.01)
    await store.open()
    try:
        with trio.move_on_after(0.005):
            async with trio.open_nursery() as nursery:
                for n in range(30):
                    nursery.start_soon(store.append_many, [msg("a", "b", id=f"c{n}")])
        # the store still takes writes (no slot leaked) and what landed has gapless seqs
        for n in range(30):
            await store.append_many([msg("a", "b", id=f"c{n}")])
        page, _ = await store.history(AB, limit=100)
        assert seqs(page) == list(range(1, 31))
        assert sorted(m.id for m in page) == sorted(f"c{n}" for n in range(30))
    finally:
        await store.close()


async def test_closed_store_refuses_work(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "relay.db")
    await store.open()
    await store.open()  # idempotent
    await put(store, msg("a", "b"))
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreError):
        await store.append_many([msg("a", "b")])
    with pytest.raises(StoreError):
        await store.history(AB)


@pytest.mark.parametrize("cancelled", [False, True], ids=["close", "close-while-cancelled"])
async def test_close_waits_for_queued_writes(tmp_path: Path, cancelled: bool) -> None:
    path = tmp_path / "relay.db"
    store = SqliteStore(path, commit_interval=0.05)
    await store.open()
    results: list[int] = []

    async def append(n: int) -> None:
        [r] = await store.append_many([msg("a", "b", id=f"q{n}")])
        results.append(r.message.seq)

    async with trio.open_nursery() as nursery:
        for n in range(20):
            nursery.start_soon(append, n)
        await trio.sleep(0.01)  # all queued, the writer is still gathering
        with trio.CancelScope() as scope:
            if cancelled:
                scope.cancel()  # e.g. a relay shutting down by cancellation closes its store
            await store.close()
    assert sorted(results) == list(range(1, 21))
    reopened = SqliteStore(path)
    await reopened.open()
    assert await reopened.last_seq(AB) == 20
    await reopened.close()


# --- retention ------------------------------------------------------------------------------------


def old_msg(sender: str, recipient: str, when: str) -> NewMessage:
    fresh = msg(sender, recipient)
    return NewMessage(
        conversation=fresh.conversation,
        id=fresh.id,
        sender_id=sender,
        text=fresh.text,
        server_timestamp=when,
        recipient_id=recipient,
    )


async def eventually(predicate: Any) -> None:
    """Poll until `predicate()` holds: retention runs in the writer thread, with no event to await."""
    while not await predicate():  # noqa: ASYNC110
        await trio.sleep(0.02)


async def test_retention_by_age_deletes_old_messages_and_keeps_seq(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "relay.db", retention_days=30, retention_interval=0.05)
    await store.open()
    try:
        now = iso_utc(time.time())
        await put(store, *(old_msg("a", "b", "2020-01-01T00:00:00.000Z") for _ in range(3)))
        await put(store, old_msg("b", "a", now), old_msg("a", "b", now))

        async def old_gone() -> bool:
            page, _ = await store.history(AB)
            return seqs(page) == [4, 5]

        with trio.fail_after(2):
            await eventually(old_gone)
        [summary] = await store.conversations("a")
        assert (summary.last_seq, summary.unread, summary.last_message.seq) == (5, 1, 5)  # type: ignore[union-attr]
        [later] = await put(store, msg("b", "a"))
        assert later.seq == 6
    finally:
        await store.close()


async def test_retention_by_count_keeps_the_newest_per_conversation(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "relay.db", retention_max_messages=3, retention_interval=0.05)
    await store.open()
    try:
        await put(store, *(msg("a", "b") for _ in range(10)))
        await put(store, msg("a", "c"), msg("a", "c"))

        async def trimmed() -> bool:
            page, more = await store.history(AB)
            return seqs(page) == [8, 9, 10] and not more

        with trio.fail_after(2):
            await eventually(trimmed)
        page, _ = await store.history(AC)
        assert seqs(page) == [1, 2]
        [later] = await put(store, msg("a", "b"))
        assert later.seq == 11
    finally:
        await store.close()


# --- the factory ----------------------------------------------------------------------------------


async def test_store_from_config(tmp_path: Path) -> None:
    assert isinstance(store_from_config(RelayConfig(db_path=None)), MemoryStore)
    made = store_from_config(
        RelayConfig(db_path=str(tmp_path / "x.db"), commit_interval=0.0, retention_days=7)
    )
    assert isinstance(made, SqliteStore)
    assert (made.path, made.commit_interval, made.retention.days) == (
        str(tmp_path / "x.db"),
        0.0,
        7,
    )
    await made.open()
    await put(made, msg("a", "b"))
    await made.close()
    assert (tmp_path / "x.db").exists()


async def test_in_a_failing_batch_reported_stored_means_stored(tmp_path: Path) -> None:
    # Small and large appends share one transaction; the large ones hit the page limit (and
    # SQLite then undoes the whole transaction). Every append that returned must be on disk,
    # every append that raised must not be, and a large one does not take its neighbours down.
    path = tmp_path / "relay.db"
    setup = SqliteStore(path)
    await setup.open()
    await put(setup, msg("a", "b"))
    await setup.close()
    # No free pages: what fits is what the pages in use have room for, whatever the migrations
    # left on the freelist (a dropped table's pages). max_page_count 1 then stops any growth.
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("VACUUM")
        assert conn.execute("PRAGMA freelist_count").fetchone() == (0,)
    store = SqliteStore(path, pragmas=[("max_page_count", 1)], commit_interval=0.05)
    await store.open()
    reported: set[str] = set()
    failed: set[str] = set()

    async def append(n: int) -> None:
        text = "z" * (20_000 if n % 3 == 2 else 10)
        message = msg("a", "b", id=f"batch{n}", text=text)
        try:
            await store.append_many([message])
        except StoreError:
            failed.add(message.id)
        else:
            reported.add(message.id)

    async with trio.open_nursery() as nursery:
        for n in range(12):
            nursery.start_soon(append, n)
    await store.close()
    assert failed == {f"batch{n}" for n in range(12) if n % 3 == 2}

    reopened = SqliteStore(path)
    await reopened.open()
    try:
        page, _ = await reopened.history(AB, limit=100)
        assert {m.id for m in page} - {page[0].id} == reported
        assert seqs(page) == list(range(1, len(page) + 1))
    finally:
        await reopened.close()


async def test_two_stores_on_one_file_keep_seq_and_idempotency(tmp_path: Path) -> None:
    # e.g. a second relay started by mistake on the same file: writes serialise, nothing breaks
    path = tmp_path / "relay.db"
    first, second = SqliteStore(path), SqliteStore(path)
    await first.open()
    await second.open()
    got: list[tuple[str, int, bool]] = []

    async def writer(store: SqliteStore, name: str) -> None:
        for n in range(30):
            results = await store.append_many(
                [msg("a", "b", id=f"{name}{n}"), msg("a", "b", id=f"shared{n}")]
            )
            got.extend((r.message.id, r.message.seq, r.duplicate) for r in results)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, first, "x")
            nursery.start_soon(writer, second, "y")
    finally:
        await first.close()
        await second.close()
    fresh = sorted(seq for _, seq, dup in got if not dup)
    assert fresh == list(range(1, 91))  # 30 x + 30 y + 30 shared, each stored once
    seq_of = {mid: seq for mid, seq, dup in got if not dup}
    assert all(seq_of[mid] == seq for mid, seq, dup in got if dup)


async def test_concurrent_appends_with_duplicates_in_one_transaction(tmp_path: Path) -> None:
    # The writer stores the appends of a batch together; a duplicate among them (of a message
    # stored before, or of another request in the same batch) still comes back as the stored one.
    store = SqliteStore(tmp_path / "relay.db", commit_interval=0.05)
    await store.open()
    try:
        [first] = await put(store, msg("a", "b", id="old"))
        got: dict[int, list[tuple[str, int, bool]]] = {}

        async def append(n: int, ids: list[str]) -> None:
            results = await store.append_many([msg("a", "b", id=i) for i in ids])
            got[n] = [(r.message.id, r.message.seq, r.duplicate) for r in results]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(append, 0, ["p", "q"])
            nursery.start_soon(append, 1, ["r", "old"])
            nursery.start_soon(append, 2, ["q", "s"])
            nursery.start_soon(append, 3, ["t"])
        fresh = sorted(seq for results in got.values() for _, seq, dup in results if not dup)
        assert fresh == [2, 3, 4, 5, 6]  # p q r s t, once each, no gap
        seq_of = {i: s for results in got.values() for i, s, dup in results if not dup}
        seq_of["old"] = first.seq
        for results in got.values():
            assert all(seq_of[i] == s for i, s, _ in results)
        assert sum(dup for results in got.values() for _, _, dup in results) == 2
        page, _ = await store.history(AB)
        assert page[0].id == "old" and seqs(page) == [1, 2, 3, 4, 5, 6]
        [later] = await put(store, msg("b", "a"))
        assert later.seq == 7
    finally:
        await store.close()


async def test_a_second_store_writing_between_batches_moves_the_counter(tmp_path: Path) -> None:
    # The writer remembers conversation counters between batches; a commit by another
    # connection must not let it hand out a seq twice or leave a gap.
    path = tmp_path / "relay.db"
    first, second = SqliteStore(path), SqliteStore(path)
    await first.open()
    await second.open()
    try:
        for n in range(5):
            [a] = await put(first, msg("a", "b", id=f"f{n}"))
            [b] = await put(second, msg("b", "a", id=f"s{n}"))
            assert (a.seq, b.seq) == (2 * n + 1, 2 * n + 2)
    finally:
        await first.close()
        await second.close()


async def test_a_version_1_database_is_carried_forward(tmp_path: Path) -> None:
    # A file written by the first schema: its messages, counters and idempotency keys still hold.
    path = tmp_path / "relay.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN")
    for statement in _statements(MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO messages (pos, conversation, seq, id, sender_id, text, server_timestamp, "
        "recipient_id) VALUES (1, ?, 1, 'v1', 'a', 'from v1', '2026-01-01T00:00:00.000Z', 'b')",
        (AB,),
    )
    conn.execute(
        "INSERT INTO conversations VALUES (?, NULL, 1, 1, '2026-01-01T00:00:00.000Z')", (AB,)
    )
    conn.execute("INSERT INTO participants VALUES ('a', ?, 'b'), ('b', ?, 'a')", (AB, AB))
    conn.execute("COMMIT")
    conn.close()

    store = SqliteStore(path)
    await store.open()
    try:
        [again] = await store.append_many([msg("a", "b", id="v1")])
        assert (again.duplicate, again.message.seq, again.message.text) == (True, 1, "from v1")
        [fresh] = await put(store, msg("a", "b", id="v2"))
        assert fresh.seq == 2
        assert [m.id for m in await store.undelivered("b", "")] == ["v1", "v2"]
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        with pytest.raises(sqlite3.IntegrityError):  # the key is still unique
            conn.execute(
                "INSERT INTO messages (conversation, seq, id, sender_id, text, server_timestamp) "
                "VALUES (?, 9, 'v2', 'a', 'again', 'now')",
                (AB,),
            )
    finally:
        conn.close()


async def test_a_batch_mixing_optional_fields_keeps_each_and_the_order(tmp_path: Path) -> None:
    # Rows that set different optional columns are inserted by different statements; what is
    # read back is each message as given, in acceptance order.
    store = SqliteStore(tmp_path / "relay.db")
    await store.open()
    try:
        base = msg("a", "b")
        given = [
            NewMessage(
                conversation=base.conversation,
                id=f"mix{n}",
                sender_id="a",
                text=f"text {n}",
                server_timestamp=base.server_timestamp,
                recipient_id="b",
                sender_name="Ann" if n % 2 else None,
                sender_avatar="https://a/x.png" if n % 3 == 0 else None,
                client_timestamp="2026-01-01T00:00:00.000Z" if n % 4 < 2 else None,
                meta={"n": n, "nested": [n, None]} if n % 5 else None,
            )
            for n in range(12)
        ]
        stored = await put(store, *given)
        assert stored == [m.stored(n + 1) for n, m in enumerate(given)]
        assert await store.undelivered("b", "") == stored
        page, _ = await store.history(AB)
        assert page == stored
    finally:
        await store.close()


async def test_large_batches_store_every_message_once_in_order(tmp_path: Path) -> None:
    # Appends go in as multi-row statements of 128, 64, ... rows: counts that are not a power of
    # two, over several conversations and requests, store each message once with gapless seqs.
    store = SqliteStore(tmp_path / "relay.db", commit_interval=0.05)
    await store.open()
    try:
        sizes = [203, 1, 77, 300]

        async def append(n: int, size: int) -> None:
            sent = [msg("a", "b" if k % 3 else "c", id=f"big{n}.{k}") for k in range(size)]
            results = await store.append_many(sent)
            assert [r.message.id for r in results] == [m.id for m in sent]
            assert not any(r.duplicate for r in results)

        async with trio.open_nursery() as nursery:
            for n, size in enumerate(sizes):
                nursery.start_soon(append, n, size)
        ab, _ = await store.history(AB, limit=1000)
        ac, _ = await store.history(AC, limit=1000)
        assert seqs(ab) == list(range(1, len(ab) + 1))
        assert seqs(ac) == list(range(1, len(ac) + 1))
        assert len(ab) + len(ac) == sum(sizes)
        backlog = await store.undelivered("b", "", limit=1000)
        assert backlog == ab
        [later] = await put(store, msg("b", "a"))
        assert later.seq == len(ab) + 1
    finally:
        await store.close()


@pytest.mark.parametrize("interval", [0.0, None], ids=["checkpointer", "writer-only"])
async def test_the_checkpointer_copies_commits_into_the_database_file(
    tmp_path: Path, interval: float | None
) -> None:
    """With the background checkpointer, committed pages reach the database file soon after
    each commit and the WAL starts over instead of growing; without it (None) they wait in the
    WAL until the writer's own checkpoint, 40 MB away."""
    path = tmp_path / "relay.db"
    threads_before = sum(t.name == "relay-sqlite-checkpointer" for t in threading.enumerate())
    store = SqliteStore(path, checkpoint_interval=interval)
    # the search indexer writes too, in the appends' transactions and whenever the writer has
    # been idle a moment: kept out of this test (its pages would land in the WAL)
    store.indexer.in_step = False
    store.indexer.idle = 3600.0
    store.indexer.max_lag = 1 << 40
    await store.open()
    try:
        batches, size, text = 40, 100, "x" * 200
        for n in range(batches):
            await put(store, *[msg("a", "b", id=f"w{n}.{k}", text=text) for k in range(size)])
            # the checkpointer's turn: it runs on its own thread, which a loaded machine may
            # delay past any fixed sleep, so wait (bounded) until it checkpointed this commit
            checkpointer = store._checkpointer
            for _ in range(5000):  # 10 s at most
                if checkpointer is None or checkpointer.idle:
                    break
                await trio.sleep(0.002)  # a thread's progress: no trio event to wait on
            else:
                raise AssertionError("the checkpointer did not checkpoint a commit in 10 s")
        written = batches * size * len(text)
        database = (await trio.Path(path).stat()).st_size
        wal = (await trio.Path(f"{path}-wal").stat()).st_size
        if interval is None:
            assert database < written / 4 < written < wal
        else:
            assert wal < written / 4 < written < database
        history, _ = await store.history(AB, limit=batches * size)
        assert len(history) == batches * size
    finally:
        await store.close()
    checkpointers = sum(t.name == "relay-sqlite-checkpointer" for t in threading.enumerate())
    assert checkpointers == threads_before  # close() ended it


async def test_a_negative_checkpoint_interval_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="checkpoint_interval"):
        SqliteStore(tmp_path / "relay.db", checkpoint_interval=-1)


async def test_positions_go_on_after_retention_deleted_every_message(tmp_path: Path) -> None:
    """A device registered at position p is owed what is accepted after it: positions stay above
    p even when retention has deleted every message (they are not restarted from the table)."""
    store = SqliteStore(tmp_path / "relay.db", retention_days=30, retention_interval=0.05)
    await store.open()
    try:
        await put(store, *(old_msg("a", "b", "2020-01-01T00:00:00.000Z") for _ in range(3)))
        await store.register_device("b", "watch")  # after the three, whatever becomes of them
        await store.register_device("b", "phone")

        async def all_gone() -> bool:
            page, _ = await store.history(AB)
            return page == []

        with trio.fail_after(2):
            await eventually(all_gone)
        await put(store, msg("a", "b"), msg("a", "b"))  # seq 4, 5: after both registered
        await store.mark_delivered(AB, "b", "phone", 5)
        assert seqs(await store.undelivered("b", "watch")) == [4, 5]
    finally:
        await store.close()


async def test_a_version_4_database_keeps_counting_positions_from_every_pos_it_recorded(
    tmp_path: Path,
) -> None:
    # A version-4 file whose messages retention deleted: its conversation still records pos 7 and
    # a device registered at pos 9. The next message must come after both.
    path = tmp_path / "relay.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN")
    for script in MIGRATIONS[:4]:
        for statement in _statements(script):
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 4")
    conn.execute(
        "INSERT INTO conversations VALUES (?, NULL, 3, 7, '2026-01-01T00:00:00.000Z')", (AB,)
    )
    conn.execute("INSERT INTO participants VALUES ('a', ?, 'b', 0), ('b', ?, 'a', 0)", (AB, AB))
    conn.execute("INSERT INTO devices VALUES ('b', 'watch', 9)")
    conn.execute("COMMIT")
    conn.close()

    store = SqliteStore(path)
    await store.open()
    try:
        [fresh] = await put(store, msg("a", "b"))
        assert fresh.seq == 4
        await store.mark_delivered(AB, "b", "phone", 4)  # another device of b had it
        assert seqs(await store.undelivered("b", "watch")) == [4]
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT pos FROM messages").fetchall() == [(10,)]
        assert conn.execute("SELECT last_pos FROM positions").fetchall() == [(10,)]
    finally:
        conn.close()


async def test_reader_connections_cache_at_most_reader_cache_kib(tmp_path: Path) -> None:
    """Every read connection's page cache is capped at READER_CACHE_KIB (a negative cache_size
    is KiB); the writer keeps SQLite's default, and a store's own cache_size pragma wins."""
    default = sqlite3.connect(":memory:").execute("PRAGMA cache_size").fetchone()[0]
    assert default != -READER_CACHE_KIB
    store = SqliteStore(tmp_path / "relay.db", readers=3)
    await store.open()
    try:
        # idle: every reader waits in the queue
        readers = [store._readers.get_nowait() for _ in range(3)]
        assert store._readers.empty()
        sizes = {r.execute("PRAGMA cache_size").fetchone()[0] for r in readers}
        for r in readers:
            store._readers.put(r)
        assert sizes == {-READER_CACHE_KIB}
        conns = Connector(str(tmp_path / "relay.db"), 1.0, (), False).connect(1, False)
        try:
            assert conns.writer.execute("PRAGMA cache_size").fetchone()[0] == default
        finally:
            conns.writer.close()
            for r in conns.readers:
                r.close()
        chosen = Connector(str(tmp_path / "relay.db"), 1.0, (("cache_size", -1000),), False)
        conns = chosen.connect(1, False)
        try:
            assert conns.readers[0].execute("PRAGMA cache_size").fetchone()[0] == -1000
        finally:
            conns.writer.close()
            conns.readers[0].close()
    finally:
        await store.close()


# --- the backlog read's cost -----------------------------------------------------------------------


async def test_a_backlog_page_costs_a_page_not_the_backlog(tmp_path: Path) -> None:
    # A device far behind reads its backlog a page at a time; each page must cost about the
    # same however much is owed (counted in SQLite VM steps, not time). Sorting the whole
    # backlog for each page made a reconnect cost grow with what was owed, without bound.
    from relay.store.sqlite import reads

    path = tmp_path / "relay.db"
    store = SqliteStore(path)
    await store.open()
    sent = 0

    async def owe(upto: int) -> None:
        nonlocal sent
        while sent < upto:
            batch = [msg("a", "b", id=f"m{sent + i}") for i in range(500)]
            await put(store, *batch)
            sent += len(batch)

    def steps_for_a_page(device: str) -> tuple[int, list[int]]:
        ticks = 0

        def tick() -> int:
            nonlocal ticks
            ticks += 1
            return 0

        with closing(sqlite3.connect(path)) as conn:
            conn.set_progress_handler(tick, 100)
            page = reads.undelivered(conn, "b", device, 20)
        return ticks, [m.seq for m in page]

    try:
        await store.register_device("b", "phone")  # owed all from here; "" is b's anonymous one
        await owe(500)
        small = [steps_for_a_page(device) for device in ("", "phone")]
        await owe(10_000)
        large = [steps_for_a_page(device) for device in ("", "phone")]
    finally:
        await store.close()
    for (few, first), (many, again) in zip(small, large, strict=True):
        assert first == again == list(range(1, 21))  # the oldest 20, in order, both times
        assert many < 2 * few, (few, many)


# --- the readers' statement cache ------------------------------------------------------------------


class _Recording:
    """A connection that remembers the text of every statement executed on it."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.texts: set[str] = set()

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        self.texts.add(sql)
        return self.conn.execute(sql, params)


async def test_a_read_taking_a_list_is_one_statement_whatever_the_lists_length(
    tmp_path: Path,
) -> None:
    # sqlite3 prepares and caches a statement per distinct text (256 a connection): a `?` per
    # value made one per list length, and a long-running relay's readers grew their cached
    # statements as backlog pages of new lengths came (0.5 -> 1.2 MB each in 8 minutes of
    # `python -m bench soak`). Each list-taking read must use one text for every length, and
    # still answer for exactly the values given.
    from relay.store.sqlite import reads, search

    path = tmp_path / "relay.db"
    store = SqliteStore(path)
    await store.open()
    try:
        await put(store, *[msg("a", "b", id=f"m{i}") for i in range(40)])
        await put(store, msg("a", "c", id="to-c"))
        await store.set_last_seen("u3", "2026-12-06T00:00:00.000Z")
    finally:
        await store.close()
    ab, ac = direct_conversation("a", "b"), direct_conversation("a", "c")
    with closing(sqlite3.connect(path)) as raw:
        conn: Any = _Recording(raw)
        first: set[str] = set()
        for n in range(1, 41):
            page = reads.undelivered(conn, "b", "", n)
            assert [m.seq for m in page] == list(range(1, n + 1))
            seen = reads.last_seen(conn, [f"u{i}" for i in range(n)] + ["u0"])
            assert seen == ({"u3": "2026-12-06T00:00:00.000Z"} if n > 3 else {})
            asked = [ab, ac][: 1 + n % 2]
            marks = search.member_watermarks(conn, asked)
            assert sorted(marks) == sorted(asked)
            assert set(marks[ab]) == {"a", "b"}
            if n == 1:
                first = set(conn.texts)
        assert conn.texts == first


def test_a_sqlite_without_json_functions_is_refused_by_name() -> None:
    # SQLite before 3.38 may be built without json_each; the store says so at open, not as a
    # failed read later (the real library here has it, so only the check itself is exercised)
    from relay.store.sqlite.connect import _require_json

    class NoJson:
        def execute(self, sql: str) -> None:
            raise sqlite3.OperationalError("no such table: json_each")

    with pytest.raises(StoreUnavailable, match=r"has no JSON functions \(json_each\)"):
        _require_json(NoJson(), "cannot open the database 'x'")  # type: ignore[arg-type]
