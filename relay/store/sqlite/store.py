"""SqliteStore: the Store on one SQLite file, as the Trio side sees it.

Writes go to the writer thread (writer.py) as Requests through a bounded queue: `_slots`, a
trio.Semaphore of `max_pending`, is taken before a request is queued and given back when it is
answered, so the queue (one slot larger, for close's STOP) is never full and the event loop
never blocks putting to it. Reads run on a pool of read-only connections in Trio worker threads
(`trio.to_thread.run_sync`, at most `readers` at once), each inside one read transaction;
searches run one at a time on a read connection of their own, in the searcher's thread
(relay/store/searcher.py). The event loop never waits on the database.

Invariants:
- every call between open() and close() comes from one Trio run: the writer answers through
  that run's TrioToken;
- an awaited write returns, and append_soon's callback runs, only once its transaction
  committed or failed (writer.py);
- close() is a bounded flush that completes even when its caller is cancelled: the writer
  answers everything queued before STOP, then every read connection is back and closed.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import trio

import relay.store.sqlite.reads as reads
import relay.store.sqlite.search as searches
import relay.store.sqlite.webhooks as webhooks
import relay.store.sqlite.writes as writes
from relay.errors import StoreError
from relay.metrics import RelayMetrics, Stats
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
from relay.store.retention import RetentionJob
from relay.store.searcher import Searcher
from relay.store.sqlite.appends import append
from relay.store.sqlite.checkpointer import Checkpointer
from relay.store.sqlite.connect import Connector
from relay.store.sqlite.indexer import SearchIndexer
from relay.store.sqlite.rows import describe
from relay.store.sqlite.writer import STOP, Request, Writer

log = logging.getLogger("relay.store")

T = TypeVar("T")


class SqliteStore:
    """The durable Store on one SQLite file. `open()` before use, `close()` after (idempotent);
    every call between them from the same Trio run (the writer answers through its TrioToken).

    `commit_interval`: how long the writer waits for more requests before committing a batch.
    `busy_timeout`: how long a write waits for a lock held by another process before failing.
    `max_batch`: messages per transaction at most. `max_pending`: write requests queued at most
    (further writers wait in Trio). `readers`: read connections (and worker threads) at most.
    `pragmas`: extra `PRAGMA name = value` for every connection, applied after migration (e.g.
    `cache_size`, or `max_page_count` to bound the file size). `check_on_open`: run SQLite's
    `quick_check` at open, so a corrupt file is refused then rather than failing writes later
    (it reads the whole file: about 0.2 s per 100 MB when cached). `checkpoint_interval`: how
    often at most a background thread copies committed WAL pages into the database file
    (checkpointer.py), so that commits never wait for a checkpoint; None leaves it to the writer's
    automatic checkpoint alone.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        commit_interval: float = 0.002,
        busy_timeout: float = 5.0,
        max_batch: int = 2000,
        max_pending: int = 10_000,
        readers: int = 2,
        retention_days: float | None = None,
        retention_max_messages: int | None = None,
        retention_interval: float = 60.0,
        pragmas: Sequence[tuple[str, int | str]] = (),
        check_on_open: bool = True,
        checkpoint_interval: float | None = 0.05,
    ) -> None:
        if checkpoint_interval is not None and checkpoint_interval < 0:
            raise ValueError("checkpoint_interval must be >= 0 (or None)")
        self.path = os.fspath(path)
        self.checkpoint_interval = checkpoint_interval
        self.commit_interval = commit_interval
        self.busy_timeout = busy_timeout
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.retention = RetentionJob(
            retention_days, retention_max_messages, interval=retention_interval
        )
        # the writer's search indexer (sqlite/indexer.py); its settings may be changed before open
        self.indexer = SearchIndexer()
        self._pragmas = tuple(pragmas)
        self.check_on_open = check_on_open
        self._state = "new"  # new -> open -> closing -> closed
        self._requests: queue.Queue[Request | object] = queue.Queue(max_pending + 1)
        self._slots = trio.Semaphore(max_pending)
        self._reader_count = readers
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._read_limiter = trio.CapacityLimiter(readers)
        self._thread: threading.Thread | None = None
        self._searcher: Searcher[sqlite3.Connection] | None = None
        self._checkpointer: Checkpointer | None = None
        self._checkpoint_thread: threading.Thread | None = None
        self._closed = trio.Event()
        self.stats = Stats()  # commit sizes and times; a relay's own once `instrument`ed
        self._writer: Writer | None = None

    def instrument(self, metrics: RelayMetrics) -> None:
        """relay.metrics.Instrumented: the writer counts into the relay's metrics."""
        self.stats = metrics.stats
        if self._writer is not None:
            self._writer.stats = metrics.stats

    # --- lifecycle ------------------------------------------------------------------------------
    async def open(self) -> None:
        if self._state == "open":
            return
        if self._state != "new":
            raise StoreError("a closed SqliteStore cannot be opened again; make a new one")
        token = trio.lowlevel.current_trio_token()
        connector = Connector(self.path, self.busy_timeout, self._pragmas, self.check_on_open)
        connections = await trio.to_thread.run_sync(
            connector.connect, self._reader_count + 1, self.checkpoint_interval is not None
        )
        readers = list(connections.readers)
        self._searcher = Searcher(
            readers.pop(), _read_on, sqlite3.Connection.close, name="relay-sqlite-searcher"
        )
        self._searcher.start()
        checkpointer = None
        if connections.checkpoint is not None:
            assert self.checkpoint_interval is not None
            checkpointer = self._checkpointer = Checkpointer(
                connections.checkpoint, self.checkpoint_interval
            )
            self._checkpoint_thread = threading.Thread(
                target=checkpointer.run, name="relay-sqlite-checkpointer", daemon=True
            )
            self._checkpoint_thread.start()
        for reader in readers:
            self._readers.put(reader)
        # the writer deletes messages (retention): the search index's trigger needs these
        searches.register_functions(connections.writer)
        writer = Writer(
            conn=connections.writer,
            requests=self._requests,
            token=token,
            resolve=self._resolve,
            commit_interval=self.commit_interval,
            max_batch=self.max_batch,
            retention=self.retention,
            checkpointer=checkpointer,
            stats=self.stats,
            indexer=self.indexer,
        )
        self._writer = writer
        self._thread = threading.Thread(target=writer.run, name="relay-sqlite-writer", daemon=True)
        self._thread.start()
        self._state = "open"

    async def close(self) -> None:
        if self._state == "closing":
            await self._closed.wait()
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closing"
        self._requests.put_nowait(STOP)  # room guaranteed: the semaphore holds back one slot
        assert self._thread is not None
        # Closing is a bounded flush (what is queued, then the readers in flight); it completes
        # even when the caller is being cancelled, so nothing queued is left unanswered.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._thread.join)
            if self._checkpointer is not None and self._checkpoint_thread is not None:
                self._checkpointer.stop()
                await trio.to_thread.run_sync(self._checkpoint_thread.join)
            if self._searcher is not None:
                await self._searcher.stop()
            borrowers = [object() for _ in range(self._reader_count)]
            for borrower in borrowers:  # every read connection is back in the pool
                await self._read_limiter.acquire_on_behalf_of(borrower)
            while True:
                try:
                    self._readers.get_nowait().close()
                except queue.Empty:
                    break
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
        work: Callable[[sqlite3.Connection], T],
        weight: int = 1,
        messages: Sequence[NewMessage] | None = None,
    ) -> T:
        self._check_open()
        await self._slots.acquire()
        if self._state != "open":
            self._slots.release()
            self._check_open()
        request = Request(work, weight, messages, done=trio.Event())
        self._requests.put_nowait(request)
        await request.done.wait()  # type: ignore[union-attr]
        if request.error is not None:
            raise request.error
        return cast(T, request.result)

    def has_room(self) -> bool:
        """Whether append_soon may be called now: the store is open and a write slot is free."""
        return self._state == "open" and self._slots.value > 0

    def append_soon(self, messages: Sequence[NewMessage], on_done: AppendDone) -> None:
        """append_many without waiting (call only right after has_room() said True): the
        append is queued behind every write queued before it, and `on_done(results, None)`, or
        `on_done(None, error)` with a StoreError, runs in the Trio thread once it committed or
        failed. Appends queued by one caller complete in the order they were queued."""
        self._check_open()
        self._slots.acquire_nowait()  # trio.WouldBlock: the caller did not ask has_room()
        batch = list(messages)
        request = Request(lambda conn: append(conn, batch), len(batch), batch, on_done=on_done)
        self._requests.put_nowait(request)

    def _resolve(self, batch: list[Request]) -> None:
        for request in batch:
            self._slots.release()
            if request.on_done is None:
                request.done.set()  # type: ignore[union-attr]
                continue
            try:
                request.on_done(request.result, request.error)
            except Exception:  # it runs in the run loop itself: a failure must stop here
                log.exception("a store callback failed")

    async def _read(self, work: Callable[..., T], *args: Any) -> T:
        self._check_open()
        return await trio.to_thread.run_sync(
            self._read_sync, work, args, limiter=self._read_limiter
        )

    def _read_sync(self, work: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            conn = self._readers.get_nowait()  # the limiter guarantees one is free while open
        except queue.Empty:
            raise StoreError("the store is closed") from None
        try:
            return _read_on(conn, work, args)
        finally:
            self._readers.put(conn)

    async def _search(
        self, work: Callable[..., T], *args: Any, then: Callable[[T], None] | None = None
    ) -> T:
        self._check_open()
        assert self._searcher is not None
        return await self._searcher.run(work, *args, then=then)

    # --- messages -------------------------------------------------------------------------------
    async def append_many(self, messages: Sequence[NewMessage]) -> list[Appended]:
        if not messages:
            self._check_open()
            return []
        batch = list(messages)
        return await self._write(lambda conn: append(conn, batch), len(batch), batch)

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
            lambda conn: writes.mark_delivered(conn, conversation, user_id, device_id, seq)
        )

    async def mark_delivered_many(
        self, marks: Sequence[tuple[str, str, str, int]]
    ) -> list[Watermarks]:
        if not marks:
            self._check_open()
            return []
        batch = list(marks)
        return await self._write(
            lambda conn: [writes.mark_delivered(conn, *mark) for mark in batch], len(batch)
        )

    async def mark_read(self, conversation: str, user_id: str, seq: int) -> Watermarks:
        return await self._write(lambda conn: writes.mark_read(conn, conversation, user_id, seq))

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
        await self._write(lambda conn: writes.set_last_seen(conn, user_id, timestamp))

    async def last_seen(self, user_ids: Sequence[str]) -> dict[str, str]:
        return await self._read(reads.last_seen, tuple(user_ids))

    # --- end-to-end keys (relay.store.base.KeyStore) ------------------------------------------------
    async def publish_keys(self, keys: DeviceKeys) -> None:
        await self._write(lambda conn: writes.publish_keys(conn, keys))

    async def device_keys(self, user_id: str) -> list[DeviceKeys]:
        return await self._read(reads.device_keys, user_id)

    # --- webhooks (WebhookOutbox; relay.store.sqlite.webhooks) ----------------------------------
    async def webhook_start(self) -> None:
        await self._write(webhooks.start)

    async def webhook_candidates(self, *, limit: int) -> list[WebhookCandidate]:
        return await self._read(webhooks.candidates, limit)

    async def webhook_advance(
        self, position: int, events: Sequence[OutboxEvent], *, max_pending: int
    ) -> int:
        batch = list(events)
        return await self._write(lambda conn: webhooks.advance(conn, position, batch, max_pending))

    async def webhook_due(self, now: float, *, limit: int) -> list[OutboxEvent]:
        return await self._read(webhooks.due, now, limit)

    async def webhook_settle(
        self, removed: Sequence[str], retried: Sequence[tuple[str, float]]
    ) -> None:
        gone, later = list(removed), list(retried)
        await self._write(lambda conn: webhooks.settle(conn, gone, later))

    async def webhook_pending(self) -> tuple[int, float | None]:
        return await self._read(webhooks.pending)

    # --- search (Searchable) ---------------------------------------------------------------------
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


def _read_on(conn: sqlite3.Connection, work: Callable[..., T], args: tuple[Any, ...]) -> T:
    """`work(conn, *args)` inside one read transaction (one snapshot for the whole read)."""
    try:
        conn.execute("BEGIN")
        try:
            return work(conn, *args)
        finally:
            conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StoreError(f"store read failed: {describe(exc)}") from exc
