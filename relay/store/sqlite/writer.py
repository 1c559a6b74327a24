"""The writer thread: it owns the write connection, does every write, and commits in groups.

Trio tasks hand it `Request`s through a bounded queue.Queue (the store's trio.Semaphore keeps
one slot free, so a put from the event loop never blocks) and learn the outcome through
`TrioToken.run_sync_soon`: an awaited write's trio.Event, or append_soon's callback.

Group commit: the writer takes everything queued (up to `max_batch` messages), waiting at most
`commit_interval` for more only while such waits bring more (`Writer._gather`), and runs it in
one transaction. The batch's appends go first, together (`appends.append_fused`: multi-row
INSERTs in one SAVEPOINT); if any row was not inserted (a duplicate, a taken seq) or a statement
failed, that savepoint is undone and every request runs alone, each inside its own SAVEPOINT, so
that one request's failure (a taken group id, a message too big for the disk) does not undo the
others. The batch's requests were all pending at once, so running its appends before its other
writes is a valid order.

Invariants:
- results are handed back only after COMMIT: `append_many` returns, and `sent` is answered,
  only once the messages are durable (WAL with synchronous=NORMAL: a committed transaction
  survives the process being killed, not necessarily a power loss);
- a request whose transaction did not commit (disk full, I/O error, lock timeout) fails with
  StoreError, and nothing it asked for is reported as done; every request is answered, even
  when the writer fails or stops (what is queued then fails with "the store is closed");
- seq comes from `conversations.last_seq`, advanced inside the transaction, so it is gapless
  and never reused across restarts and retention (and with a second process on the file:
  SQLite's write lock serialises the transactions). The writer remembers the last_seqs it
  committed; that copy is used only while `PRAGMA data_version` (read inside the write
  transaction) shows no other connection committed since, and the unique (conversation, seq)
  index refuses a stale one anyway (the batch then runs request by request);
- retention (relay/store/retention.py) runs here between batches, when no request waits,
  never inside an append;
- the search indexer (sqlite/indexer.py) indexes a batch's new messages inside the batch's
  transaction once the index has caught up (a step that fails is undone alone and left to
  the catch-up); an unindexed tail is indexed between batches, in transactions of its own;
- after each commit the writer nudges the checkpointer (checkpointer.py), and never
  checkpoints itself beyond SQLite's automatic bound.

Metrics (`stats`, observed in this thread only): each committed batch's size (requests weighted
as for `max_batch`) and its transaction's seconds, BEGIN to COMMIT; a failed transaction counts in
`store_failures` and is one WARNING line on `relay.store` (the SQLite error, never a message's
content).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

import trio
from attrs import define, field

from relay.errors import StoreError
from relay.metrics import Stats
from relay.store.base import NewMessage
from relay.store.retention import RetentionJob
from relay.store.sqlite.appends import append_fused
from relay.store.sqlite.checkpointer import Checkpointer
from relay.store.sqlite.indexer import SearchIndexer
from relay.store.sqlite.rows import describe

log = logging.getLogger("relay.store")


@define(eq=False)
class Request:
    """One write: `work` runs in the writer thread inside the batch transaction."""

    work: Callable[[sqlite3.Connection], Any]
    weight: int  # messages it appends (1 for other writes): what `max_batch` counts
    # set for an append: its messages, which the writer may store together with other appends'
    # (`work` does the same alone)
    messages: Sequence[NewMessage] | None = None
    # how the Trio side learns the outcome: an awaited write's event, or append_soon's callback
    done: trio.Event | None = None
    on_done: Callable[[Any, BaseException | None], None] | None = None
    result: Any = None
    error: BaseException | None = None


#: what close() queues behind every request: the writer stops once it reaches it
STOP: Final = object()
_PROBE_EVERY: Final = 16  # batches between trial waits while waiting does not pay


@define(eq=False)
class Writer:
    """The loop of the writer thread (`run`): batches of requests, each one transaction,
    answered through `resolve` in the Trio thread; retention chunks when idle and due."""

    conn: sqlite3.Connection
    requests: queue.Queue[Request | object]
    token: trio.lowlevel.TrioToken
    resolve: Callable[[list[Request]], None]  # runs in the Trio thread
    commit_interval: float
    max_batch: int
    retention: RetentionJob
    checkpointer: Checkpointer | None = None
    stats: Stats = field(factory=Stats)
    indexer: SearchIndexer = field(factory=SearchIndexer)
    _wait_pays: bool = field(default=True, init=False)  # the last wait brought requests
    # conversation -> its committed last_seq, as of `_data_version`; only this connection
    # writes in between (another connection's commit changes data_version, and then it is dropped)
    _known: dict[str, int] = field(factory=dict, init=False)
    _data_version: int = field(default=-1, init=False)
    _since_wait: int = field(default=0, init=False)  # batches since the last wait
    _stepped: bool = field(default=False, init=False)  # the last batch indexed its messages

    def run(self) -> None:
        try:
            try:
                self.indexer.start(self.conn)
            except sqlite3.Error as exc:  # left pending: the catch-up finds out what is indexed
                log.warning("cannot read the search index's progress: %s", describe(exc))
            while True:
                retention_due = self.retention.seconds_until_due()
                try:
                    first = self.requests.get(timeout=self.indexer.timeout(retention_due))
                except queue.Empty:
                    if self.retention.seconds_until_due() == 0:
                        self._retention()
                    else:
                        self._index()
                    continue
                if first is STOP:
                    return
                batch, stop = self._gather(cast(Request, first))
                self._stepped = False
                self._execute(batch)
                appended = sum(r.weight for r in batch if r.messages is not None)
                self.indexer.appended(appended, self._stepped)
                if stop:
                    return
                if self.retention.seconds_until_due() == 0 and self.requests.empty():
                    self._retention()
                elif size := self.indexer.after_batch(appended):
                    self._index(size)
        finally:
            self._fail_queued()
            self.conn.close()

    def _gather(self, first: Request) -> tuple[list[Request], bool]:
        """`first` and everything queued after it, up to `max_batch` messages; then, if waiting
        pays, up to `commit_interval` more for further requests.

        Waiting pays when requests arrive during the wait. When every writer is already in the
        batch (each awaits its result before writing again), nothing can arrive and the wait is
        pure latency: after a wait that brought nothing the writer stops waiting, and tries a
        wait again every `_PROBE_EVERY` batches.
        """
        batch = [first]
        weight = first.weight
        stop = False

        def take(item: object) -> None:
            nonlocal weight, stop
            if item is STOP:
                stop = True
            else:
                request = cast(Request, item)
                batch.append(request)
                weight += request.weight

        while weight < self.max_batch and not stop:
            try:
                take(self.requests.get_nowait())
            except queue.Empty:
                break
        self._since_wait += 1
        if stop or weight >= self.max_batch or self.commit_interval <= 0:
            return batch, stop
        if not self._wait_pays and self._since_wait < _PROBE_EVERY:
            return batch, stop
        self._since_wait = 0
        before = len(batch)
        until = time.monotonic() + self.commit_interval
        while weight < self.max_batch and not stop:
            remaining = until - time.monotonic()
            if remaining <= 0:
                break
            try:
                take(self.requests.get(timeout=remaining))
            except queue.Empty:
                break
        self._wait_pays = len(batch) > before
        return batch, stop

    def _execute(self, batch: list[Request]) -> None:
        stats = self.stats
        failures = stats.store_failures
        began = time.monotonic()
        try:
            self._transaction(batch)
            if stats.store_failures == failures:  # committed (or had nothing to commit)
                stats.commit_seconds.observe(time.monotonic() - began)
                stats.commit_size.observe(sum(r.weight for r in batch))
        except BaseException as exc:  # a bug here must not leave Trio tasks waiting forever
            self.indexer.rolled_back()
            for request in batch:
                if request.error is None:
                    request.result = None
                    request.error = StoreError(f"store write failed: {exc!r}")
            if not isinstance(exc, Exception):
                raise
            log.exception("store writer failed a batch")
        finally:
            self._hand_back(batch)

    def _transaction(self, batch: list[Request]) -> None:
        conn = self.conn
        if conn.in_transaction:  # left open by a failed ROLLBACK: start from a clean slate
            conn.execute("ROLLBACK")
        done: list[Request] = []  # requests whose work stands in the open transaction
        pending = list(batch)
        staged: dict[str, int] | None = None  # last_seqs the fused appends leave, if they stand
        began = False  # a transaction is open (with `done` in it) that the loop must finish
        appends = [r for r in batch if r.messages is not None]
        if appends:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self._fail(pending, f"could not start a write: {describe(exc)}")
                return
            began = True
            staged = self._fused(appends)
            if staged is not None:
                done = appends
                pending = [r for r in batch if r.messages is None]
            elif not conn.in_transaction:
                began = False
        while pending or began:
            if not began:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:
                    self._fail(pending, f"could not start a write: {describe(exc)}")
                    return
            began = False
            while pending:
                request = pending.pop(0)
                if request.messages is not None:
                    staged = None  # appended one by one: the counters cached may be behind
                    self._known.clear()
                try:
                    conn.execute("SAVEPOINT request")
                    request.result = request.work(conn)
                    conn.execute("RELEASE request")
                    done.append(request)
                except Exception as exc:
                    request.result = None
                    request.error = (
                        exc
                        if isinstance(exc, StoreError)
                        else StoreError(
                            describe(exc) if isinstance(exc, sqlite3.Error) else repr(exc)
                        )
                    )
                    if conn.in_transaction:
                        try:
                            conn.execute("ROLLBACK TO request")
                            conn.execute("RELEASE request")
                        except sqlite3.Error:
                            conn.execute("ROLLBACK")
                    if not conn.in_transaction:
                        # SQLite undid the whole transaction (disk full, I/O error): nothing done
                        # in it stands. The requests before this one run again (one by one) in
                        # a new transaction; this one has failed. Each round drops one request,
                        # so it ends.
                        for earlier in done:
                            earlier.result = None
                        pending[:0] = done
                        done = []
                        staged = None
                        break
            else:
                appended = sum(r.weight for r in done if r.messages is not None)
                if appended and self.indexer.steps():
                    # the fused appends stand (`done` holds them first, in order, then the
                    # other writes): their messages took the positions in that order
                    fresh = (
                        [
                            (m.text, m.conversation)
                            for r in done
                            if r.messages is not None
                            for m in r.messages
                        ]
                        if staged is not None
                        else None
                    )
                    if not self.indexer.in_transaction(conn, appended, fresh):
                        self._known.clear()  # SQLite undid the transaction: nothing stands
                        self._fail(done, "the search index could not be written")
                        return
                    self._stepped = True
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    self.indexer.rolled_back()
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    self._known.clear()
                    self._fail(done, f"commit failed: {describe(exc)}")
                    return
                self.indexer.committed()
                if staged is not None:
                    self._known.update(staged)
                if self.checkpointer is not None:
                    self.checkpointer.nudge()
                return

    def _fused(self, appends: list[Request]) -> dict[str, int] | None:
        """Run the append requests together inside the open transaction, in a savepoint. On
        success their results are set and the conversations' new last_seqs returned; otherwise
        nothing of it stands (the transaction may be gone, if SQLite undid it) and None."""
        conn = self.conn
        try:
            (version,) = conn.execute("PRAGMA data_version").fetchone()
            if version != self._data_version:  # another connection committed: counters may move
                self._known.clear()
                self._data_version = version
            conn.execute("SAVEPOINT fused")
            outcome = append_fused(
                conn, [cast(Sequence[NewMessage], r.messages) for r in appends], self._known
            )
            if outcome is None:
                conn.execute("ROLLBACK TO fused")
            conn.execute("RELEASE fused")
        except Exception:  # the requests run one by one next, which sorts out whose fault it was
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK TO fused")
                    conn.execute("RELEASE fused")
                except sqlite3.Error:
                    conn.execute("ROLLBACK")
            return None
        if outcome is None:
            return None
        answers, tips = outcome
        for request, results in zip(appends, answers, strict=True):
            request.result = results
        return tips

    def _fail(self, requests: list[Request], reason: str) -> None:
        self.stats.store_failures += 1
        log.warning("store write of %d request(s) failed: %s", len(requests), reason)
        for request in requests:
            request.result = None
            request.error = StoreError(reason)

    def _hand_back(self, batch: list[Request]) -> None:
        with contextlib.suppress(trio.RunFinishedError):  # else nobody is waiting any more
            self.token.run_sync_soon(self.resolve, batch)

    def _retention(self) -> None:
        try:
            gone = self.retention.run_chunk(self.conn)
        except sqlite3.Error as exc:
            log.warning("retention failed, retrying later: %s", describe(exc))
            return
        if gone:
            log.info("retention deleted %d messages", gone)

    def _index(self, size: int | None = None) -> None:
        try:
            self.indexer.run_chunk(self.conn, size)
        except sqlite3.Error as exc:
            log.warning("search indexing failed, retrying later: %s", describe(exc))

    def _fail_queued(self) -> None:
        left: list[Request] = []
        while True:
            try:
                item = self.requests.get_nowait()
            except queue.Empty:
                break
            if item is not STOP:
                left.append(cast(Request, item))
        if left:
            self._fail(left, "the store is closed")
            self._hand_back(left)
