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

The poller keeps taking batches at once (`epoll_wait(timeout=0)`) while sockets are
ready, for up to POLL_SLICE seconds, and then goes back to waiting on trio, which lets every
other task run (its flusher, the connections' own tasks, the ticker) before the next slice.
At the end of every batch it writes what that batch queued (`flush`): one socket write per
connection per batch, however many messages the batch produced for it.

Who waits on which direction of a socket
----------------------------------------
Two tasks waiting for the same direction of one socket would both be woken, and trio
forbids it for its own waits (`BusyResourceError`). The invariants:

- Reading. A socket is read by at most one party at a time: by the poller while it is
  registered here, or else by its connection's task (the linger after our close frame).
  A connection leaves the poller (`unregister`) while its task handles what the poller
  handed it, so that its frames stay in order, and before its socket is closed, so that a
  descriptor number the kernel reuses never reaches the wrong connection.
- Writing. Only the connection's writer task waits for writability (trio's
  `wait_writable`), and it exists only while the kernel's send buffer is full; every other
  write is a non-blocking `send` from the poller or the flusher.
- The poller never waits on a registered socket itself: it waits only on the epoll's own
  descriptor, which no other task touches.

Two tiers: sessions before newcomers
------------------------------------
A connection whose session has not signed in yet (a *newcomer*: the handler has not called
`Connection.authenticated`) is registered in a second epoll, nested in the first: the
newcomers' epoll descriptor is itself registered in the sessions' epoll, which reports it as
one event while any newcomer is readable. Each batch reads every ready session first, then at
most POLL_EVENTS newcomers.

Why: after a restart, thousands of devices reconnect at once and their `auth` frames arrive
together. With one epoll the kernel reports ready sockets in the order they became ready, so
a signed-in device's message waited behind the sign-ins that arrived before it, up to
POLL_EVENTS of them per batch, each batch followed by the work it handed off. In the nested
epoll the newcomers are one entry among the sessions, so a session waits for at most one
batch of them, whatever their number. In the bench's storm (19,798 devices, one run of each
schedule): the canary pair's p99 27.6 / 36.7 ms and worst 234 / 150 ms with one epoll,
25.6 / 21.7 ms and 158 / 103 ms with two.
"""

from __future__ import annotations

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
#: How long the poller goes on taking batches before it lets other tasks run.
POLL_SLICE = 0.002

_monotonic = time.monotonic


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
    #: True while a batch is read: writes queued meanwhile are made by `flush` at its end
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
        batch at once while sockets are ready, for up to POLL_SLICE, then yield to the
        other tasks."""
        epoll = self._epoll
        epfd = epoll.fileno()
        newcomers = self._newcomers
        nested = newcomers.fileno()
        readers = self._readers
        wait_readable = trio.lowlevel.wait_readable
        current_time = trio.current_time
        while True:
            await wait_readable(epfd)
            # `now` (trio's clock, the heartbeat's) is read once per slice: it is at most
            # POLL_SLICE old, against heartbeat intervals of seconds. The slice itself is
            # measured on the monotonic clock: it bounds real time spent reading.
            now = current_time()
            started = _monotonic()
            ready = epoll.poll(0, POLL_EVENTS)
            while ready:
                self.polling = True
                try:
                    newcomers_ready = False
                    for fd, _events in ready:
                        if fd == nested:
                            newcomers_ready = True
                            continue
                        reader = readers.get(fd)
                        if reader is not None:  # else unregistered by an earlier event
                            _read(fd, reader, now)
                    if newcomers_ready:
                        for fd, _events in newcomers.poll(0, POLL_EVENTS):
                            reader = readers.get(fd)
                            if reader is not None:
                                _read(fd, reader, now)
                finally:
                    self.polling = False
                flush()
                if _monotonic() - started >= POLL_SLICE:
                    break
                ready = epoll.poll(0, POLL_EVENTS)


def _read(fd: int, reader: Readable, now: float) -> None:
    """One socket of a batch: a failure ends only its own connection."""
    try:
        reader.on_readable(now)
    except Exception:
        log.exception("reading fd %d failed", fd)
        reader.read_failed()
