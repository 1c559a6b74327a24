"""The SQL stores' searcher (relay/store/searcher.py): one search at a time, first come first
served, in a thread of its own on a connection of its own; a cancelled waiter's search is
skipped; stopping fails what is queued; and a search never waits behind the store's other
reads."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from services import fresh_schema
from store_suite import msg, put

from relay.errors import StoreError
from relay.search import parse_query
from relay.store.postgres import PostgresStore
from relay.store.searcher import Searcher
from relay.store.sqlite import SqliteStore


def _read(conn: sqlite3.Connection, work: Any, args: tuple[Any, ...]) -> Any:
    return work(conn, *args)


@pytest.fixture
async def searcher() -> AsyncIterator[Searcher[sqlite3.Connection]]:
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    made = Searcher(conn, _read, sqlite3.Connection.close)
    made.start()
    yield made
    await made.stop()


async def test_one_at_a_time_in_the_order_asked(searcher: Searcher[sqlite3.Connection]) -> None:
    running = 0
    most = 0
    order: list[int] = []
    gate = threading.Event()
    lock = threading.Lock()

    def work(conn: sqlite3.Connection, i: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        gate.wait(5)  # the first holds the thread while the others queue behind it
        (value,) = conn.execute("SELECT ?", (i,)).fetchone()
        order.append(value)
        with lock:
            running -= 1
        return int(value) * 10

    answers: dict[int, int] = {}

    async def ask(i: int) -> None:
        answers[i] = await searcher.run(work, i)

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(ask, i)
            await trio.testing.wait_all_tasks_blocked()  # asked in this order
        gate.set()
    assert order == list(range(8))
    assert most == 1
    assert answers == {i: i * 10 for i in range(8)}


async def test_an_error_reaches_its_waiter_only(searcher: Searcher[sqlite3.Connection]) -> None:
    def fails(conn: sqlite3.Connection) -> None:
        conn.execute("SELECT * FROM no_such_table")

    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        await searcher.run(fails)
    assert await searcher.run(lambda conn: conn.execute("SELECT 7").fetchone()[0]) == 7


async def test_a_cancelled_waiters_search_is_skipped(
    searcher: Searcher[sqlite3.Connection],
) -> None:
    gate = threading.Event()
    ran: list[str] = []

    def hold(conn: sqlite3.Connection) -> str:
        gate.wait(5)
        ran.append("first")
        return "first"

    def second(conn: sqlite3.Connection) -> str:
        ran.append("second")
        return "second"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(searcher.run, hold)
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as scope:
            scope.deadline = trio.current_time()  # cancelled while queued behind `hold`
            await searcher.run(second)
        assert scope.cancelled_caught
        gate.set()
    assert await searcher.run(lambda conn: "third") == "third"
    assert ran == ["first"]


async def test_then_runs_in_trio_with_the_result_before_the_waiter_resumes(
    searcher: Searcher[sqlite3.Connection],
) -> None:
    """What the search frame's answer relies on: the callback queues the answer from the
    store's wake-up itself, not from the waiting task once it is scheduled again."""
    events: list[Any] = []
    waiter = None

    def then(result: int) -> None:
        events.append(("then", result, trio.lowlevel.current_task() is waiter))

    async def ask() -> None:
        nonlocal waiter
        waiter = trio.lowlevel.current_task()
        events.append(("answer", await searcher.run(lambda conn, n: n * 2, 21, then=then)))

    await ask()
    assert events == [("then", 42, False), ("answer", 42)]


async def test_then_is_not_called_for_a_failed_search(
    searcher: Searcher[sqlite3.Connection],
) -> None:
    called: list[Any] = []

    def fails(conn: sqlite3.Connection) -> None:
        conn.execute("SELECT * FROM no_such_table")

    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        await searcher.run(fails, then=called.append)
    assert called == []


async def test_what_then_raises_is_the_waiters_error_and_the_searcher_goes_on(
    searcher: Searcher[sqlite3.Connection],
) -> None:
    def then(result: int) -> None:
        raise ValueError(f"cannot answer {result}")

    with pytest.raises(ValueError, match="cannot answer 7"):
        await searcher.run(lambda conn: 7, then=then)
    assert await searcher.run(lambda conn: 8) == 8


async def test_then_is_not_called_once_its_waiter_was_cancelled(
    searcher: Searcher[sqlite3.Connection],
) -> None:
    started = threading.Event()
    gate = threading.Event()
    called: list[Any] = []

    def hold(conn: sqlite3.Connection) -> str:
        started.set()
        gate.wait(5)
        return "held"

    with trio.CancelScope() as scope:

        async def cancel_once_running() -> None:
            await trio.to_thread.run_sync(started.wait, 5)
            scope.cancel()  # the search is running: its waiter goes, its answer must not

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_once_running)
            await searcher.run(hold, then=called.append)
    assert scope.cancelled_caught
    gate.set()
    assert await searcher.run(lambda conn: "next") == "next"  # after `hold` ended
    assert called == []


async def test_stopping_runs_what_is_queued_then_refuses_and_closes_the_connection() -> None:
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    closed = threading.Event()

    def close(c: sqlite3.Connection) -> None:
        c.close()
        closed.set()

    searcher = Searcher(conn, _read, close)
    searcher.start()
    gate = threading.Event()
    outcomes: list[object] = []

    def hold(c: sqlite3.Connection) -> str:
        gate.wait(5)
        return "ran"

    async def ask(work: Any) -> None:
        outcomes.append(await searcher.run(work))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, hold)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(ask, lambda c: c.execute("SELECT 'queued'").fetchone()[0])
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(searcher.stop)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(StoreError, match="the store is closed"):
            await searcher.run(lambda c: "too late")
        gate.set()
    assert sorted(map(str, outcomes)) == ["queued", "ran"]
    assert closed.is_set()
    await searcher.stop()  # again: nothing to do


@pytest.fixture(params=["sqlite", "postgres"])
async def sql_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SqliteStore | PostgresStore]:
    made: SqliteStore | PostgresStore
    if request.param == "sqlite":
        made = SqliteStore(tmp_path / "r.db")
    else:
        made = PostgresStore(fresh_schema(request.getfixturevalue("pg_database")))
    await made.open()
    yield made
    await made.close()


async def test_a_search_does_not_wait_behind_the_stores_other_reads(
    sql_store: SqliteStore | PostgresStore,
) -> None:
    """Every pooled reader is held by a slow read (a device's long backlog, say); a search is
    answered meanwhile, on the searcher's own connection."""
    await put(sql_store, msg("a", "b", text="needle in a haystack"))
    release = threading.Event()

    def slow(conn: Any) -> str:
        release.wait(10)
        return "slow"

    slow_reads: list[str] = []

    async def hold_a_reader() -> None:
        slow_reads.append(await sql_store._read(slow))  # white box: the pool's own read

    async with trio.open_nursery() as nursery:
        for _ in range(sql_store._reader_count):
            nursery.start_soon(hold_a_reader)
        await trio.testing.wait_all_tasks_blocked()
        assert sql_store._read_limiter.available_tokens == 0
        with trio.fail_after(5):
            page = await sql_store.search("a", parse_query("needle"))
        assert [m.text for m in page.messages] == ["needle in a haystack"]
        release.set()
    assert slow_reads == ["slow"] * sql_store._reader_count


async def test_closing_with_searches_queued_answers_every_one(
    sql_store: SqliteStore | PostgresStore,
) -> None:
    """Searches asked for just before close() are each answered, with a page or with
    StoreError, and the store closes."""
    await put(sql_store, msg("a", "b", text="closing time"))
    outcomes: list[str] = []

    async def ask() -> None:
        try:
            page = await sql_store.search("a", parse_query("closing"))
            outcomes.append(page.messages[0].text)
        except StoreError as exc:
            outcomes.append(str(exc))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked(cushion=0.0)
        await sql_store.close()
    assert len(outcomes) == 10
    assert set(outcomes) <= {"closing time", "the store is closed"}
    with pytest.raises(StoreError, match="closed"):
        await sql_store.search("a", parse_query("closing"))
