"""The writer thread: it owns the write connection, does every write, and commits in groups.

Trio tasks hand it `Request`s through a bounded queue.Queue (the store's trio.Semaphore keeps
one slot free, so a put from the event loop never blocks) and learn the outcome through
`TrioToken.run_sync_soon`, as the SQLite writer does (relay/store/sqlite/writer.py).

Group commit: the writer takes everything queued (up to `max_batch` messages), waits at most
`commit_interval` for more while such waits bring more, and runs the batch in two transactions.
The first, of the appends and the writes of the tables appends touch: `SELECT ... FROM
positions FOR UPDATE` — the cluster-wide write lock of those tables, taken first by every such
transaction of every node, so they queue on it and never deadlock — then every append together
(appends.append_batch, in a SAVEPOINT; if that fails, each append request alone in its own),
then each other write in its own SAVEPOINT, so one request's failure (a taken group id) undoes
only it. The second, of the writes no append touches (delivery marks, lastSeen, keys, webhooks):
under the `marks` lock instead (see POSITIONS below), so on a loaded cluster the marks of every
node never wait for, nor hold up, the appends.

PIPELINE: a part whose requests are all `pipelined` (appends; delivery and read marks,
lastSeen) runs first in psycopg's pipeline mode, without a SAVEPOINT per request: statements
are sent without waiting for each one's answer, and fetched only where the next step needs
them. An append batch is two round trips to PostgreSQL, (BEGIN, the lock, the lookups) then
(the one write, COMMIT), where the slow way takes ten or eleven; a marks batch is one round
trip per round of marks (writes.mark_delivered_many) plus the COMMIT. Measured on one store,
one message per batch, writer-thread CPU: appends 875 -> 390 us, delivery marks 690 -> 315 us
(load 3.4-4.7). Statements still run in order, each after the previous one, so a read sent
after the lock runs under it, and `conn.commit()` returns only once COMMIT answered. If a
statement fails, the transaction is rolled back and the part runs again the slow way above,
where a failure undoes only its own request.

Invariants:
- results are handed back only after COMMIT returned: `append_many` returns, and `sent` is
  answered, only once the messages are durable in PostgreSQL;
- a batch whose transaction did not commit fails every request in it with StoreError (a commit
  whose outcome is unknown because the connection died is reported failed: the client resends,
  and idempotency on (senderId, id) answers the stored message if it had committed);
- every request is answered, even when the writer fails or stops;
- a lost connection is reported (`report(reason)`), and the writer reconnects by itself: at the
  next request, or within `probe_interval` while idle (when idle it also checks the connection
  every `probe_interval`, so a loss is reported without a write); `report(None)` once back.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

import psycopg
import trio
from attrs import define, field

from relay.errors import StoreError
from relay.store.base import NewMessage
from relay.store.postgres.appends import append_batch, look_up
from relay.store.postgres.retention import PostgresRetention
from relay.store.postgres.rows import Conn, describe

log = logging.getLogger("relay.store")


#: The cluster-wide write locks a request takes, always in this order: `positions` (the row of
#: that table) serialises appends and every write of the tables appends touch; `marks` (the
#: `marks` row of `write_locks`, schema.py) serialises the writes of watermarks, device cursors,
#: lastSeen, keys and webhooks, which no append touches. A batch runs as two transactions: the
#: requests that need `positions` (taking `marks` too when one of them needs it), then the
#: marks-only ones, so delivery marks never hold up appends on any node. No cycle: a holder of
#: `marks` waits on no append, and an append waits on no mark.
POSITIONS: Final = "positions"
MARKS: Final = "marks"
EVERY_LOCK: Final = frozenset({POSITIONS, MARKS})


@define(eq=False)
class Request:
    """One write: `work` runs in the writer thread inside the batch transaction."""

    work: Callable[[Conn], Any]
    weight: int  # messages it appends (1 for other writes): what `max_batch` counts
    messages: Sequence[NewMessage] | None = None  # set for an append
    locks: frozenset[str] = EVERY_LOCK  # the cluster-wide locks it needs (see POSITIONS)
    #: `work` may run in pipeline mode (PIPELINE): it reads no rowcount and needs no SAVEPOINT
    #: of its own to be right (a failed pipelined transaction is run again the slow way)
    pipelined: bool = False
    done: trio.Event | None = None
    on_done: Callable[[Any, BaseException | None], None] | None = None
    result: Any = None
    error: BaseException | None = None


#: what close() queues behind every request: the writer stops once it reaches it
STOP: Final = object()


@define(eq=False)
class Writer:
    """The loop of the writer thread (`run`)."""

    connect: Callable[[], Conn]
    requests: queue.Queue[Request | object]
    token: trio.lowlevel.TrioToken
    resolve: Callable[[list[Request]], None]  # runs in the Trio thread
    report: Callable[[str | None], None]  # the connection's state: None = reachable
    commit_interval: float
    max_batch: int
    retention: PostgresRetention
    probe_interval: float = 1.0
    conn: Conn | None = None
    _broken: bool = field(default=False, init=False)

    def run(self) -> None:
        try:
            while True:
                due = self.retention.seconds_until_due()
                timeout = self.probe_interval if due is None else min(due, self.probe_interval)
                try:
                    first = self.requests.get(timeout=timeout)
                except queue.Empty:
                    self._probe()
                    if self.retention.seconds_until_due() == 0 and not self._broken:
                        self._retention()
                    continue
                if first is STOP:
                    return
                batch, stop = self._gather(cast(Request, first))
                self._execute(batch)
                if stop:
                    return
                if self.retention.seconds_until_due() == 0 and self.requests.empty():
                    self._retention()
        finally:
            self._fail_queued()
            if self.conn is not None:
                with contextlib.suppress(Exception):
                    self.conn.close()

    def _connection(self) -> Conn | None:
        """The write connection, (re)connected if need be; None while PostgreSQL is away."""
        if self.conn is not None and not self.conn.closed:
            return self.conn
        try:
            self.conn = self.connect()
        except psycopg.Error as exc:
            self._lost(describe(exc))
            return None
        if self._broken:
            log.warning("PostgreSQL is reachable again; the store accepts writes")
            self._broken = False
            self.report(None)
        return self.conn

    def _probe(self) -> None:
        """While idle: is PostgreSQL still there (so /healthz says so without a write)?"""
        conn = self._connection()
        if conn is None:
            return
        try:
            with conn.transaction():
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            self._lost(describe(exc))

    def _lost(self, reason: str) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = None
        if not self._broken:
            log.error("PostgreSQL lost, writes fail until it is back: %s", reason)
            self._broken = True
        self.report(reason)

    def _gather(self, first: Request) -> tuple[list[Request], bool]:
        batch = [first]
        weight = first.weight
        stop = False
        until = time.monotonic() + self.commit_interval
        while weight < self.max_batch and not stop:
            try:
                item = self.requests.get_nowait()
            except queue.Empty:
                remaining = until - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self.requests.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is STOP:
                stop = True
            else:
                request = cast(Request, item)
                batch.append(request)
                weight += request.weight
        return batch, stop

    def _execute(self, batch: list[Request]) -> None:
        main = [r for r in batch if POSITIONS in r.locks]
        marks = [r for r in batch if POSITIONS not in r.locks]
        if main:
            self._execute_part(main, self._transaction, self._pipelined_appends)
        if marks:
            self._execute_part(marks, self._marks_transaction, self._pipelined_marks)

    def _execute_part(
        self,
        batch: list[Request],
        transaction: Callable[[Conn, list[Request]], None],
        pipelined: Callable[[Conn, list[Request]], None],
    ) -> None:
        try:
            conn = self._connection()
            if conn is None:
                self._fail(batch, "the store cannot reach PostgreSQL")
                return
            try:
                if all(r.pipelined for r in batch) and self._pipeline(conn, batch, pipelined):
                    return
                transaction(conn, batch)
            except psycopg.Error as exc:
                reason = describe(exc)
                if isinstance(exc, psycopg.OperationalError) or conn.closed or conn.broken:
                    self._lost(reason)
                self._fail(batch, f"store write failed: {reason}")
        except BaseException as exc:  # a bug here must not leave Trio tasks waiting forever
            self._fail(batch, f"store write failed: {exc!r}")
            if not isinstance(exc, Exception):
                raise
            log.exception("store writer failed a batch")
        finally:
            self._hand_back(batch)

    @staticmethod
    def _pipeline(
        conn: Conn, batch: list[Request], transaction: Callable[[Conn, list[Request]], None]
    ) -> bool:
        """`transaction` in pipeline mode (see PIPELINE); False when it failed on a statement
        and was rolled back, so the caller runs the batch again the slow way (each request in
        its own SAVEPOINT). A lost connection raises: the batch fails, as on the slow path."""
        try:
            with conn.pipeline():
                transaction(conn, batch)
        except BaseException as exc:
            # never leave the transaction open (and its locks held) for the next batch
            if not (conn.closed or conn.broken):
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()
            if not isinstance(exc, psycopg.Error) or isinstance(exc, psycopg.OperationalError):
                raise
            if conn.closed or conn.broken:
                raise
            for request in batch:
                request.result = None
                request.error = None
            return False
        return True

    def _pipelined_appends(self, conn: Conn, batch: list[Request]) -> None:
        """Appends alone, as _transaction runs them, in two round trips: (BEGIN, the positions
        lock, the batch's lookups), then (its one write, COMMIT)."""
        requests = [cast(Sequence[NewMessage], r.messages) for r in batch]
        locked = conn.execute("SELECT last_pos FROM positions FOR UPDATE")
        lookups = look_up(conn, requests)  # run by PostgreSQL once the lock is granted
        row = locked.fetchone()
        assert row is not None
        answers, _ = append_batch(conn, int(row[0]), requests, lookups)
        conn.commit()  # in pipeline mode: sends COMMIT and waits for every result
        for request, results in zip(batch, answers, strict=True):
            request.result = results

    @staticmethod
    def _pipelined_marks(conn: Conn, batch: list[Request]) -> None:
        """Marks-only writes, as _marks_transaction runs them, without a SAVEPOINT each: the
        lock and each work's statements are sent as the work needs their results."""
        conn.execute("SELECT 1 FROM write_locks WHERE name = %s FOR UPDATE", (MARKS,))
        for request in batch:
            request.result = request.work(conn)
        conn.commit()

    def _transaction(self, conn: Conn, batch: list[Request]) -> None:
        appends = [r for r in batch if r.messages is not None]
        others = [r for r in batch if r.messages is None]
        with conn.transaction():
            row = conn.execute("SELECT last_pos FROM positions FOR UPDATE").fetchone()
            assert row is not None
            if any(MARKS in r.locks for r in others):
                conn.execute("SELECT 1 FROM write_locks WHERE name = %s FOR UPDATE", (MARKS,))
            if appends:
                self._appends(conn, appends, int(row[0]))
            for request in others:
                self._alone(conn, request, request.work)

    def _marks_transaction(self, conn: Conn, batch: list[Request]) -> None:
        with conn.transaction():
            conn.execute("SELECT 1 FROM write_locks WHERE name = %s FOR UPDATE", (MARKS,))
            for request in batch:
                self._alone(conn, request, request.work)

    def _appends(self, conn: Conn, appends: list[Request], last_pos: int) -> int:
        try:
            with conn.transaction():
                answers, pos = append_batch(
                    conn, last_pos, [cast(Sequence[NewMessage], r.messages) for r in appends]
                )
        except psycopg.OperationalError:
            raise
        except psycopg.Error:
            pos = last_pos
            for request in appends:  # one by one sorts out whose fault it was
                messages = cast(Sequence[NewMessage], request.messages)
                start = pos

                def one(c: Conn, m: Sequence[NewMessage] = messages, p: int = start) -> Any:
                    return append_batch(c, p, [m])

                self._alone(conn, request, one)
                if request.error is None:
                    results, pos = request.result
                    request.result = results[0]
            return pos
        for request, results in zip(appends, answers, strict=True):
            request.result = results
        return pos

    @staticmethod
    def _alone(conn: Conn, request: Request, work: Callable[[Conn], Any]) -> None:
        """`work` in its own SAVEPOINT: its failure undoes it alone (a lost connection does
        not stop here: it fails the whole batch)."""
        try:
            with conn.transaction():
                request.result = work(conn)
        except psycopg.OperationalError:
            raise
        except Exception as exc:
            request.result = None
            request.error = (
                exc
                if isinstance(exc, StoreError)
                else StoreError(describe(exc) if isinstance(exc, psycopg.Error) else repr(exc))
            )

    @staticmethod
    def _fail(requests: list[Request], reason: str) -> None:
        for request in requests:
            request.result = None
            request.error = StoreError(reason)

    def _hand_back(self, batch: list[Request]) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            self.token.run_sync_soon(self.resolve, batch)

    def _retention(self) -> None:
        conn = self._connection()
        if conn is None:
            return
        try:
            gone = self.retention.run_chunk(conn)
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError) or conn.closed:
                self._lost(describe(exc))
            log.warning("retention failed, retrying later: %s", describe(exc))
            return
        if gone:
            log.info("retention deleted %d messages", gone)

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
