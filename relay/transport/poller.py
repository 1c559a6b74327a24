"""The poller: one task reads every ws:// connection, through one private epoll.

Why a private epoll
-------------------
Trio's own I/O manager already uses epoll: `trio.lowlevel.wait_readable(sock)` registers the
socket in trio's epoll, parks the calling task, and wakes it when the socket is readable.
That is one task switch, one epoll_ctl and one wake-up per socket per read. With thousands
of connections each receiving a message every few milliseconds the scheduler, not the
relay, does most of the work.

So the ws:// connections are registered in a second epoll instance owned by the poller,
and trio is asked about only one descriptor: that epoll's own, which is readable whenever
any socket registered in it is ready. One task waits on it, takes every ready socket with
one `epoll_wait(timeout=0)`, and reads each one inline. A batch of N ready sockets costs one
wake-up, not N.

Level-triggered, not edge-triggered
-----------------------------------
Each socket is registered for EPOLLIN, level-triggered (the default). epoll reports a
level-triggered socket in every `epoll_wait` for as long as it has unread bytes; an
edge-triggered socket only when new bytes arrive, so its reader must drain it to EAGAIN
or lose the wake-up. Level triggering lets the poller read each ready socket exactly once
per batch (one `recv_into` into the server's shared buffer): a socket with more to read
simply comes back in the next batch, so a busy peer cannot starve the others, and no
bookkeeping of "drained or not" is needed. The cost -- a socket reported again until it is
read -- is nothing here, because the poller does read every socket it is told about.

Batches
-------
The poller keeps taking batches while sockets are ready, for up to POLL_SLICE seconds, and
then goes back to waiting on trio, which lets every other task run (its flusher, the
connections' own tasks, the ticker) before the next slice. It writes what a batch queued
(`flush`) after every FLUSH_READS reads and at the batch's end: one socket write per
connection per FLUSH_READS reads at most, however many messages they produced for it.

Why not only at the batch's end: a batch is every socket ready at once, and after anything
that holds the event loop for a few milliseconds (a collection, a maintenance step, a burst of
sign-ins) that is hundreds of sockets at 10,000 connections, read in one go at tens of
microseconds each: a message read first waited for the last read before it was written.
With its writes every 16 reads, seven alternating pairs of `--scenarios sparse
--sparse-connections 10000` (2026-12-08, AMD EPYC, 2 cores) gave a p99 median of 3.7 ms
against 6.8 ms (p99.9 14.8 against 20.1 ms), sparse@1000's p99 0.88 against 1.30 ms, and the
same CPU per message: the writes it adds are to connections that got frames in two parts of a
batch, which at these rates is almost none. Where each read carries many messages (`pairwise`,
16 in flight per connection) it adds some: 0.066 socket writes per message against 0.052
(`perf stat` of the relay's `sendto`), with throughput within the spread of three alternating
pairs (161-198k against 186-197k msg/s) and rate@40000's p99 4.4-6.4 against 5.8-9.8 ms.

Lingering: waiting in our epoll, not in trio's
-----------------------------------------------
Going back to trio costs one pass of trio's scheduler: 52,000 instructions per wake-up on
CPython 3.11 (callgrind, trio 0.35: a task waiting on one socket, against 10,800 for the same
loop on a bare epoll), paid again for every lone message when messages arrive one per
wake-up. So after a batch, when nothing is ready, the poller waits up to POLL_LINGER in its
own epoll for the next socket before it goes back to trio. It lingers only

- while sockets become ready faster than that: trio woke the poller less than POLL_LINGER
  after it parked (else the wait would mostly time out: one more `epoll_wait` per wake-up,
  and the delay below for nothing);
- while trio has nothing else to run: an Instrument (`_Runnable`, trio's public hook
  `task_scheduled`) notes every task other than the poller made runnable since the poller
  last parked; a batch that hands a connection to its task, sets an event or wakes a
  publisher thus ends the slice at once instead of making that task wait;
- and within the slice (POLL_SLICE bounds a slice, lingering included).

The price: what reaches trio by its own epoll during a linger -- a new TCP connection, a
thread's `run_sync_soon` (a store's answer), a timer -- waits for the linger's end, at most
POLL_LINGER (1 ms: epoll's granularity; Python rounds a shorter timeout up to it), and at
most POLL_SLICE while sockets keep coming, as before. Measured with `python -m bench`, five
alternating runs each against the poller without it (2026-12-07, AMD EPYC, 2 cores), medians
of CPU per message: sparse@1000 50.8 -> 40.6 us (p99 0.60 -> 0.50 ms), rate@20000 36.7 ->
35.3 us (p99 0.52 -> 0.37 ms); sparse@10000 54.2 against 56.8 us, within its spread (64.6 ->
57.8 in an earlier set of five). Without the gap rule the cluster scenario (500 msg/s) paid
for it: one-node p50 +0.15 ms and more CPU per message; with it, its p99 medians of three
runs were 11.5 -> 11.0 ms on one node and 10.6 -> 8.2 ms on three.
"""

from __future__ import annotations

import contextlib
import logging
import select
import time
from collections.abc import Callable
from typing import Protocol

import trio
from attrs import define, field

log = logging.getLogger("relay.transport")

#: Most readiness events the poller takes from the kernel per batch.
POLL_EVENTS = 1024
#: Reads after which a batch writes what they queued (see "Batches").
FLUSH_READS = 16
#: How long the poller goes on taking batches before it lets other tasks run.
POLL_SLICE = 0.002
#: How long the poller waits in its own epoll for the next ready socket after a batch, and
#: the longest time parked in trio after which it lingers at all (see "Lingering").
POLL_LINGER = 0.001

_monotonic = time.monotonic


class _Runnable(trio.abc.Instrument):
    """Whether trio was given a task to run other than the poller's since `others` was
    cleared (trio calls `task_scheduled` each time a task becomes runnable)."""

    __slots__ = ("_poller", "others")

    def __init__(self, poller: trio.lowlevel.Task) -> None:
        self._poller = poller
        self.others = False

    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        if task is not self._poller:
            self.others = True


class Readable(Protocol):
    """What the poller reads: a ws:// connection (relay.transport.connection)."""

    def on_readable(self, now: float) -> None:
        """Read the socket once and handle what needs no waiting."""
        ...

    def read_failed(self) -> None:
        """`on_readable` raised: stop reading (the connection's task ends it)."""
        ...


@define(eq=False)
class Poller:
    """The private epolls of the ws:// connections and the one task that reads them."""

    #: the sessions' epoll, the one trio waits on; the newcomers' epoll is registered in it
    _epoll: select.epoll = field(factory=select.epoll)
    _newcomers: select.epoll = field(factory=select.epoll)
    _readers: dict[int, Readable] = field(factory=dict)  # fd -> its connection
    _newcomer_fds: set[int] = field(factory=set)  # the fds of _readers in _newcomers
    #: True while a batch is read: writes queued meanwhile are made by its `flush` calls
    polling: bool = False

    def __attrs_post_init__(self) -> None:
        self._epoll.register(self._newcomers.fileno(), select.EPOLLIN)

    def register(self, fd: int, reader: Readable, *, newcomer: bool = False) -> None:
        """Read `fd` in the poller from now on, in the newcomers' tier or the sessions'
        (idempotent; a connection registered in the other tier moves)."""
        readers = self._readers
        if fd in readers:
            if (fd in self._newcomer_fds) is newcomer:
                return
            self.unregister(fd, readers[fd])
        if newcomer:
            self._newcomers.register(fd, select.EPOLLIN)
            self._newcomer_fds.add(fd)
        else:
            self._epoll.register(fd, select.EPOLLIN)
        readers[fd] = reader

    def unregister(self, fd: int, reader: Readable) -> None:
        """Stop reading `fd` for `reader` (idempotent; call it before the socket is closed)."""
        readers = self._readers
        if readers.get(fd) is not reader:
            return
        del readers[fd]
        newcomer_fds = self._newcomer_fds
        try:
            if fd in newcomer_fds:
                newcomer_fds.discard(fd)
                self._newcomers.unregister(fd)
            else:
                self._epoll.unregister(fd)
        except OSError:  # pragma: no cover - registered while in _readers
            log.exception("unregistering fd %d from the poller failed", fd)

    def holds(self, fd: int, reader: Readable) -> bool:
        return self._readers.get(fd) is reader

    def close(self) -> None:
        """Close the epolls (once every registered connection ended)."""
        self._epoll.close()
        self._newcomers.close()

    async def run(self, flush: Callable[[], None]) -> None:
        """Serve forever: wait for the epoll to be readable, read each ready socket once
        (Readable.on_readable(now), `now` on trio's clock) -- the ready sessions, then up to
        POLL_EVENTS ready newcomers -- and `flush()` what the batch queued; take the next
        batch while sockets are ready (lingering as the module doc says), for up to
        POLL_SLICE, then yield to the other tasks."""
        runnable = _Runnable(trio.lowlevel.current_task())
        trio.lowlevel.add_instrument(runnable)
        try:
            await self._serve(flush, runnable)
        finally:
            # KeyError: trio drops an instrument that raised (this one does not)
            with contextlib.suppress(KeyError):
                trio.lowlevel.remove_instrument(runnable)

    async def _serve(self, flush: Callable[[], None], runnable: _Runnable) -> None:
        epoll = self._epoll
        epfd = epoll.fileno()
        newcomers = self._newcomers
        nested = newcomers.fileno()
        readers = self._readers
        wait_readable = trio.lowlevel.wait_readable
        current_time = trio.current_time
        while True:
            runnable.others = False
            parked = _monotonic()
            await wait_readable(epfd)
            # `now` (trio's clock, the heartbeat's) is read once per slice: it is at most
            # POLL_SLICE old, against heartbeat intervals of seconds. The slice itself is
            # measured on the monotonic clock: it bounds real time spent reading.
            now = current_time()
            started = _monotonic()
            linger = POLL_LINGER if started - parked < POLL_LINGER else 0.0
            ready = epoll.poll(0, POLL_EVENTS)
            while ready:
                self.polling = True
                try:
                    if _read_batch(ready, readers, now, flush, nested):
                        flush()  # the sessions' writes before the newcomers are read
                        _read_batch(newcomers.poll(0, POLL_EVENTS), readers, now, flush, -1)
                finally:
                    self.polling = False
                flush()
                left = POLL_SLICE - (_monotonic() - started)
                if left <= 0:
                    break
                if linger and left >= linger and not runnable.others:
                    ready = epoll.poll(linger, POLL_EVENTS)
                else:
                    ready = epoll.poll(0, POLL_EVENTS)


def _read_batch(
    ready: list[tuple[int, int]],
    readers: dict[int, Readable],
    now: float,
    flush: Callable[[], None],
    nested: int,
) -> bool:
    """Read each ready socket once, and `flush()` after every FLUSH_READS reads; the fd
    `nested` (the newcomers' epoll) is not read: True when it was ready."""
    nested_ready = False
    unflushed = 0
    for fd, _events in ready:
        if fd == nested:
            nested_ready = True
            continue
        reader = readers.get(fd)
        if reader is None:  # unregistered by an earlier event
            continue
        _read(fd, reader, now)
        unflushed += 1
        if unflushed == FLUSH_READS:
            flush()
            unflushed = 0
    return nested_ready


def _read(fd: int, reader: Readable, now: float) -> None:
    """One socket of a batch: a failure ends only its own connection."""
    try:
        reader.on_readable(now)
    except Exception:
        log.exception("reading fd %d failed", fd)
        reader.read_failed()
