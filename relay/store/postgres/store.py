"""PostgresStore: the Store on a PostgreSQL database, as the Trio side sees it.

The SQLite store's shape (relay/store/sqlite/store.py) on psycopg 3's sync API: writes go to
ONE writer thread (writer.py) as Requests through a bounded queue (`_slots`, a trio.Semaphore
of `max_pending`, is taken before a request is queued and given back when it is answered);
reads run on a pool of connections in Trio worker threads (`trio.to_thread.run_sync`, at most
`readers` at once), each inside one read-only REPEATABLE READ transaction; searches run one at a
time on a connection of their own, in the searcher's thread (relay/store/searcher.py). The event
loop never waits on the database. (psycopg's async API needs asyncio; threads are how it runs
under Trio.)

Several nodes share one database: seq, pos and idempotency are decided inside PostgreSQL under
the `positions` row lock (schema.py), never from a node's memory.

Invariants:
- every call between open() and close() comes from one Trio run;
- an awaited write returns, and append_soon's callback runs, only once its transaction
  committed or failed;
- `problem()` says why PostgreSQL cannot be used right now (None while it can): set by the
  writer and by reads when the connection fails, cleared when a connection succeeds again;
- close() is a bounded flush that completes even when its caller is cancelled.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import secrets
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import psycopg
import trio

import relay.store.postgres.keys as keys
import relay.store.postgres.reads as reads
import relay.store.postgres.search as searches
import relay.store.postgres.webhooks as webhooks
import relay.store.postgres.writes as writes
from relay.errors import StoreError, StoreUnavailable
from relay.search.query import SearchQuery
from relay.store.base import (
    AppendDone,
    Appended,
    ConversationSummary,
    Coverage,
    DeviceKeys,
    Group,
    Marked,
    NewMessage,
    OutboxEvent,
    SearchPage,
    StoredMessage,
    Watermarks,
    WebhookCandidate,
)
from relay.store.postgres.appends import append_batch
from relay.store.postgres.retention import PostgresRetention
from relay.store.postgres.rows import Conn, describe
from relay.store.postgres.schema import SchemaMismatch, migrate
from relay.store.postgres.writer import EVERY_LOCK, MARKS, POSITIONS, STOP, Request, Writer
from relay.store.searcher import Searcher

log = logging.getLogger("relay.store")

T = TypeVar("T")

#: the cluster-wide locks of a write (relay.store.postgres.writer, POSITIONS)
_APPEND = frozenset({POSITIONS})
_MARKS_ONLY = frozenset({MARKS})
_EVERY = EVERY_LOCK


class PostgresStore:
    """The durable Store on PostgreSQL at `url` (a libpq URL, `postgresql://USER@HOST/DB`).

    `commit_interval`: how long the writer waits for more requests before committing a batch
    (0: none; requests that arrive while a commit is in flight form the next batch anyway).
    2 ms, as the SQLite store's default (RelayConfig.commit_interval): once a pipelined commit
    took two round trips, 0 left ~1.07 messages per transaction at 500 msg/s; 2 ms cut the
    server CPU per message by 21% on three nodes and 32% on one (bench/cluster.py), for ~2 ms
    of p50.
    `max_batch`: messages per transaction at most. `max_pending`: write requests queued at most.
    `readers`: read connections (and worker threads) at most. `connect_timeout`: seconds a
    connection attempt may take.
    """

    def __init__(
        self,
        url: str,
        *,
        commit_interval: float = 0.002,
        max_batch: int = 2000,
        max_pending: int = 10_000,
        readers: int = 2,
        retention_days: float | None = None,
        retention_max_messages: int | None = None,
        retention_interval: float = 60.0,
        connect_timeout: float = 5.0,
        probe_interval: float = 1.0,
    ) -> None:
        self.url = url
        self.commit_interval = commit_interval
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.connect_timeout = connect_timeout
        self.probe_interval = probe_interval
        self.retention = PostgresRetention(
            retention_days, retention_max_messages, interval=retention_interval
        )
        self._state = "new"  # new -> open -> closing -> closed
        self._requests: queue.Queue[Request | object] = queue.Queue(max_pending + 1)
        self._slots = trio.Semaphore(max_pending)
        self._reader_count = readers
        # a free read slot: its connection, or None when it must (re)connect first
        self._readers: queue.SimpleQueue[Conn | None] = queue.SimpleQueue()
        self._read_limiter = trio.CapacityLimiter(readers)
        self._thread: threading.Thread | None = None
        self._searcher: Searcher[queue.SimpleQueue[Conn | None]] | None = None
        self._closed = trio.Event()
        self._write_problem: str | None = None
        # this store's name in the webhook scanner's lease (webhooks.py): one per node
        self._webhook_owner = secrets.token_hex(8)

    # --- health ---------------------------------------------------------------------------------
    def problem(self) -> str | None:
        """Why the store cannot reach PostgreSQL now, or None while it can: the writer's view
        (it checks the connection every `probe_interval` while idle); a read that fails raises
        StoreError and is retried by its caller, without refusing messages on its own."""
        return self._write_problem

    def _report(self, reason: str | None) -> None:
        self._write_problem = reason  # one assignment: safe from the writer thread

    # --- connections ----------------------------------------------------------------------------
    def _connect(self) -> Conn:
        return psycopg.connect(
            self.url,
            connect_timeout=max(1, round(self.connect_timeout)),
            application_name="relay",
        )

    def _connect_reader(self) -> Conn:
        conn = self._connect()
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        return conn

    # --- lifecycle ------------------------------------------------------------------------------
    async def open(self) -> None:
        if self._state == "open":
            return
        if self._state != "new":
            raise StoreError("a closed PostgresStore cannot be opened again; make a new one")
        token = trio.lowlevel.current_trio_token()
        try:
            writer_conn = await trio.to_thread.run_sync(self._open_sync)
        except SchemaMismatch as exc:
            raise StoreUnavailable(f"cannot use the PostgreSQL database: {exc}") from None
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot open the PostgreSQL store: {describe(exc)}") from None
        for _ in range(self._reader_count):
            self._readers.put(None)
        own: queue.SimpleQueue[Conn | None] = queue.SimpleQueue()  # the searcher's one slot
        own.put(None)
        self._searcher = Searcher(
            own, self._read_from, _close_slots, name="relay-postgres-searcher"
        )
        self._searcher.start()
        writer = Writer(
            connect=self._connect,
            requests=self._requests,
            token=token,
            resolve=self._resolve,
            report=self._report,
            commit_interval=self.commit_interval,
            max_batch=self.max_batch,
            retention=self.retention,
            probe_interval=self.probe_interval,
            conn=writer_conn,
        )
        self._thread = threading.Thread(
            target=writer.run, name="relay-postgres-writer", daemon=True
        )
        self._thread.start()
        self._state = "open"

    def _open_sync(self) -> Conn:
        conn = self._connect()
        try:
            version = migrate(conn)
        except BaseException:
            conn.close()
            raise
        if version == 0:
            log.info("created the relay schema in PostgreSQL")
        try:
            filled = searches.backfill(conn)
        except BaseException:
            conn.close()
            raise
        if filled:
            log.info("computed the search vectors of %d stored messages", filled)
        return conn

    async def close(self) -> None:
        if self._state == "closing":
            await self._closed.wait()
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closing"
        self._requests.put_nowait(STOP)  # room guaranteed: the semaphore holds back one slot
        assert self._thread is not None
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._thread.join)
            if self._searcher is not None:
                await self._searcher.stop()
            borrowers = [object() for _ in range(self._reader_count)]
            for borrower in borrowers:  # every read connection is back in the pool
                await self._read_limiter.acquire_on_behalf_of(borrower)
            _close_slots(self._readers)
            for borrower in borrowers:
                self._read_limiter.release_on_behalf_of(borrower)
        self._state = "closed"
        self._closed.set()

    def _check_open(self) -> None:
        if self._state != "open":
            raise StoreError(f"the store is {self._state}, not open")

    # --- plumbing -------------------------------------------------------------------------------
    async def _write(
        self,
        work: Callable[[Conn], T],
        weight: int = 1,
        messages: Sequence[NewMessage] | None = None,
        *,
        marks_only: bool = False,
        pipelined: bool = False,
    ) -> T:
        """`marks_only`: the work writes only tables no append touches (writer.MARKS);
        `pipelined`: it may run in pipeline mode (writer.Request.pipelined)."""
        self._check_open()
        await self._slots.acquire()
        if self._state != "open":
            self._slots.release()
            self._check_open()
        locks = _MARKS_ONLY if marks_only else _APPEND if messages is not None else _EVERY
        request = Request(
            work,
            weight,
            messages,
            done=trio.Event(),
            locks=locks,
            pipelined=pipelined or messages is not None,
        )
        self._requests.put_nowait(request)
        await request.done.wait()  # type: ignore[union-attr]
        if request.error is not None:
            raise request.error
        return cast(T, request.result)

    def has_room(self) -> bool:
        """Whether append_soon may be called now: the store is open and a write slot is free."""
        return self._state == "open" and self._slots.value > 0

    def append_soon(self, messages: Sequence[NewMessage], on_done: AppendDone) -> None:
        """append_many without waiting (call only right after has_room() said True); `on_done`
        runs in the Trio thread once the append committed or failed, in queue order."""
        self._check_open()
        self._slots.acquire_nowait()
        batch = list(messages)
        request = Request(
            _append_alone(batch), len(batch), batch, on_done=on_done, locks=_APPEND, pipelined=True
        )
        self._requests.put_nowait(request)

    def _resolve(self, batch: list[Request]) -> None:
        for request in batch:
            self._slots.release()
            if request.on_done is None:
                request.done.set()  # type: ignore[union-attr]
                continue
            try:
                request.on_done(request.result, request.error)
            except Exception:
                log.exception("a store callback failed")

    async def _read(self, work: Callable[..., T], *args: Any) -> T:
        self._check_open()
        return await trio.to_thread.run_sync(
            self._read_sync, work, args, limiter=self._read_limiter
        )

    def _read_sync(self, work: Callable[..., T], args: tuple[Any, ...]) -> T:
        return self._read_from(self._readers, work, args)

    async def _search(
        self, work: Callable[..., T], *args: Any, then: Callable[[T], None] | None = None
    ) -> T:
        self._check_open()
        assert self._searcher is not None
        return await self._searcher.run(work, *args, then=then)

    def _read_from(
        self, slots: queue.SimpleQueue[Conn | None], work: Callable[..., T], args: tuple[Any, ...]
    ) -> T:
        """`work(conn, *args)` in one read transaction on a connection of `slots` (the pool's:
        the limiter guarantees a slot while open; the searcher's one)."""
        try:
            conn = slots.get_nowait()
        except queue.Empty:
            raise StoreError("the store is closed") from None
        try:
            # a pooled connection found dead (PostgreSQL restarted, the connection cut) is
            # replaced and the read made again once: a read changes nothing
            for attempt in (1, 2):
                fresh = conn is None or conn.closed
                if conn is None or conn.closed:
                    conn = self._connect_reader()
                try:
                    with conn.transaction():
                        result = work(conn, *args)
                except psycopg.OperationalError:
                    with contextlib.suppress(Exception):
                        conn.close()
                    conn = None
                    if fresh or attempt == 2:
                        raise
                    continue
                return result
            raise AssertionError("unreachable")
        except psycopg.Error as exc:
            reason = describe(exc)
            if conn is not None and conn.broken:
                with contextlib.suppress(Exception):
                    conn.close()
                conn = None
            raise StoreError(f"store read failed: {reason}") from exc
        finally:
            slots.put(conn)

    # --- messages -------------------------------------------------------------------------------
    async def append_many(self, messages: Sequence[NewMessage]) -> list[Appended]:
        if not messages:
            self._check_open()
            return []
        batch = list(messages)
        return await self._write(_append_alone(batch), len(batch), batch)

    async def history(
        self,
        conversation: str,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int = 50,
    ) -> tuple[list[StoredMessage], bool]:
        return await self._read(reads.history, conversation, before, after, limit)

    async def undelivered(
        self, user_id: str, device_id: str, *, limit: int = 1000
    ) -> list[StoredMessage]:
        return await self._read(reads.undelivered, user_id, device_id, limit)

    async def register_device(self, user_id: str, device_id: str) -> None:
        await self._write(lambda conn: writes.register_device(conn, user_id, device_id))

    async def latest_by_sender(
        self, conversation: str, after_seq: int, upto_seq: int, exclude_sender: str
    ) -> list[StoredMessage]:
        return await self._read(
            reads.latest_by_sender, conversation, after_seq, upto_seq, exclude_sender
        )

    async def latest_by_sender_many(
        self, queries: Sequence[tuple[str, int, int, str]]
    ) -> list[list[StoredMessage]]:
        if not queries:
            self._check_open()
            return []
        return await self._read(reads.latest_by_sender_many, list(queries))

    async def last_seq(self, conversation: str) -> int:
        return await self._read(reads.last_seq, conversation)

    # --- watermarks -----------------------------------------------------------------------------
    async def mark_delivered(
        self, conversation: str, user_id: str, device_id: str, seq: int
    ) -> Watermarks:
        return await self._write(
            lambda conn: writes.mark_delivered(conn, conversation, user_id, device_id, seq),
            marks_only=True,
            pipelined=True,
        )

    async def mark_delivered_many(
        self, marks: Sequence[tuple[str, str, str, int]]
    ) -> list[Watermarks]:
        if not marks:
            self._check_open()
            return []
        batch = list(marks)
        return await self._write(
            lambda conn: writes.mark_delivered_many(conn, batch),
            len(batch),
            marks_only=True,
            pipelined=True,
        )

    async def mark_read(self, conversation: str, user_id: str, seq: int) -> Watermarks:
        return await self._write(
            lambda conn: writes.mark_read(conn, conversation, user_id, seq),
            marks_only=True,
            pipelined=True,
        )

    async def member_watermarks(self, conversation: str) -> dict[str, Watermarks]:
        return await self._read(reads.member_watermarks, conversation)

    async def coverage(self, sender_id: str, *, limit: int) -> list[Coverage]:
        return await self._read(reads.coverage, sender_id, limit)

    # --- conversation list ----------------------------------------------------------------------
    async def conversations(self, user_id: str, *, limit: int = 100) -> list[ConversationSummary]:
        return await self._read(reads.conversations, user_id, limit)

    async def contacts(self, user_id: str) -> set[str]:
        return await self._read(reads.contacts, user_id)

    # --- groups ---------------------------------------------------------------------------------
    async def create_group(self, group: Group) -> Group:
        return await self._write(lambda conn: writes.create_group(conn, group))

    async def get_group(self, group_id: str) -> Group | None:
        return await self._read(reads.get_group, group_id)

    async def set_group_members(self, group_id: str, members: Sequence[str]) -> Group:
        wanted = tuple(members)
        return await self._write(lambda conn: writes.set_group_members(conn, group_id, wanted))

    # --- presence -------------------------------------------------------------------------------
    async def set_last_seen(self, user_id: str, timestamp: str) -> None:
        await self._write(
            lambda conn: writes.set_last_seen(conn, user_id, timestamp),
            marks_only=True,
            pipelined=True,
        )

    async def last_seen(self, user_ids: Sequence[str]) -> dict[str, str]:
        return await self._read(reads.last_seen, tuple(user_ids))

    # --- end-to-end keys (KeyStore; relay.store.postgres.keys) ----------------------------------
    async def publish_keys(self, device: DeviceKeys) -> None:
        await self._write(lambda conn: keys.publish(conn, device), marks_only=True)

    async def device_keys(self, user_id: str) -> list[DeviceKeys]:
        return await self._read(keys.device_keys, user_id)

    # --- webhooks (WebhookOutbox; relay.store.postgres.webhooks) --------------------------------
    # the lease-taking calls are writes: one node at a time scans and sends (webhooks.py)
    async def webhook_start(self) -> None:
        await self._write(webhooks.start, marks_only=True)

    async def webhook_candidates(self, *, limit: int) -> list[WebhookCandidate]:
        owner = self._webhook_owner
        return await self._write(
            lambda conn: webhooks.candidates(conn, owner, limit), marks_only=True
        )

    async def webhook_advance(
        self, position: int, events: Sequence[OutboxEvent], *, max_pending: int
    ) -> int:
        owner, batch = self._webhook_owner, list(events)
        return await self._write(
            lambda conn: webhooks.advance(conn, owner, position, batch, max_pending),
            marks_only=True,
        )

    async def webhook_due(self, now: float, *, limit: int) -> list[OutboxEvent]:
        owner = self._webhook_owner
        return await self._write(
            lambda conn: webhooks.due(conn, owner, now, limit), marks_only=True
        )

    async def webhook_settle(
        self, removed: Sequence[str], retried: Sequence[tuple[str, float]]
    ) -> None:
        gone, later = list(removed), list(retried)
        await self._write(lambda conn: webhooks.settle(conn, gone, later), marks_only=True)

    async def webhook_pending(self) -> tuple[int, float | None]:
        return await self._read(webhooks.pending)

    # --- search (Searchable; relay.store.postgres.search) ---------------------------------------
    async def search(
        self,
        user_id: str,
        query: SearchQuery,
        *,
        conversation: str | None = None,
        before: int | None = None,
        limit: int = 20,
    ) -> SearchPage:
        return await self._search(searches.search, user_id, query, conversation, before, limit)

    async def search_marked(
        self,
        user_id: str,
        query: SearchQuery,
        *,
        conversation: str | None = None,
        before: int | None = None,
        limit: int = 20,
        then: Callable[[Marked], None] | None = None,
    ) -> Marked:
        """relay.core.search.SearchesMarked: the page and its statuses' watermarks, one read."""
        return await self._search(
            searches.search_marked, user_id, query, conversation, before, limit, then=then
        )


def _append_alone(batch: list[NewMessage]) -> Callable[[Conn], list[Appended]]:
    """An append request's own work (the writer runs appends together, through append_batch;
    this is what the request is, for symmetry with the other writes)."""

    def work(conn: Conn) -> list[Appended]:
        row = conn.execute("SELECT last_pos FROM positions FOR UPDATE").fetchone()
        assert row is not None
        answers, _ = append_batch(conn, int(row[0]), [batch])
        return answers[0]

    return work


def _close_slots(slots: queue.SimpleQueue[Conn | None]) -> None:
    """Close every connection `slots` holds (a slot may hold none)."""
    while True:
        try:
            conn = slots.get_nowait()
        except queue.Empty:
            return
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
