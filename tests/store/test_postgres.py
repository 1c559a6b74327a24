"""The shared store suite on PostgresStore, plus what only it promises: several stores on one
database (several nodes) allocate seqs without gap or duplicate and answer a resend made through
another with the same message; migrations are versioned; a database that is not reachable is
refused at open with a clear reason."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, cast

import psycopg
import pytest
import trio
from services import fresh_schema, postgres_database
from store_suite import AB, StoreSuite, group, msg, put

from relay.config import RelayConfig
from relay.errors import StoreError, StoreUnavailable
from relay.store import store_from_config
from relay.store.base import Appended, Store, Watermarks, group_conversation
from relay.store.postgres import PostgresStore
from relay.store.postgres.schema import SCHEMA_VERSION


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture
def pg_url(pg_database: str) -> str:
    return fresh_schema(pg_database)


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[Store]:
    postgres = PostgresStore(pg_url)
    await postgres.open()
    yield postgres
    await postgres.close()


def test_store_from_config_passes_the_commit_interval(pg_url: str) -> None:
    made = store_from_config(
        RelayConfig(db_path=pg_url, commit_interval=0.0, retention_max_messages=9)
    )
    assert isinstance(made, PostgresStore)
    assert (made.commit_interval, made.retention.max_messages) == (0.0, 9)


class TestPostgresStore(StoreSuite):
    async def test_is_a_store(self, store: Store) -> None:
        assert isinstance(store, Store)


async def test_nodes_on_one_database_share_seq_and_idempotency(pg_url: str) -> None:
    nodes = [PostgresStore(pg_url) for _ in range(3)]
    for node in nodes:
        await node.open()
    try:
        got: list[tuple[int, int]] = []

        async def sender(n: int, node: PostgresStore) -> None:
            for i in range(40):
                [r] = await node.append_many([msg("a", "b", id=f"n{n}-{i}")])
                got.append((n, r.message.seq))

        async with trio.open_nursery() as nursery:
            for n, node in enumerate(nodes):
                nursery.start_soon(sender, n, node)
        assert sorted(seq for _, seq in got) == list(range(1, 121))
        # each node's own messages in its acceptance order
        for n in range(3):
            mine = [seq for m, seq in got if m == n]
            assert mine == sorted(mine)
        # a resend through another node is answered with the stored message
        [first] = await put(nodes[0], msg("a", "b", id="resent", text="one"))
        [again] = await nodes[2].append_many([msg("a", "b", id="resent", text="two")])
        assert again.duplicate and again.message == first
        assert await nodes[1].last_seq(AB) == 121
    finally:
        for node in nodes:
            await node.close()


async def test_schema_is_versioned_and_reopens(pg_url: str) -> None:
    first = PostgresStore(pg_url)
    await first.open()
    [stored] = await put(first, msg("a", "b"))
    await first.close()
    second = PostgresStore(pg_url)
    await second.open()
    try:
        page, _ = await second.history(AB)
        assert page == [stored]
    finally:
        await second.close()
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT version FROM relay_schema").fetchone()
    assert row == (SCHEMA_VERSION,)


async def test_a_newer_schema_is_refused(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    await store.open()
    await store.close()
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE relay_schema SET version = 999")
    with pytest.raises(StoreUnavailable, match="newer than this relay supports"):
        await PostgresStore(pg_url).open()


async def test_another_applications_database_is_refused(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(StoreUnavailable, match="not a relay database"):
        await PostgresStore(pg_url).open()


async def test_an_unreachable_database_is_refused_with_its_reason() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/nowhere", connect_timeout=1)
    with pytest.raises(StoreUnavailable, match="cannot open the PostgreSQL store"):
        await store.open()


async def test_retention_deletes_past_the_count_and_keeps_the_counter(pg_url: str) -> None:
    store = PostgresStore(pg_url, retention_max_messages=2, retention_interval=0.05)
    await store.open()
    try:
        await put(store, *[msg("a", "b") for _ in range(5)])
        for _ in range(500):  # bounded: retention runs every 50 ms
            if len((await store.history(AB))[0]) <= 2:
                break
            await trio.sleep(0.02)
        page, _ = await store.history(AB)
        assert [m.seq for m in page] == [4, 5]
        [after] = await put(store, msg("a", "b"))
        assert after.seq == 6  # a deleted message's seq is never given again
    finally:
        await store.close()


def _cut(pg_url: str) -> int:
    """Terminate every relay connection to the database, as a PostgreSQL restart would."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'relay' AND datname = current_database()"
        ).fetchall()
    return len(rows)


async def test_a_cut_connection_fails_writes_clearly_then_recovers(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    await store.open()
    try:
        [first] = await put(store, msg("a", "b"))
        assert store.problem() is None
        assert await trio.to_thread.run_sync(_cut, pg_url) >= 1
        with pytest.raises(StoreError, match="PostgreSQL"):
            await store.append_many([msg("a", "b", id="during")])
        assert store.problem() is not None
        # it reconnects by itself; the failed append was not stored, its resend is
        [again] = await store.append_many([msg("a", "b", id="during")])
        assert not again.duplicate and again.message.seq == 2
        assert store.problem() is None
        # a read on a connection found cut is made again on a new one: it succeeds
        await store.history(AB)  # the read connection is open now
        assert await trio.to_thread.run_sync(_cut, pg_url) >= 1
        page, _ = await store.history(AB)
        assert [m.seq for m in page] == [first.seq, 2]
    finally:
        await store.close()


async def test_a_failing_append_in_a_pipelined_batch_fails_only_itself(pg_url: str) -> None:
    # one writer batch of three append requests (queued together, a commit_interval to gather
    # them); the middle one cannot be stored (PostgreSQL text holds no NUL): the pipelined
    # transaction fails, is rolled back, and the batch runs again one request at a time
    store = PostgresStore(pg_url, commit_interval=0.2)
    await store.open()
    try:
        answers: dict[int, tuple[object, BaseException | None]] = {}
        done = trio.Event()

        def answer(i: int) -> Callable[[object, BaseException | None], None]:
            def on_done(result: object, error: BaseException | None) -> None:
                answers[i] = (result, error)
                if len(answers) == 3:
                    done.set()

            return on_done

        batches = [
            [msg("a", "b", id="one")],
            [msg("a", "b", id="bad", text="nul \x00 inside")],
            [msg("a", "b", id="three")],
        ]
        for i, batch in enumerate(batches):
            assert store.has_room()
            store.append_soon(batch, answer(i))
        with trio.fail_after(10):
            await done.wait()
        assert isinstance(answers[1][1], StoreError)
        assert answers[0][1] is None and answers[2][1] is None
        seqs = [[r.message.seq for r in cast(list[Appended], answers[i][0])] for i in (0, 2)]
        assert seqs == [[1], [2]]  # no seq taken by the failed one
        page, _ = await store.history(AB)
        assert [(m.id, m.seq) for m in page] == [("one", 1), ("three", 2)]
        # the writer's connection is usable after the rollback: marks and appends go on
        await store.mark_delivered(AB, "b", "d1", 2)
        assert (await store.member_watermarks(AB))["b"].delivered_seq == 2
        [four] = await put(store, msg("a", "b", id="four"))
        assert four.seq == 3
    finally:
        await store.close()


async def test_marks_batched_in_rounds_answer_as_the_memory_store(pg_url: str) -> None:
    # mark_delivered_many sends the reads of a round of marks at once (writes.py); repeated
    # (conversation, user) keys, several devices and clamping must answer as marks in turn do
    import random

    from relay.store.memory import MemoryStore

    rng = random.Random(15)
    postgres, memory = PostgresStore(pg_url), MemoryStore()
    await postgres.open()
    await memory.open()
    try:
        messages = [msg("a", "b") for _ in range(6)] + [msg("c", "a") for _ in range(4)]
        for store in (postgres, memory):
            await put(store, *messages)
        conversations = sorted({m.conversation for m in messages})
        users = {
            c: sorted({m.sender_id for m in messages if m.conversation == c}) for c in conversations
        }
        for _ in range(5):
            marks = []
            for _ in range(12):
                c = rng.choice(conversations)
                marks.append(
                    (
                        c,
                        rng.choice(users[c] + ["b"]),
                        rng.choice(["", "p", "w"]),
                        rng.randint(0, 12),
                    )
                )
            assert await postgres.mark_delivered_many(marks) == await memory.mark_delivered_many(
                marks
            )
        for c in conversations:
            assert await postgres.member_watermarks(c) == await memory.member_watermarks(c)
        for user in ("a", "b", "c"):
            for device in ("", "p", "w"):
                got = [m.seq for m in await postgres.undelivered(user, device)]
                assert got == [m.seq for m in await memory.undelivered(user, device)]
    finally:
        await postgres.close()
        await memory.close()


# --- the backlog read's cost -----------------------------------------------------------------------


def _plan_cost(
    conn: psycopg.Connection[Any], query: str, params: Any, *, discarded: bool = False
) -> tuple[int, int]:
    """What running `query` costs, as PostgreSQL counts it (not time): the shared buffers its
    plan touched (hit or read) and the rows its plan's nodes produced; with `discarded`, the
    rows they read and threw away by a filter too (a scan that filters produces only what
    passes, however much it walked)."""

    def produced(node: dict[str, Any]) -> int:
        kept = node["Actual Rows"] + (node.get("Rows Removed by Filter", 0) if discarded else 0)
        here = int(kept * node["Actual Loops"])
        return here + sum(produced(child) for child in node.get("Plans", ()))

    [(explained,)] = conn.execute(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query, params
    ).fetchall()
    plan = (json.loads(explained) if isinstance(explained, str) else explained)[0]["Plan"]
    blocks = plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]  # the plan's, children's too
    return blocks, produced(plan)


def _analyzed(pg_url: str) -> psycopg.Connection[Any]:
    """A connection to the store's database, its statistics fresh, as autovacuum keeps them, so
    the plans measured do not depend on when autovacuum last ran."""
    conn = psycopg.connect(pg_url, autocommit=True)
    conn.execute("ANALYZE messages, participants, watermarks, device_cursors, devices")
    return conn


def _page_cost(pg_url: str, user: str, device: str) -> tuple[tuple[int, int], list[int]]:
    """What reading the device's oldest 20 owed costs (_plan_cost), and the seqs of that
    page."""
    from relay.store.postgres import reads

    with _analyzed(pg_url) as conn:
        cost = _plan_cost(conn, reads._UNDELIVERED, {"u": user, "d": device, "n": 20})
        page = reads.undelivered(conn, user, device, 20)
    return cost, [m.seq for m in page]


async def _send(store: Store, conversation: str, upto: int) -> int:
    """a's messages in `conversation` (AB, or the group "g") until it holds `upto`."""
    sent = await store.last_seq(conversation)
    while sent < upto:
        n = min(500, upto - sent)
        if conversation == AB:
            await put(store, *(msg("a", "b") for _ in range(n)))
        else:
            await put(store, *(msg("a", group="g") for _ in range(n)))
        sent = await store.last_seq(conversation)
    return sent


async def test_a_backlog_page_costs_a_page_not_the_backlog(pg_url: str) -> None:
    # A device far behind reads its backlog a page at a time; each page must cost about the
    # same however much is owed and however much came before it. Sorting the whole backlog
    # for each page costs what is owed; walking all messages in pos order until a page is found
    # costs what came before the page: measured together, one of each pair below catches
    # either. Pairs: b's and c's anonymous devices, owed 500 and 10,500 in the group; b's
    # registered watch and phone, likewise.
    g = group_conversation("g")
    store = PostgresStore(pg_url)
    await store.open()
    try:
        await store.create_group(group("g", ["a", "b", "c"]))
        await store.register_device("b", "phone")
        await _send(store, g, 10_000)
        await store.register_device("b", "watch")
        await store.mark_delivered(g, "b", "desk", 10_000)
        await _send(store, g, 10_500)
        pairs = [
            (_page_cost(pg_url, "b", ""), _page_cost(pg_url, "c", "")),
            (_page_cost(pg_url, "b", "watch"), _page_cost(pg_url, "b", "phone")),
        ]
    finally:
        await store.close()
    for (few, first), (many, again) in pairs:
        assert first == list(range(10_001, 10_021))  # the oldest 20 owed, in order
        assert again == list(range(1, 21))
        assert all(max(a, b) < 2 * min(a, b) for a, b in zip(few, many, strict=True)), (few, many)


class _Measured:
    """A connection that runs each statement under EXPLAIN (ANALYZE, BUFFERS) before running it,
    and adds up their costs (_plan_cost, the rows filtered out counted): what a write
    function's reads cost, whatever statements it sends."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.cost = (0, 0)

    def execute(self, query: str, params: Any = None) -> psycopg.Cursor[Any]:
        blocks, rows = _plan_cost(self.conn, query, params, discarded=True)
        self.cost = (self.cost[0] + blocks, self.cost[1] + rows)
        return self.conn.execute(query, params)


def _start_cost(pg_url: str, user: str, device: str) -> tuple[tuple[int, int], int]:
    """What the first delivery mark of a device in AB costs to find where the device starts
    (writes._device_start, the lookup run once per device and conversation), and that start."""
    from relay.store.postgres import writes

    with _analyzed(pg_url) as conn:
        [(delivered, read)] = conn.execute(
            "SELECT delivered_seq, read_seq FROM watermarks "
            "WHERE conversation = %s AND user_id = %s",
            (AB, user),
        ).fetchall()
        measured = _Measured(conn)
        start = writes._device_start(
            cast(Any, measured), AB, user, device, Watermarks(delivered, read)
        )
    return measured.cost, start


async def test_a_new_devices_start_costs_a_bisection_not_the_history_before_it(
    pg_url: str,
) -> None:
    # A device registered after the user's other device had everything delivered is owed what
    # came after it registered. Finding where that starts, for its backlog page and for its
    # first delivery mark (writes._device_start, once per device and conversation), must not
    # cost what the conversation held before (500 then 11,000 here), only a search of it.
    store = PostgresStore(pg_url)
    await store.open()
    try:
        await _send(store, AB, 500)
        await store.register_device("b", "tablet")
        await store.mark_delivered(AB, "b", "desk", await _send(store, AB, 1_000))
        page_early = _page_cost(pg_url, "b", "tablet")
        mark_early = _start_cost(pg_url, "b", "tablet")
        await _send(store, AB, 11_000)
        await store.register_device("b", "laptop")
        await store.mark_delivered(AB, "b", "desk", await _send(store, AB, 11_500))
        page_late = _page_cost(pg_url, "b", "laptop")
        mark_late = _start_cost(pg_url, "b", "laptop")
        # and the store's own first mark starts each where that lookup said
        await store.mark_delivered(AB, "b", "tablet", 0)
        await store.mark_delivered(AB, "b", "laptop", 0)
        tablet = [m.seq for m in await store.undelivered("b", "tablet", limit=1)]
        laptop = [m.seq for m in await store.undelivered("b", "laptop", limit=1)]
    finally:
        await store.close()
    (few, first), (many, again) = page_early, page_late
    assert first == list(range(501, 521))  # the oldest 20 after it registered, in order
    assert again == list(range(11_001, 11_021))
    assert all(m < 2 * f for f, m in zip(few, many, strict=True)), (few, many)
    (few, early), (many, late) = mark_early, mark_late
    assert (early, late) == (500, 11_000)
    assert (tablet, laptop) == ([501], [11_001])
    assert all(m < 2 * f for f, m in zip(few, many, strict=True)), (few, many)
