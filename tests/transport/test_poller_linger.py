"""The poller's linger: after a batch it waits in its own epoll for the next ready socket, not
in trio's scheduler, but never while trio has another task to run.

Users rely on: a socket that becomes ready while the poller lingers is read without a pass of
trio's scheduler (the CPU a lone message costs); a task that a batch makes runnable (a hand-off,
an event, a publisher woken) runs before the poller waits for more sockets; and a poller woken
seldom does not linger. Real sockets (socketpairs) in the real epolls; the linger and the slice
are lengthened so that the order of events, not a timing window, decides each assertion.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import trio
import trio.testing
from attrs import define

from relay.transport import poller as poller_module
from relay.transport.poller import Poller

#: how long the writer thread waits before the second socket's bytes: far inside the linger
WRITE_AFTER = 0.02


@define(eq=False)
class Reader:
    """Reads its socket once per `on_readable`, notes its name, then runs `then` (if any)."""

    name: str
    sock: socket.socket
    log: list[str]
    then: Callable[[], None] | None = None

    def on_readable(self, now: float) -> None:
        assert self.sock.recv(4096)
        self.log.append(self.name)
        if self.then is not None:
            self.then()

    def read_failed(self) -> None:  # pragma: no cover - on_readable does not fail here
        raise AssertionError("read failed")


class IoWaits(trio.abc.Instrument):
    """Logs "io" each time trio's scheduler waits for I/O: one pass of the run loop."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def before_io_wait(self, timeout: float) -> None:
        self.log.append("io")


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for a, b in made:
        a.close()
        b.close()


@pytest.fixture
def long_linger(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(poller_module, "POLL_SLICE", 30.0)
    monkeypatch.setattr(poller_module, "POLL_LINGER", 5.0)
    return 5.0


def _pair(pairs: list[tuple[socket.socket, socket.socket]]) -> tuple[socket.socket, socket.socket]:
    ours, peer = socket.socketpair()
    pairs.append((ours, peer))
    ours.setblocking(False)
    return ours, peer


def _write_later(peer: socket.socket, delay: float = WRITE_AFTER) -> None:
    def write() -> None:
        time.sleep(delay)
        peer.send(b"second")

    threading.Thread(target=write, daemon=True).start()


async def _serve(poller: Poller, log: list[str], until: Callable[[], bool]) -> None:
    """Run the poller (with IoWaits logging) until `until()`; each batch's flush logs "|"."""
    done = trio.Event()

    def flush() -> None:
        log.append("|")
        if until():
            done.set()

    waits = IoWaits(log)
    trio.lowlevel.add_instrument(waits)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poller.run, flush)
            with trio.fail_after(10):
                await done.wait()
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(waits)
    poller.close()


def _between(log: list[str], first: str, second: str) -> list[str]:
    return log[log.index(first) + 1 : log.index(second)]


async def test_a_socket_ready_during_the_linger_is_read_without_a_scheduler_pass(
    pairs: list[tuple[socket.socket, socket.socket]], long_linger: float
) -> None:
    poller = Poller()
    log: list[str] = []
    a, a_peer = _pair(pairs)
    b, b_peer = _pair(pairs)
    poller.register(a.fileno(), Reader("a", a, log, lambda: _write_later(b_peer)))
    poller.register(b.fileno(), Reader("b", b, log))
    a_peer.send(b"first")
    await _serve(poller, log, lambda: "b" in log)
    # b became ready about WRITE_AFTER after a's batch: the poller was waiting in its epoll
    assert _between(log, "a", "b") == ["|"]


async def test_a_task_the_batch_made_runnable_runs_before_the_poller_lingers(
    pairs: list[tuple[socket.socket, socket.socket]], long_linger: float
) -> None:
    poller = Poller()
    log: list[str] = []
    woken = trio.Event()
    a, a_peer = _pair(pairs)
    b, b_peer = _pair(pairs)

    def wake_and_write() -> None:
        woken.set()  # what a hand-off, a publisher's wake-up or a channel send does
        _write_later(b_peer)

    async def waiter() -> None:
        await woken.wait()
        log.append("task")

    poller.register(a.fileno(), Reader("a", a, log, wake_and_write))
    poller.register(b.fileno(), Reader("b", b, log))
    a_peer.send(b"first")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        await _serve(poller, log, lambda: "b" in log)
    # lingering would have read b (written WRITE_AFTER later, within the linger) first
    assert log.index("a") < log.index("task") < log.index("b")


async def test_a_poller_woken_seldom_goes_back_to_trio_after_its_batch(
    pairs: list[tuple[socket.socket, socket.socket]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(poller_module, "POLL_SLICE", 30.0)
    monkeypatch.setattr(poller_module, "POLL_LINGER", 0.2)
    poller = Poller()
    log: list[str] = []
    a, a_peer = _pair(pairs)
    b, b_peer = _pair(pairs)
    poller.register(a.fileno(), Reader("a", a, log, lambda: _write_later(b_peer)))
    poller.register(b.fileno(), Reader("b", b, log))
    # a becomes ready 0.5 s after the poller parked (> POLL_LINGER): no linger after its batch
    _write_later(a_peer, 0.5)
    await _serve(poller, log, lambda: "b" in log)
    assert "io" in _between(log, "a", "b")
