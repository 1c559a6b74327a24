"""The searcher: a thread of its own that runs a SQL store's searches one at a time, in the
order they were asked for, on a read connection of its own.

Why: a search is a store's heaviest read, and the store's threads share the relay's core with
the event loop, so searches must not run side by side. Held back in Trio instead (a lock
around each search's worker-thread round trip), the next search could only start once the
event loop had run the last one's waiter again: on a relay saturated with messages that is a
pass of the loop per search, and searches queued behind one another. Measured in the bench's
`search` scenario (SQLite, 1M messages, pairwise messaging at full load, 100 searches/s): of a
search's time in the relay, the wait for that lock was p50 13.8 ms and p99 109 ms, against
1.0 ms and 9.4 ms for the search itself. Here a search starts in the thread as soon as the one
before it ended, and its waiter learns the outcome through one TrioToken callback. A caller
that only has frames to queue with the result passes it as `then`, which that callback runs
before it wakes the waiter: the answer leaves a pass of the event loop sooner, and on a loaded
relay each pass is what a search's latency is made of (bench `search`, pairwise messaging at
full load: the event loop's iterations p50 0.2-2.7 ms, p90 4-10 ms, p99 11-24 ms). Its own
connection also keeps searches from waiting behind the store's other reads (a device's backlog
at sign-in), and those from waiting behind searches.

Invariants:
- one search runs at a time, in the order `run` was called (FIFO);
- every job whose waiter still waits is answered exactly once, in the Trio thread, with its
  result or its error; `stop()` lets what is queued run first, and a search asked for once
  `stop()` was called fails with StoreError("the store is closed");
- a job whose waiter was cancelled before the thread reached it is skipped;
- a job's `then` (when given) runs in the Trio thread with the result before its waiter
  resumes, at most once, and never for a waiter that was cancelled or a job that failed; what
  it raises is the waiter's error;
- the thread owns its connection and closes it when it ends.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

import trio
from attrs import define, field

from relay.errors import StoreError

log = logging.getLogger("relay.store")

C = TypeVar("C")
T = TypeVar("T")

#: runs `work(conn, *args)` inside one read transaction on `conn` (the store's own read)
Read = Callable[[C, Callable[..., Any], tuple[Any, ...]], Any]

_STOP = object()


@define(eq=False)
class _Job:
    work: Callable[..., Any]
    args: tuple[Any, ...]
    #: called with the result in the Trio thread before the waiter resumes (Searcher.run)
    then: Callable[[Any], None] | None = None
    done: trio.Event = field(factory=trio.Event)
    result: Any = None
    error: BaseException | None = None
    abandoned: bool = False  # the waiter was cancelled: nobody reads the outcome


@define(eq=False)
class Searcher(Generic[C]):
    """Runs searches (`run`) one at a time, in a thread of its own, on `conn`; `start()` once
    from the Trio run that calls `run`, `stop()` to end it."""

    conn: C
    read: Read[C]
    close: Callable[[C], None]  # closes `conn` (in the searcher's thread, when it ends)
    name: str = "relay-searcher"
    _jobs: queue.SimpleQueue[_Job | object] = field(factory=queue.SimpleQueue, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _token: trio.lowlevel.TrioToken | None = field(default=None, init=False)
    _stopping: bool = field(default=False, init=False)

    def start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    async def run(
        self, work: Callable[..., T], *args: Any, then: Callable[[T], None] | None = None
    ) -> T:
        """`work(conn, *args)` in the searcher's thread, after every search asked for before.
        `then(result)`, when given, runs in the Trio thread as soon as the result is there,
        before this coroutine resumes; what it raises, this raises."""
        if self._thread is None or self._stopping:
            raise StoreError("the store is closed")
        job = _Job(work, args, then)
        self._jobs.put(job)
        try:
            await job.done.wait()
        except BaseException:
            job.abandoned = True  # read by the thread; at worst it runs the job for nobody
            raise
        if job.error is not None:
            raise job.error
        return cast(T, job.result)

    async def stop(self) -> None:
        """Run what is queued, then end the thread (bounded: completes even when the caller
        is cancelled). Idempotent."""
        thread = self._thread
        if thread is None:
            return
        if not self._stopping:
            self._stopping = True
            self._jobs.put(_STOP)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(thread.join)

    def _loop(self) -> None:
        try:
            while True:
                job = self._jobs.get()
                if job is _STOP:
                    return
                job = cast(_Job, job)
                if job.abandoned:
                    continue
                try:
                    job.result = self.read(self.conn, job.work, job.args)
                except Exception as exc:  # handed to the waiter, which raises it in Trio
                    job.error = exc
                self._answer(job)
        finally:  # nothing is queued after STOP unless the loop itself failed
            self._fail_queued()
            try:
                self.close(self.conn)
            except Exception:
                log.exception("closing the searcher's connection failed")

    def _fail_queued(self) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP:
                job = cast(_Job, job)
                job.error = StoreError("the store is closed")
                self._answer(job)

    def _answer(self, job: _Job) -> None:
        assert self._token is not None
        with contextlib.suppress(trio.RunFinishedError):  # else nobody is waiting any more
            self._token.run_sync_soon(_settle, job)


def _settle(job: _Job) -> None:
    """In the Trio thread: the job's `then`, then wake its waiter. A `then` must not raise into
    the run_sync_soon callback (trio would end the run): its error is the waiter's."""
    then = job.then
    if then is not None and job.error is None and not job.abandoned:
        try:
            then(job.result)
        except Exception as exc:
            job.error = exc
    job.done.set()
