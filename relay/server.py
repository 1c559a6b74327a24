"""The Trio shell: accept, opening handshake (h11 + wsproto), read/flush loops, heartbeat, drain.

Shape of one server (every task lives in a visible nursery):

    Server.serve ── root nursery
      └─ host (shielded, so a cancelled serve can still drain) ── host nursery
           ├─ accept loops (one per listener), starting one task per TCP connection here
           ├─ poller: ONE task reading every ws:// connection (a private epoll, level-
           │  triggered), handling what needs no waiting inline, handing the rest to the
           │  connection's task; it writes what each batch queued
           ├─ flusher: ONE task writing every other dirty outbox, one `send` per connection
           │  per tick
           ├─ ticker: handler.tick(now) every 250 ms, heartbeat sweep
           ├─ expirer: ends raw connections whose close deadline passed
           ├─ per connection: its task (handshake, then the poller's hand-offs; wss://: the
           │  reader itself); wss:// adds a nursery for its writer task
           └─ ws:// writer tasks: one per connection only while its kernel send buffer is full

Invariants:
- After the 101 response the socket is a plain non-blocking stdlib socket owned by its
  connection; only the poller (while the socket is in its epoll) or else the connection's
  linger reads it, and only the writer task (or nobody) waits for writability, so no two
  tasks wait on one direction of a socket. A socket leaves the poller's epoll before it is
  closed, and while its task handles a hand-off (so its frames stay in order).
  wss:// keeps trio.SSLStream instead (TLS needs it): every flush there is a writer task.
- A connection is in `Server.dirty` at most once (`Connection.dirty` says so); a connection
  whose writer task is active is skipped by the flusher (the writer owns its outbox then).
- Nothing is written after a close frame: once closing, at most `_close_remaining` more
  bytes leave (everything queued before the close frame, and the close frame itself).
- `handler.on_close` is called exactly once per connection that got `on_open`.
- Frames pushed straight into `conn.outbox` (relay.fastpath.fanout) are written once the
  pusher calls `conn.flush_soon()`; the heartbeat sweep also flushes any outbox left pending
  (counted as relay_late_flushes_total, which should stay 0).
- Closing is bounded: the wait for the peer's close, the flush of ours and the wait for the
  peer's FIN share one deadline, CLOSE_TIMEOUT after close(); the drain adds drain_timeout
  over all connections.

Heartbeat: a connection silent (no frame of any kind) for heartbeat_interval gets a ping,
and another every heartbeat_interval while it stays silent; one silent for heartbeat_interval
+ heartbeat_timeout is closed with 1011 without waiting for its reply (the peer is presumed
dead). Checked by one sweep over all connections every min(interval, timeout)/4 (>= 50 ms).

Close codes the shell itself uses: 1003 binary frame, 1002/1007/1009 from the frame parser,
1011 handler failure and heartbeat timeout, 1012 shutdown, 503 (HTTP) for upgrades while
draining or over max_connections. `on_close` receives the code the connection ended with:
the peer's code when the peer closed first (1005 when it gave none), ours when we closed
first, 1006 when the TCP connection ended without a close handshake.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import math
import os
import select
import socket
import ssl
import time
from typing import Any, Protocol, cast

import h11
import outcome
import trio
from attrs import define, field, frozen
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, RejectConnection
from wsproto.events import Request as WsRequest
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError as WsRemoteProtocolError

from relay import http
from relay.config import RelayConfig
from relay.fastpath import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameParser,
    Outbox,
    encode_close,
    encode_frame,
    parse_close,
)
from relay.metrics import RelayMetrics, Stats

log = logging.getLogger("relay.server")

#: Largest opening HTTP request (request line + headers) accepted; more is answered 431.
MAX_REQUEST_BYTES = 16 * 1024
#: Size of the one receive buffer the readers of a server share (reads never interleave).
RECV_SIZE = 256 * 1024
#: How long a closing connection waits for the peer's close frame and its TCP end.
CLOSE_TIMEOUT = 2.0
#: Period of handler.tick(now).
TICK_INTERVAL = 0.25
#: Pause before accepting again after accept() failed for lack of descriptors or memory.
ACCEPT_RETRY = 0.1
#: accept() errors that mean "out of resources for now" (as trio.serve_listeners has them).
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: How long a plain-HTTP connection may take to read its response before it is cut.
HTTP_LINGER = 1.0

_PING_FRAME = encode_frame(OP_PING, b"")
_EMPTY_CLOSE = encode_frame(OP_CLOSE, b"")
_CONNECTION_TASK = "relay.server connection"
_ids = itertools.count(1)
_monotonic = time.monotonic
#: Most readiness events the poller takes from the kernel per round.
POLL_EVENTS = 1024
#: How long the poller goes on reading ready sockets before it lets other tasks run.
POLL_SLICE = 0.002

#: What the poller hands a connection's task: (payloads left, stop op, its payload); see
#: WsConnection._events.
_Work = tuple[list[bytes], int, bytes]


def _nothing_now(conn: Any, payloads: list[bytes]) -> int:
    return 0


class Connection(Protocol):
    """What the core sees of one WebSocket (docs/ARCHITECTURE.md, "Shell ↔ core")."""

    id: int
    remote: str
    path: str
    outbox: Outbox
    state: Any

    def send(self, frame: bytes, droppable: bool = False) -> bool: ...

    def close(self, code: int, reason: str = "") -> None: ...

    def flush_soon(self) -> None: ...


class ConnectionHandler(Protocol):
    """What the shell calls (docs/ARCHITECTURE.md); the messaging core implements it."""

    def on_open(self, conn: Connection) -> None: ...

    async def on_messages(self, conn: Connection, payloads: list[bytes]) -> None: ...

    # Optional (looked up once per Server): handle payloads in order for as long as that needs
    # no waiting and return how many were handled; the shell passes the rest to on_messages.
    # def on_messages_nowait(self, conn: Connection, payloads: list[bytes]) -> int: ...

    def on_flushed(self, conn: Connection) -> None: ...

    def on_close(self, conn: Connection, code: int) -> None: ...

    def tick(self, now: float) -> None: ...


@frozen
class BoundAddress:
    """Where a started relay listens; `url` is what a client connects to."""

    host: str
    port: int
    scheme: str = "ws"

    @property
    def url(self) -> str:
        host = self.host
        if host in ("", "0.0.0.0", "::"):
            host = "localhost"
        elif ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}"


class _HttpFailure(Exception):
    """The opening request cannot be served; `status` is the HTTP answer (never escapes)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@frozen
class _OpeningRequest:
    method: str
    target: str
    headers: list[tuple[bytes, bytes]]
    raw: bytes  # every byte received so far
    parser: h11.Connection


@define(eq=False)
class WsConnection:
    """One WebSocket after its handshake: the Connection the core is handed."""

    id: int
    remote: str
    path: str
    outbox: Outbox
    parser: FrameParser
    server: Server
    sock: socket.socket | None  # raw path (ws://)
    stream: trio.abc.Stream | None  # TLS path (wss://): trio.SSLStream
    state: Any = None
    dirty: bool = False
    closing: bool = False
    close_code: int = 1006
    last_rx: float = field(factory=_monotonic)
    pinged_at: float = 0.0
    _close_remaining: int = 0
    _close_deadline: float = 0.0
    _writer_active: bool = False
    _broken: bool = False
    _ended: bool = False
    _opened: bool = False
    _peer_close_seen: bool = False
    # TLS path only: the connection nursery (its writer task) and its scope (close deadline,
    # breakage). The raw path has neither: see WsConnection.run.
    _scope: trio.CancelScope | None = None
    _nursery: trio.Nursery | None = None
    _idle: trio.Event | None = None
    # Raw path: the poller's hand-off to the connection's task (_read_raw). Invariant: the
    # socket is in the server's poller only while the task waits for a hand-off, and
    # `_reader_task` is set only while the task is parked waiting for one.
    _polled: bool = False
    _reader_task: trio.lowlevel.Task | None = None
    _handed: _Work | None = None
    _has_handed: bool = False

    # --- the Connection protocol (called by the core) -----------------------------------------

    def send(self, frame: bytes, droppable: bool = False) -> bool:
        """Queue an encoded server frame; written at the end of this scheduler tick.
        False when the outbox is full (the caller closes 1013) or the connection is closing."""
        if self.closing:
            return False
        ob = self.outbox
        before = ob.pending_frames
        if not ob.push(frame, droppable):
            if droppable:
                self.server.stats.messages_dropped += 1
            return False
        if ob.pending_frames <= before:  # droppable frames were dropped to make room
            self.server.stats.messages_dropped += before + 1 - ob.pending_frames
        if not self.dirty:
            self.dirty = True
            self.server.add_dirty(self)
        return True

    def flush_soon(self) -> None:
        """Have what was pushed to `outbox` directly (relay.fastpath.fanout) written at the end
        of this tick. Idempotent and cheap; call it for every outbox a fanout pushed to."""
        if not self.dirty and not self._ended:
            self.dirty = True
            self.server.add_dirty(self)

    def close(self, code: int, reason: str = "") -> None:
        """Queue a close frame after what is queued, then end the connection: wait (bounded
        by CLOSE_TIMEOUT) for the peer's close, then close the socket. Idempotent."""
        self._close(code, reason, wait_peer=True)

    # --- closing --------------------------------------------------------------------------------

    def _close(
        self, code: int, reason: str = "", *, wait_peer: bool = True, frame: bytes | None = None
    ) -> None:
        if self.closing or self._ended:
            return
        close_frame = frame if frame is not None else encode_close(code, reason)
        self.closing = True
        self.close_code = code
        if code == 1013:
            self.server.stats.slow_consumer_closes += 1
        ob = self.outbox
        if not ob.push(close_frame):
            # The outbox limits bound push, not unsend: the close frame goes in regardless.
            ob.unsend(ob.take() + close_frame)
        self._close_remaining = ob.pending_bytes
        now = trio.current_time()
        self._close_deadline = now + CLOSE_TIMEOUT if wait_peer else now
        if self._scope is not None:
            self._scope.deadline = min(self._scope.deadline, self._close_deadline)
        else:
            self.server.expire_at(self, self._close_deadline)
        self.flush_soon()
        if not wait_peer and self.sock is not None and not self._writer_active:
            self.write_some()  # best effort, right now: the connection ends at once

    def _mark_broken(self) -> None:
        """Stop the connection: every wait on its socket ends and none starts again."""
        self._broken = True
        if self._scope is not None:
            self._scope.cancel()
        elif self.sock is not None and not self._ended:
            # Wakes the linger and the writer task (ClosedResourceError), and the reader
            # through a hand-off; the flag keeps them from waiting again.
            if self._polled or self._reader_task is not None:
                self._hand_off(None)
            trio.lowlevel.notify_closing(self.sock)

    def expire(self) -> None:
        """The close deadline passed (raw path): end the connection now."""
        if not self._ended:
            self._mark_broken()

    # --- writing --------------------------------------------------------------------------------

    def write_some(self) -> bool:
        """One non-blocking `send` of everything queued (raw path). True while bytes remain
        that the kernel did not take (the caller then lets the writer task wait)."""
        ob = self.outbox
        frames = ob.pending_frames
        data = ob.take()
        if not data:
            return False
        clipped = False
        if self.closing:
            if self._close_remaining <= 0:
                return False  # everything after the close frame is discarded
            if len(data) > self._close_remaining:
                data = data[: self._close_remaining]
                clipped = True
        sock = self.sock
        assert sock is not None
        try:
            n = sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self._mark_broken()
            return False
        stats = self.server.stats
        stats.socket_writes += 1
        stats.bytes_out += n
        if self.closing:
            self._close_remaining -= n
        if n < len(data):
            ob.unsend(data[n:])
            stats.frames_out += frames - 1
            return True
        stats.frames_out += frames
        if not clipped:
            self.server.flushed(self)
        return bool(ob.pending_bytes) and not (self.closing and self._close_remaining <= 0)

    def start_writer(self) -> None:
        """Hand the rest of the outbox to a writer task (only while the kernel buffer is full,
        or always on the TLS path)."""
        if self._writer_active or self._ended:
            return
        if self.sock is not None:
            nursery = self.server.host_nursery
            writer = self._writer_raw
        else:
            nursery = self._nursery
            writer = self._writer_tls
        if nursery is None:
            return
        self._writer_active = True
        nursery.start_soon(writer)

    async def _writer_raw(self) -> None:
        # Runs in the server's host nursery; the connection's teardown waits for it to end
        # before the socket is closed, after _mark_broken() woke it.
        sock = self.sock
        assert sock is not None
        try:
            while not self._broken:
                try:
                    await trio.lowlevel.wait_writable(sock)
                except trio.ClosedResourceError:
                    break
                if not self.write_some():
                    break
        except Exception:
            log.exception("writer of connection %d failed", self.id)
            self._mark_broken()
        finally:
            self._writer_active = False
            if self._idle is not None:
                self._idle.set()

    async def _writer_tls(self) -> None:
        stream = self.stream
        assert stream is not None
        ob = self.outbox
        stats = self.server.stats
        try:
            while not self._broken and ob.pending_bytes:
                frames = ob.pending_frames
                data = ob.take()
                clipped = False
                if self.closing:
                    if self._close_remaining <= 0:
                        break
                    if len(data) > self._close_remaining:
                        data = data[: self._close_remaining]
                        clipped = True
                    self._close_remaining -= len(data)
                try:
                    await stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._mark_broken()
                    break
                stats.socket_writes += 1
                stats.bytes_out += len(data)
                stats.frames_out += frames
                if not clipped:
                    self.server.flushed(self)
        finally:
            self._writer_active = False
            if self._idle is not None:
                self._idle.set()

    async def _wait_flushed(self) -> None:
        """Return once everything up to the close frame reached the kernel (or the peer broke)."""
        while not self._broken:
            if self._writer_active:
                self._idle = trio.Event()
                await self._idle.wait()
                continue
            if not self.outbox.pending_bytes or (self.closing and self._close_remaining <= 0):
                return
            if self.sock is None or self.write_some():
                self.start_writer()

    # --- reading --------------------------------------------------------------------------------

    def _events(self, data: bytes | bytearray | memoryview) -> tuple[list[bytes], int, bytes]:
        """Feed received bytes to the parser: (text payloads, the op that stops this read or
        -1, its payload). Pings are answered here; nothing after a close or binary frame."""
        events = self.parser.feed(cast(bytes, data))
        self.server.stats.frames_in += len(events)
        payloads: list[bytes] = []
        for op, payload in events:
            if op == OP_TEXT:
                payloads.append(payload)
            elif op == OP_PING:
                self.send(encode_frame(OP_PONG, payload))
            elif op != OP_PONG:
                return payloads, op, payload
        return payloads, -1, b""

    async def _process(self, data: bytes | bytearray | memoryview) -> bool:
        """Feed received bytes to the parser and act on the events; True: stop reading."""
        payloads, stop_op, stop_payload = self._events(data)
        return await self._handle_events(payloads, stop_op, stop_payload)

    async def _handle_events(
        self, payloads: list[bytes], stop_op: int, stop_payload: bytes
    ) -> bool:
        if payloads and not self.closing:
            try:
                await self.server.handler.on_messages(self, payloads)
            except Exception:
                log.exception("handler.on_messages failed on connection %d", self.id)
                self.close(1011, "internal error")
        return self._after_events(stop_op, stop_payload)

    def _after_events(self, stop_op: int, stop_payload: bytes) -> bool:
        """Act on what ended a read's events (see _events); True: stop reading."""
        if stop_op == OP_CLOSE:
            self._peer_closed(stop_payload)
            return True
        if stop_op == OP_BINARY:
            # Keep reading: the peer's close reply ends the connection without a linger.
            self.close(1003, "binary frames are not supported")
            return False
        if self.parser.failed:
            self.close(self.parser.close_code, self.parser.close_reason)
            return True
        return False

    def _peer_closed(self, payload: bytes) -> None:
        self._peer_close_seen = True
        if self.closing:
            return  # the reply to our close: the handshake is complete
        code, _reason = parse_close(payload)
        # Echo the peer's code (RFC 6455 5.5.1); an empty close is answered with an empty one.
        self._close(code, frame=_EMPTY_CLOSE if code == 1005 else encode_close(code))

    def on_readable(self, now: float) -> None:
        """The poller saw the socket readable (raw path): one read, handled at once as far as
        the handler can without waiting; the rest goes to the connection's task (_read_raw)."""
        server = self.server
        sock = self.sock
        assert sock is not None
        try:
            n = sock.recv_into(server.recv_buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._broken = True
            self._hand_off(None)
            return
        if n == 0:
            self._hand_off(None)
            return
        server.stats.bytes_in += n
        self.last_rx = now
        # The shared buffer is consumed (copied by the parser) before anything else reads.
        payloads, stop_op, stop_payload = self._events(server.recv_view[:n])
        if payloads and not self.closing:
            try:
                done = server.on_messages_nowait(self, payloads)
            except Exception:
                log.exception("handler.on_messages_nowait failed on connection %d", self.id)
                self.close(1011, "internal error")
                done = len(payloads)
            if done < len(payloads):
                self._hand_off((payloads[done:], stop_op, stop_payload))
                return
        if self._after_events(stop_op, stop_payload):
            self._hand_off(None)

    def _hand_off(self, work: _Work | None) -> None:
        """Stop polling this socket and give the connection's task `work` (None: stop reading)."""
        self.server.unpoll(self)
        task = self._reader_task
        if task is None:
            self._handed = work
            self._has_handed = True
        else:
            self._reader_task = None
            trio.lowlevel.reschedule(task, outcome.Value(work))

    async def _next_hand_off(self) -> _Work | None:
        if self._has_handed:
            self._has_handed = False
            work, self._handed = self._handed, None
            return work
        self._reader_task = trio.lowlevel.current_task()

        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            self._reader_task = None
            return trio.lowlevel.Abort.SUCCEEDED

        return cast("_Work | None", await trio.lowlevel.wait_task_rescheduled(abort))

    async def _read_raw(self) -> None:
        """The raw path's reading: the server's poller reads and handles what needs no waiting
        (on_readable); this task waits for what it hands off, then polling resumes."""
        server = self.server
        try:
            while not self._broken:
                server.poll(self)
                work = await self._next_hand_off()
                if work is None or self._broken:
                    return
                if await self._handle_events(*work):
                    return
        finally:
            server.unpoll(self)

    async def _read_tls(self) -> None:
        stream = self.stream
        assert stream is not None
        stats = self.server.stats
        while True:
            try:
                data = await stream.receive_some(RECV_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._broken = True
                return
            if not data:
                return
            stats.bytes_in += len(data)
            self.last_rx = _monotonic()
            if await self._process(data):
                return

    # --- life cycle -----------------------------------------------------------------------------

    async def run(self, trailing: bytes) -> None:
        """Serve the connection until it ends; the caller registered it with the server.

        Raw path: no nursery and no cancel scope per connection (memory per idle connection
        counts). Every wait is on the socket, so _mark_broken() (a failed write, or the close
        deadline via Server.expire_at) ends them all with notify_closing; the writer task
        lives in the host nursery. TLS path: a nursery for the writer, whose scope carries
        the close deadline and is cancelled on breakage."""
        try:
            if self.sock is not None:
                await self._serve(trailing)
            else:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self._scope = nursery.cancel_scope
                    await self._serve(trailing)
                    nursery.cancel_scope.cancel()
        finally:
            await self._teardown()

    async def _serve(self, trailing: bytes) -> None:
        self._opened = True
        try:
            self.server.handler.on_open(self)
        except Exception:
            log.exception("handler.on_open failed on connection %d", self.id)
            self.close(1011, "internal error")
        if not self.closing and not (trailing and await self._process(trailing)):
            await (self._read_raw() if self.sock is not None else self._read_tls())
        if self.closing and not self._broken:
            await self._wait_flushed()
            await self._linger()

    async def _linger(self) -> None:
        """After our close frame: half-close; unless the peer's close frame was read, wait for
        the peer's end of the TCP stream, so that bytes the peer still sends cannot turn our
        close into a reset that destroys the close frame before the peer reads it."""
        sock = self.sock
        if sock is None or self._broken:
            return
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        if self._peer_close_seen:
            return
        buf = self.server.recv_buffer
        while not self._broken:
            try:
                await trio.lowlevel.wait_readable(sock)
            except trio.ClosedResourceError:
                return
            try:
                if sock.recv_into(buf) == 0:
                    return
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return

    async def _teardown(self) -> None:
        if self._writer_active and self.sock is not None:
            # The raw writer lives in the host nursery: wake it and let it end before the
            # socket is closed (bounded: it waits on nothing else).
            self._mark_broken()
            with trio.CancelScope(shield=True):
                while self._writer_active:
                    self._idle = trio.Event()
                    await self._idle.wait()
        self._ended = True
        self.closing = True
        if self.sock is not None:
            self.server.unpoll(self)
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()
        elif self.stream is not None:
            await trio.aclose_forcefully(self.stream)
        self.server.forget(self)
        if self._opened:
            try:
                self.server.handler.on_close(self, self.close_code)
            except Exception:
                log.exception("handler.on_close failed on connection %d", self.id)


@define(eq=False)
class Server:
    """One listening relay: its connections, its flusher, its ticker, its drain."""

    config: RelayConfig
    handler: ConnectionHandler
    metrics: RelayMetrics = field(factory=RelayMetrics)
    address: BoundAddress | None = None
    draining: bool = False
    conns: dict[int, WsConnection] = field(factory=dict)
    dirty: list[WsConnection] = field(factory=list)
    recv_buffer: bytearray = field(factory=lambda: bytearray(RECV_SIZE))
    recv_view: memoryview = field(init=False)
    _ssl: ssl.SSLContext | None = None
    _lot: trio.lowlevel.ParkingLot = field(factory=trio.lowlevel.ParkingLot)
    _flusher_parked: bool = False
    _all_closed: trio.Event = field(factory=trio.Event)
    _host_scope: trio.CancelScope = field(factory=trio.CancelScope)
    _accept_scope: trio.CancelScope = field(factory=trio.CancelScope)
    #: where the raw path's writer tasks run (set once serving)
    host_nursery: trio.Nursery | None = None
    # close deadlines of raw connections: a heap of (deadline, connection id, connection)
    _expiries: list[tuple[float, int, WsConnection]] = field(factory=list)
    _expiry_changed: trio.Event = field(factory=trio.Event)
    # The raw path's readiness: every ws:// connection waiting to be read is registered
    # (level-triggered, EPOLLIN) in this one epoll, which a single task (the poller) waits on:
    # one wake-up per batch of ready sockets, however many there are.
    _epoll: select.epoll = field(factory=select.epoll)
    _polled: dict[int, WsConnection] = field(factory=dict)  # fd -> connection
    _polling: bool = False  # the poller is handling a batch (it flushes at the end)
    on_messages_nowait: Any = field(init=False)
    #: metrics.stats, held here: the shell bumps it on every read and write
    stats: Stats = field(init=False)

    def __attrs_post_init__(self) -> None:
        self.recv_view = memoryview(self.recv_buffer)
        self.stats = self.metrics.stats
        self.on_messages_nowait = getattr(self.handler, "on_messages_nowait", _nothing_now)
        if self.config.certfile is not None and self.config.keyfile is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.config.certfile, self.config.keyfile)
            self._ssl = ctx

    # --- serving --------------------------------------------------------------------------------

    async def serve(
        self, *, task_status: trio.TaskStatus[BoundAddress] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen, serve until cancelled, then drain: new WebSocket upgrades get 503, /healthz
        503, every connection is closed with 1012, and up to drain_timeout is given to them
        to finish before the rest are cut and this returns (by raising the cancellation)."""
        config = self.config
        listeners = await trio.open_tcp_listeners(config.port, host=config.host or None)
        sockname = listeners[0].socket.getsockname()
        self.address = BoundAddress(
            host=config.host or sockname[0],
            port=sockname[1],
            scheme="wss" if self._ssl is not None else "ws",
        )
        async with trio.open_nursery() as root:
            conn_nursery: trio.Nursery = await root.start(self._host)
            # In the shielded host nursery: /healthz keeps answering (503) while draining.
            await conn_nursery.start(self._accept, listeners, conn_nursery)
            log.info("listening on %s", self.address.url)
            task_status.started(self.address)
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await self._drain()
                    self._accept_scope.cancel()
                    self._host_scope.cancel()

    async def _host(self, *, task_status: trio.TaskStatus[trio.Nursery]) -> None:
        # Shielded: cancelling serve() must not cut the connections before they are drained.
        self._host_scope.shield = True
        try:
            with self._host_scope:
                async with trio.open_nursery() as nursery:
                    self.host_nursery = nursery
                    nursery.start_soon(self._flusher)
                    nursery.start_soon(self._poller)
                    nursery.start_soon(self._ticker)
                    nursery.start_soon(self._expirer)
                    task_status.started(nursery)
                    await trio.sleep_forever()
        finally:
            self._epoll.close()  # every connection (all in this nursery) has ended

    async def _accept(
        self,
        listeners: list[trio.SocketListener],
        nursery: trio.Nursery,
        *,
        task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        # Not trio.serve_listeners: its per-connection wrapper keeps the SocketStream alive for
        # the connection's whole life; here the connection task holds the only reference.
        with self._accept_scope:
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    accepting.start_soon(self._accept_loop, listener, nursery)
                task_status.started(listeners)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                        raise
                    log.error(
                        "accept returned %s (%s); retrying in %s s",
                        errno.errorcode[exc.errno],
                        os.strerror(exc.errno),
                        ACCEPT_RETRY,
                        exc_info=True,
                    )
                    await trio.sleep(ACCEPT_RETRY)
                    continue
                # A constant name: trio would otherwise build one string per task.
                nursery.start_soon(self._handle_tcp, stream, name=_CONNECTION_TASK)
                del stream

    async def _drain(self) -> None:
        self.draining = True
        self.stats.draining = 1
        log.info("draining %d connection(s)", len(self.conns))
        for conn in list(self.conns.values()):
            conn.close(1012, "service restart")
        with trio.move_on_after(self.config.drain_timeout):
            while self.conns:
                await self._all_closed.wait()
        if self.conns:
            log.warning("drain timeout: cutting %d connection(s)", len(self.conns))

    # --- the flusher ----------------------------------------------------------------------------

    def add_dirty(self, conn: WsConnection) -> None:
        self.dirty.append(conn)
        if self._flusher_parked and not self._polling:
            self._flusher_parked = False
            self._lot.unpark()

    async def _flusher(self) -> None:
        """Write every dirty outbox once per scheduler tick: woken by the first send of a tick,
        it runs after the tasks of that tick have queued their frames. (What the poller's
        batches queue, the poller writes itself.)"""
        while True:
            if not self.dirty:
                self._flusher_parked = True
                await self._lot.park()
                continue
            self._flush()
            await trio.lowlevel.checkpoint()

    def _flush(self) -> None:
        dirty = self.dirty
        self.dirty = []
        for conn in dirty:
            conn.dirty = False
            if conn._writer_active or conn._ended:
                continue
            if conn.sock is None or conn.write_some():
                conn.start_writer()

    # --- the poller (raw path) -------------------------------------------------------------------

    def poll(self, conn: WsConnection) -> None:
        """Have the poller read `conn` (its task waits for a hand-off meanwhile)."""
        if conn._polled or conn._ended:
            return
        sock = conn.sock
        assert sock is not None
        fd = sock.fileno()
        self._epoll.register(fd, select.EPOLLIN)
        self._polled[fd] = conn
        conn._polled = True

    def unpoll(self, conn: WsConnection) -> None:
        """Stop reading `conn` in the poller (idempotent; before its socket is closed)."""
        if not conn._polled:
            return
        conn._polled = False
        sock = conn.sock
        assert sock is not None
        fd = sock.fileno()
        self._polled.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except OSError:  # pragma: no cover - the fd is registered while _polled says so
            log.exception("unregistering connection %d from the poller failed", conn.id)

    async def _poller(self) -> None:
        """Read every ready ws:// connection in one task: wait for the epoll to be readable,
        take its ready sockets, read each once (WsConnection.on_readable), then write what the
        batch queued; poll again at once while sockets are ready, for up to POLL_SLICE, before
        giving the other tasks their turn. Level-triggered: a socket not drained comes back in
        the next batch."""
        epoll = self._epoll
        epfd = epoll.fileno()
        polled = self._polled
        wait_readable = trio.lowlevel.wait_readable
        while True:
            await wait_readable(epfd)
            started = _monotonic()
            now = started
            ready = epoll.poll(0, POLL_EVENTS)
            while ready:
                self._polling = True
                try:
                    for fd, _events in ready:
                        conn = polled.get(fd)
                        if conn is None:
                            continue  # unpolled by an earlier event of this batch
                        try:
                            conn.on_readable(now)
                        except Exception:
                            log.exception("reading connection %d failed", conn.id)
                            conn._broken = True
                            conn._hand_off(None)
                finally:
                    self._polling = False
                if self.dirty:
                    self._flush()
                now = _monotonic()
                if now - started >= POLL_SLICE:
                    break
                ready = epoll.poll(0, POLL_EVENTS)

    def flushed(self, conn: WsConnection) -> None:
        try:
            self.handler.on_flushed(conn)
        except Exception:
            log.exception("handler.on_flushed failed on connection %d", conn.id)

    # --- close deadlines (raw path) ------------------------------------------------------------

    def expire_at(self, conn: WsConnection, deadline: float) -> None:
        """End `conn` (WsConnection.expire) once trio.current_time() reaches `deadline`."""
        heap = self._expiries
        heapq.heappush(heap, (deadline, conn.id, conn))
        if heap[0][2] is conn:
            self._expiry_changed.set()

    async def _expirer(self) -> None:
        heap = self._expiries
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                heapq.heappop(heap)[2].expire()
            changed = self._expiry_changed = trio.Event()
            with trio.move_on_at(heap[0][0] if heap else math.inf):
                await changed.wait()

    # --- the ticker -----------------------------------------------------------------------------

    async def _ticker(self) -> None:
        config = self.config
        sweep_every = max(0.05, min(config.heartbeat_interval, config.heartbeat_timeout) / 4)
        next_tick = next_sweep = trio.current_time()
        while True:
            await trio.sleep_until(min(next_tick, next_sweep))
            t = trio.current_time()
            if t >= next_tick:
                next_tick = t + TICK_INTERVAL
                try:
                    self.handler.tick(_monotonic())
                except Exception:
                    log.exception("handler.tick failed")
                # store work the handler's sync callbacks queued (MessagingService.maintain),
                # pausing so that the poller and flusher run between its slices
                maintain = getattr(self.handler, "maintain", None)
                if maintain is not None:
                    try:
                        await maintain(trio.lowlevel.checkpoint)
                    except Exception:
                        log.exception("handler.maintain failed")
            if t >= next_sweep:
                next_sweep = t + sweep_every
                self._sweep(_monotonic())

    def _sweep(self, now: float) -> None:
        """Heartbeat every connection; also flush outboxes filled without flush_soon()."""
        interval = self.config.heartbeat_interval
        deadline = interval + self.config.heartbeat_timeout
        stats = self.stats
        for conn in list(self.conns.values()):
            if conn.closing:
                continue
            if conn.outbox.pending_bytes and not conn.dirty and not conn._writer_active:
                stats.late_flushes += 1
                conn.flush_soon()
            silent = now - conn.last_rx
            if silent >= deadline:
                stats.heartbeat_timeouts += 1
                conn._close(1011, "heartbeat timeout", wait_peer=False)
            elif silent >= interval and now - conn.pinged_at >= interval:
                conn.pinged_at = now
                conn.send(_PING_FRAME)

    def forget(self, conn: WsConnection) -> None:
        if self.conns.pop(conn.id, None) is not None:
            self.stats.connections_open -= 1
        if not self.conns:
            self._all_closed.set()

    # --- one TCP connection ---------------------------------------------------------------------

    async def _handle_tcp(self, tcp: trio.SocketStream) -> None:
        # The handshake runs in its own frame, so that none of its state (h11 and wsproto
        # objects, the request) stays referenced while the WebSocket lives; nor does `tcp`
        # (the raw path detached its socket, the TLS path's stream wraps it).
        opened: tuple[WsConnection, bytes] | None = None
        try:
            opened = await self._handle(tcp)
        except Exception:
            log.exception("connection task failed")
        finally:
            if opened is None:
                await trio.aclose_forcefully(tcp)
        del tcp
        if opened is not None:
            conn, trailing = opened
            del opened
            try:
                await conn.run(trailing)
            except Exception:
                log.exception("connection %d failed", conn.id)

    async def _handle(self, tcp: trio.SocketStream) -> tuple[WsConnection, bytes] | None:
        """The opening handshake: plain HTTP is answered here; an accepted WebSocket upgrade
        returns its registered connection and the bytes that followed the request."""
        stats = self.stats
        try:
            peer = tcp.socket.getpeername()
            remote = f"{peer[0]}:{peer[1]}"
        except OSError:
            await trio.aclose_forcefully(tcp)
            return None
        stream: trio.abc.Stream = tcp
        request: _OpeningRequest | None = None
        failure: _HttpFailure | None = None
        with trio.move_on_after(self.config.handshake_timeout) as timeout:
            try:
                if self._ssl is not None:
                    tls = trio.SSLStream(tcp, self._ssl, server_side=True, https_compatible=True)
                    stream = tls
                    await tls.do_handshake()
                request = await _read_request(stream)
            except _HttpFailure as exc:
                failure = exc
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                stats.handshake_failures += 1
                await trio.aclose_forcefully(stream)
                return None
        if timeout.cancelled_caught:
            log.debug("handshake timeout from %s", remote)
            stats.handshake_failures += 1
            await trio.aclose_forcefully(stream)
            return None
        if failure is not None:
            stats.handshake_failures += 1
            self._count_http(failure.status)
            await _answer_and_close(stream, http.error(failure.status, failure.message))
            return None
        if request is None:  # closed before sending a request
            await trio.aclose_forcefully(stream)
            return None
        if not _is_upgrade(request):
            status, response = http.respond(
                request.method,
                request.target,
                draining=self.draining,
                metrics=self.metrics,
                web_chat=self.config.web_chat,
                host=next((v for n, v in request.headers if n == b"host"), None),
            )
            self._count_http(status)
            await _answer_and_close(stream, response)
            return None
        return await self._upgrade(tcp, stream, request, remote)

    def _count_http(self, status: int) -> None:
        counts = self.stats.http_requests
        counts[status] = counts.get(status, 0) + 1

    async def _upgrade(
        self, tcp: trio.SocketStream, stream: trio.abc.Stream, request: _OpeningRequest, remote: str
    ) -> tuple[WsConnection, bytes] | None:
        stats = self.stats
        if self.draining or len(self.conns) >= self.config.max_connections:
            stats.handshake_failures += 1
            self._count_http(503)
            reason = "draining" if self.draining else "too many connections"
            await _answer_and_close(stream, http.error(503, reason))
            return None
        handshake = H11Handshake(ConnectionType.SERVER)
        try:
            handshake.receive_data(request.raw)
            events = list(handshake.events())
        except WsRemoteProtocolError as exc:
            hint = exc.event_hint
            status = hint.status_code if isinstance(hint, RejectConnection) else 400
            stats.handshake_failures += 1
            self._count_http(status)
            await _answer_and_close(stream, http.error(status, str(exc)))
            return None
        if not events or not isinstance(events[0], WsRequest):
            stats.handshake_failures += 1
            self._count_http(400)
            await _answer_and_close(stream, http.error(400))
            return None
        trailing = _trailing_after_request(request.parser)
        if trailing is None:
            stats.handshake_failures += 1
            self._count_http(400)
            await _answer_and_close(stream, http.error(400, "an upgrade request has no body"))
            return None
        with trio.move_on_after(self.config.handshake_timeout) as timeout:
            try:
                await stream.send_all(handshake.send(AcceptConnection()))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                stats.handshake_failures += 1
                await trio.aclose_forcefully(stream)
                return None
        if timeout.cancelled_caught:
            stats.handshake_failures += 1
            await trio.aclose_forcefully(stream)
            return None
        sock: socket.socket | None = None
        tls: trio.abc.Stream | None = None
        if self._ssl is None:
            # From here on the socket is ours: no trio wrapper on the data path.
            sock = socket.socket(fileno=tcp.socket.detach())
            sock.setblocking(False)
        else:
            tls = stream
        conn = WsConnection(
            id=next(_ids),
            remote=remote,
            path=request.target,
            outbox=Outbox(self.config.outbox_max_bytes, self.config.outbox_max_frames),
            parser=FrameParser(self.config.max_message_bytes),
            server=self,
            sock=sock,
            stream=tls,
        )
        self.conns[conn.id] = conn
        if self._all_closed.is_set():
            self._all_closed = trio.Event()
        stats.connections_open += 1
        stats.connections_total += 1
        return conn, trailing


# --- the opening request ------------------------------------------------------------------------


async def _read_request(stream: trio.abc.Stream) -> _OpeningRequest | None:
    """Read the opening HTTP request (bounded by MAX_REQUEST_BYTES); None when the peer closed
    first. Raises _HttpFailure for a request h11 rejects."""
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    raw = bytearray()
    while True:
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError as exc:
            raise _HttpFailure(exc.error_status_hint, "bad request") from None
        if event is h11.NEED_DATA:
            data = await stream.receive_some(MAX_REQUEST_BYTES)
            raw += data
            parser.receive_data(bytes(data))
            continue
        if isinstance(event, h11.Request):
            return _OpeningRequest(
                method=event.method.decode("ascii", "replace"),
                target=event.target.decode("ascii", "replace"),
                headers=[(bytes(name), bytes(value)) for name, value in event.headers],
                raw=bytes(raw),
                parser=parser,
            )
        return None  # ConnectionClosed (or nothing more will come)


def _is_upgrade(request: _OpeningRequest) -> bool:
    return any(
        name == b"upgrade" and b"websocket" in value.lower() for name, value in request.headers
    )


def _trailing_after_request(parser: h11.Connection) -> bytes | None:
    """The bytes the client sent after its upgrade request (early WebSocket frames), or None
    when the request has a body or is incomplete."""
    while True:
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError:
            return None
        if event is h11.PAUSED:
            return bytes(parser.trailing_data[0])
        if not isinstance(event, h11.EndOfMessage):
            return None


async def _answer_and_close(stream: trio.abc.Stream, response: bytes) -> None:
    """Write a whole HTTP response, then end the connection gracefully (bounded)."""
    with trio.move_on_after(HTTP_LINGER):
        try:
            await stream.send_all(response)
            if isinstance(stream, trio.SocketStream):
                await stream.send_eof()
                while await stream.receive_some(4096):
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await trio.aclose_forcefully(stream)
