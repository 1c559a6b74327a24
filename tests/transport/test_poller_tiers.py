"""The poller's two tiers: connections whose session signed in are read before newcomers.

Users rely on: after a restart, a signed-in device's message is read in the poller's next
batch, not behind every newcomer's `auth` frame that arrived before it; and every newcomer is
still read, at most POLL_EVENTS per batch; and what a batch's reads queue is written after
every FLUSH_READS of them, so a message read early in a batch of hundreds does not wait for
the last. Real sockets (socketpairs) in the real epolls.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import trio
from attrs import define

from relay.transport import poller as poller_module
from relay.transport.poller import Poller


@define(eq=False)
class Reader:
    """Reads its socket once per `on_readable` and notes its name in the shared log."""

    name: str
    sock: socket.socket
    log: list[str]

    def on_readable(self, now: float) -> None:
        assert self.sock.recv(4096)
        self.log.append(self.name)

    def read_failed(self) -> None:  # pragma: no cover - on_readable does not fail here
        raise AssertionError("read failed")


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for a, b in made:
        a.close()
        b.close()


async def _serve_until(poller: Poller, log: list[str], count: int) -> None:
    """Run the poller until `count` reads are logged; each batch's flush logs "|"."""
    done = trio.Event()

    def flush() -> None:
        log.append("|")
        if sum(entry != "|" for entry in log) >= count:
            done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poller.run, flush)
        with trio.fail_after(5):
            await done.wait()
        nursery.cancel_scope.cancel()


async def test_a_session_is_read_before_newcomers_that_were_ready_first(
    pairs: list[tuple[socket.socket, socket.socket]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(poller_module, "POLL_EVENTS", 8)
    poller = Poller()
    log: list[str] = []
    for i in range(40):
        ours, peer = socket.socketpair()
        pairs.append((ours, peer))
        ours.setblocking(False)
        poller.register(ours.fileno(), Reader(f"n{i}", ours, log), newcomer=True)
        peer.send(b'{"type":"auth"}')  # every newcomer ready before the session
    ours, peer = socket.socketpair()
    pairs.append((ours, peer))
    ours.setblocking(False)
    poller.register(ours.fileno(), Reader("session", ours, log))
    peer.send(b"hello")
    await _serve_until(poller, log, 41)
    poller.close()
    assert log[0] == "session"  # with one epoll it came last: ready order is arrival order
    reads = [entry for entry in log if entry != "|"]
    assert sorted(reads) == sorted(["session", *(f"n{i}" for i in range(40))])  # none lost
    batches = "".join("x" if entry != "|" else "|" for entry in log).split("|")
    assert max(len(batch) for batch in batches) <= 8 + 1  # the session, then <= POLL_EVENTS


async def test_a_connection_moves_between_the_tiers_and_leaves_either(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    poller = Poller()
    log: list[str] = []
    ours, peer = socket.socketpair()
    pairs.append((ours, peer))
    ours.setblocking(False)
    reader = Reader("c", ours, log)
    poller.register(ours.fileno(), reader, newcomer=True)
    poller.register(ours.fileno(), reader, newcomer=True)  # idempotent
    poller.register(ours.fileno(), reader)  # signed in: moves to the sessions
    assert poller.holds(ours.fileno(), reader)
    peer.send(b"x")
    await _serve_until(poller, log, 1)
    assert log[0] == "c"
    poller.unregister(ours.fileno(), reader)
    assert not poller.holds(ours.fileno(), reader)
    poller.register(ours.fileno(), reader, newcomer=True)
    poller.unregister(ours.fileno(), reader)  # leaves the newcomers' epoll too
    peer.send(b"y")
    log.clear()
    with trio.move_on_after(0.05):
        await poller.run(lambda: None)
    assert log == []  # registered nowhere: never read
    poller.close()


async def test_a_batch_writes_after_every_flush_reads_reads(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    poller = Poller()
    log: list[str] = []
    for i in range(80):  # one batch: 40 sessions, then 40 newcomers
        ours, peer = socket.socketpair()
        pairs.append((ours, peer))
        ours.setblocking(False)
        poller.register(ours.fileno(), Reader(f"c{i}", ours, log), newcomer=i >= 40)
        peer.send(b"x")
    await _serve_until(poller, log, 80)
    poller.close()
    reads = [entry for entry in log if entry != "|"]
    assert sorted(reads) == sorted(f"c{i}" for i in range(80))
    assert log.index("|") == poller_module.FLUSH_READS  # the first write, not after all 80
    runs = "".join("x" if entry != "|" else "|" for entry in log).split("|")
    assert max(len(run) for run in runs) <= poller_module.FLUSH_READS
