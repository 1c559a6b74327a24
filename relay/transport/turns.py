"""Turns: how many connections do their joining work -- the opening handshake, the sign-in --
at once.

Trio runs, in one pass, every task that became runnable since the last one. When thousands of
devices reconnect at once (a restart), thousands of handshakes and then thousands of sign-ins
are runnable together, each some hundreds of microseconds of Python, and every signed-in
device's message waits for the whole pass. A turn bounds that: joining work runs only while
holding one of JOINING_TURNS; the rest wait in line (first come, first served), costing
nothing while they wait. Measured in the bench's storm (19,798 devices reconnecting within a
second to a relay on SQLite, 2-core VM), with the accept loop draining the kernel's queue:
the canary pair's p99 was 406 ms without turns and 26 ms with 64; its worst message 1,046 ms
and 158 ms; every backlog arrived in 22 s and 24 s. Then alternating runs of both schedules
an hour later on the same VM, slower by then: with 64 turns p99 37.8, 28.5, 38.0, 40.6 ms and
backlogs in 28-39 s; with 32 turns 28.7, 30.7, 24.0, 33.6 ms and 27-32 s; with 16, 22.1 and
31.0 ms and 38 and 29 s (one run each).

A turn is never held while waiting on the peer: a handshake takes its turn once its request
bytes are readable, and gives it back while it waits for more of them (`Turn.readable`), so a
client that trickles its request (slowloris) holds no turn and keeps no one out. A
handshake's wait in line moves its `handshake_timeout` later: that timeout is the client's
time, not the relay's. While the line is full, a health probe (PROBES: its first bytes,
peeked) skips it. A sign-in (the read of a connection not yet signed in,
relay.transport.connection) holds its turn while the handler works on its frames, store round
trip included: that is the relay's own work. While it waits in line the connection's
`input_queued` is set, and the core does not count that wait against the client's
`auth_timeout`.

A wss:// handshake takes its turns the same way under its TLS (TurnStream): each read of the
TCP stream beneath waits for the peer's bytes holding no turn, then takes one, so the TLS
handshake's key exchange, the heaviest joining work there is, also goes a few at a time. Its
health probes wait in line with the rest: their bytes are encrypted, so none can be peeked
(the metrics listener answers /healthz outside the line: relay.transport.http.respond_side).
A wss:// sign-in holds a turn like a ws:// one.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Iterator
from typing import Final

import trio
from attrs import define, field
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: Connections doing joining work at once (see the module docstring for what was measured).
JOINING_TURNS = 32
#: How the requests that skip the line begin: health probes (GET or HEAD /healthz). In a
#: storm the line can be seconds long, and a load balancer whose probe times out takes the
#: node out of service just as its devices come back. Answering one is a few bytes, and
#: nothing of it stays; a WebSocket upgrade never skips the line, whatever its path.
PROBES: Final = (b"GET /healthz ", b"GET /healthz?", b"HEAD /healthz ", b"HEAD /healthz?")
_PROBE_HEAD: Final = max(len(probe) for probe in PROBES)


async def _probe(sock: trio.socket.SocketType) -> bool:
    """Whether the bytes waiting on `sock` begin a health probe (looked at, not read)."""
    try:
        head = await sock.recv(_PROBE_HEAD, socket.MSG_PEEK)
    except OSError:
        return False  # the read that follows says what is wrong
    return head.startswith(PROBES)


@define(eq=False)
class Turns:
    """The line of connections waiting to do joining work (relay.transport.server)."""

    limiter: trio.CapacityLimiter = field(factory=lambda: trio.CapacityLimiter(JOINING_TURNS))

    def turn(self) -> Turn:
        """A handshake's place in line (it holds no turn yet)."""
        return Turn(self.limiter)


@define(eq=False)
class Turn:
    """One handshake's turn: taken while its request bytes are there, given back while it
    waits for more and once the handshake is done."""

    _limiter: trio.CapacityLimiter
    held: bool = False
    #: the handshake's deadline (`handshake_timeout`, the client's time): stopped while the
    #: handshake waits in line, which is the relay's time
    deadline: trio.CancelScope | None = None

    async def readable(self, sock: trio.socket.SocketType) -> None:
        """Wait until `sock` has bytes to read (or its peer closed) holding no turn; then
        take one, unless the line is full and the bytes begin a health probe (PROBES)."""
        self.release()
        await trio.lowlevel.wait_readable(sock)
        if self._limiter.available_tokens < 1 and await _probe(sock):
            return
        await self.take()

    async def take(self) -> None:
        """Take a turn (if not holding one), waiting in line with the client's clock
        stopped."""
        if self.held:
            return
        scope = self.deadline
        if scope is None:
            await self._limiter.acquire_on_behalf_of(self)
        else:  # the client's clock stops while it waits in line
            left = scope.deadline - trio.current_time()
            scope.deadline = math.inf
            try:
                await self._limiter.acquire_on_behalf_of(self)
            finally:
                scope.deadline = trio.current_time() + left
        self.held = True

    def release(self) -> None:
        """Give the turn back, if held (idempotent)."""
        if self.held:
            self.held = False
            self._limiter.release_on_behalf_of(self)


@define(eq=False)
class TurnStream(trio.abc.Stream):
    """The TCP stream under a wss:// handshake's TLS: while `turn` is set, each read waits
    for the peer's bytes holding no turn and then takes it (Turn.readable), so the TLS
    handshake's work and the request's parsing run holding a turn and a client that trickles
    its bytes holds none. Once the request is read, `turn` is cleared and the stream only
    passes through (the connection's reads take no turns; its sign-in does, elsewhere)."""

    transport: trio.SocketStream
    turn: Turn | None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        turn = self.turn
        if turn is not None:
            await turn.readable(self.transport.socket)
        return await self.transport.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.transport.aclose()


@define(eq=False)
class TurnsCollector(Collector):
    """`relay_joining_active` and `relay_joining_waiting`: handshakes and sign-ins holding a
    turn, and waiting in line for one (a line that stays long: the relay cannot keep up with
    the devices joining)."""

    turns: Turns

    def collect(self) -> Iterator[Metric]:
        statistics = self.turns.limiter.statistics()
        yield GaugeMetricFamily(
            "relay_joining_active",
            f"Handshakes and sign-ins doing their work (at most {JOINING_TURNS} at once)",
            value=statistics.borrowed_tokens,
        )
        yield GaugeMetricFamily(
            "relay_joining_waiting",
            "Handshakes and sign-ins waiting in line for their turn",
            value=statistics.tasks_waiting,
        )
