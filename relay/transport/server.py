"""The Trio shell's server: accept, opening handshake, flusher, ticker, drain.

Shape of one server (every task lives in a visible nursery):

    Server.serve ── root nursery
      └─ host (shielded, so a cancelled serve can still drain) ── host nursery
           ├─ accept loops (one per listener), starting one task per TCP connection here;
           │  handshakes and sign-ins take turns (relay.transport.turns)
           ├─ poller: ONE task reading every ws:// connection (relay.transport.poller)
           ├─ flusher: ONE task writing every other dirty outbox, one `send` per connection
           │  per tick
           ├─ ticker: send_later's writes (relay.transport.later), handler.tick(now) every
           │  250 ms; the sweep (relay.transport.sweep)
           ├─ expirer: ends ws:// connections whose close deadline passed
           │  (relay.transport.deadlines)
           ├─ per connection: its task (handshake, then RawConnection/TlsConnection.run);
           │  wss:// adds a nursery for its writer task. A ws:// connection's task ends once
           │  nothing needs waiting (the connection is then dormant in the poller); the
           │  poller starts a task per hand-off (RawConnection._resume)
           └─ ws:// writer tasks: one per connection only while its kernel send buffer is full

Invariants:
- After the 101 response a ws:// socket is a plain non-blocking stdlib socket owned by its
  RawConnection (no trio wrapper on the data path); wss:// keeps trio.SSLStream (TLS needs
  it). Who reads and who waits on a socket: see relay.transport.poller.
- A connection is in `Server.dirty` at most once (WebSocket.dirty says so).
- Frames are queued only through `Connection.send`, which marks the connection dirty, or
  `Connection.send_later`, which leaves them for the connection's next write, at the latest
  the next tick (relay.transport.later). The sweep flushes any outbox it finds pending
  without either (relay.transport.sweep).
- Closing is bounded (relay.transport.connection); the drain adds drain_timeout over all
  connections.

Heartbeat and the bounds on what connections queue (1011, 1013): relay.transport.sweep, run
by the ticker. Per peer address, relay.transport.admission's caps; a connection over them is
answered 429 before its request is read.

Close codes the shell itself uses: 1003 binary frame, 1002/1007/1009 from the frame parser,
1011 handler failure and heartbeat timeout, 1012 shutdown, 1013 the sweep's bounds, 503 (HTTP)
for upgrades while draining or over max_connections, 403 for a browser origin not allowed.
`on_close` receives the code the connection ended with (relay.transport.websocket: the
peer's, ours, or 1006).

Plain HTTP (not an upgrade) is answered by relay.transport.plain. /metrics: with
metrics_listen, served on that address only (its own listener answers nothing else); without,
on the main port to loopback peers only. A handler that keeps metrics
of its own (relay.metrics.Instrumented) is handed the server's RelayMetrics once, here.

Delivery latency: the core stamps `stats.delivery_mark` (when the oldest message answered or
released for delivery since the last flush was accepted); each flush that writes observes
now - mark once into `relay_delivery_seconds` and clears it. One clock read per flush, none per
message or recipient. A connection whose kernel buffer is full (or a wss:// one) is written
later by its writer task: that wait is not in the figure.
"""

from __future__ import annotations

import _socket
import errno
import itertools
import logging
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from attrs import define, field

from relay.config import RelayConfig
from relay.fastpath import FrameParser, Outbox
from relay.health import HealthReporting
from relay.metrics import Instrumented, RelayMetrics, Stats
from relay.ports import Connection, ConnectionHandler, InlineHandler, Maintained
from relay.transport.address import BoundAddress
from relay.transport.admission import Admission, is_loopback_peer
from relay.transport.connection import RawConnection, TlsConnection, WsConnection
from relay.transport.deadlines import CloseDeadlines
from relay.transport.deflate import Deflaters
from relay.transport.handshake import (
    HttpFailure,
    OpeningRequest,
    accept_upgrade,
    deflate_offered,
    origin_allowed,
    read_request,
)
from relay.transport.httpserver import RouteCollector, RouteTable
from relay.transport.later import write_deferred
from relay.transport.plain import PlainHttp
from relay.transport.poller import Poller
from relay.transport.sweep import sweep, sweep_every
from relay.transport.turns import Turn, Turns, TurnsCollector, TurnStream
from relay.transport.websocket import PREAUTH_MESSAGE_BYTES, WsState

log = logging.getLogger("relay.transport")

#: Size of the one receive buffer the ws:// reads of a server share (reads never interleave).
RECV_SIZE = 256 * 1024
#: Period of handler.tick(now).
TICK_INTERVAL = 0.25
#: Pause before accepting again after accept() failed for lack of descriptors or memory.
ACCEPT_RETRY = 0.1
#: accept() errors that mean "out of resources for now" (as trio.serve_listeners has them).
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: accept() errors about one connection that is already gone: skip it (as trio does).
_ACCEPT_SKIP_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPERM, errno.EPROTO})
#: Most connections taken from the kernel's accept queue per wake-up of an accept loop.
#: trio's own `accept` takes one per pass of the scheduler. In the bench's storm (19,798
#: devices within a second) the kernel's queue (somaxconn, 4,096 on that VM) then overflowed
#: about 230,000 times per run: SYNs were dropped and retransmitted, and 1,000-2,600
#: connections completed by SYN cookies were reset. Draining the queue per wake-up: about
#: 3,000 overflows per run, no connection lost.
ACCEPT_BATCH = 512

_CONNECTION_TASK = "relay.transport connection"
_ids = itertools.count(1)
_monotonic = time.monotonic
_ENDED = WsState.ENDED


def _nothing_now(conn: Connection, payloads: list[bytes]) -> int:
    return 0


@define(eq=False)
class Server:
    """One listening relay: its connections, its flusher, its ticker, its drain."""

    config: RelayConfig
    handler: ConnectionHandler
    metrics: RelayMetrics = field(factory=RelayMetrics)
    address: BoundAddress | None = None
    #: where /metrics is served alone (config.metrics_listen), once listening
    metrics_address: BoundAddress | None = None
    draining: bool = False
    conns: dict[int, WsConnection] = field(factory=dict)
    dirty: list[WsConnection] = field(factory=list)
    #: connections that got frames by `send_later` since the last tick (WsConnection.deferred)
    #: (written by relay.transport.later.write_deferred on each tick)
    later: list[WsConnection] = field(factory=list)
    recv_buffer: bytearray = field(factory=lambda: bytearray(RECV_SIZE))
    recv_view: memoryview = field(init=False)
    poller: Poller = field(factory=Poller)
    #: the line for joining work: handshakes and sign-ins (relay.transport.turns)
    turns: Turns = field(factory=Turns)
    _ssl: ssl.SSLContext | None = None
    _lot: trio.lowlevel.ParkingLot = field(factory=trio.lowlevel.ParkingLot)
    _flusher_parked: bool = False
    _all_closed: trio.Event = field(factory=trio.Event)
    _host_scope: trio.CancelScope = field(factory=trio.CancelScope)
    _accept_scope: trio.CancelScope = field(factory=trio.CancelScope)
    #: where the ws:// writer tasks run (set once serving)
    host_nursery: trio.Nursery | None = None
    #: close deadlines of ws:// connections, and the expirer task
    deadlines: CloseDeadlines = field(factory=CloseDeadlines)
    #: per-address caps (relay.transport.admission)
    admission: Admission = field(init=False)
    _origins: frozenset[str] = field(init=False)  # config.origins, parsed once
    # The handler's optional abilities (relay.ports), decided once.
    on_messages_nowait: Callable[[Connection, list[bytes]], int] = field(init=False)
    _maintain: Callable[[Callable[[], Awaitable[None]]], Awaitable[None]] | None = field(init=False)
    _health: HealthReporting | None = field(init=False, default=None)
    #: metrics.stats, held here: the shell bumps it on every read and write
    stats: Stats = field(init=False)
    #: `add_dirty` bound once: every connection's `wake` shares it (a bound method per
    #: connection was 64 bytes of each)
    _wake: Callable[[WsConnection], None] = field(init=False)
    #: permessage-deflate's shared compressors (relay.transport.deflate)
    deflaters: Deflaters = field(init=False)
    #: routed plain HTTP (relay.transport.httpserver): the paths it claims are served there,
    #: with keep-alive and request bodies; None: every plain request is answered and closed
    routes: RouteTable | None = field(default=None, kw_only=True)
    #: the plain-HTTP answers of both ports (relay.transport.plain)
    plain: PlainHttp = field(init=False)

    def __attrs_post_init__(self) -> None:
        self.recv_view = memoryview(self.recv_buffer)
        self._wake = self.add_dirty
        self.stats = self.metrics.stats
        self.deflaters = Deflaters(self.config.compress_min_bytes, self.stats)
        self._origins = self.config.origins
        self.admission = Admission(
            self.config.max_connections_per_address, self.config.handshake_rate_per_address
        )
        handler = self.handler
        self.on_messages_nowait = (
            handler.on_messages_nowait if isinstance(handler, InlineHandler) else _nothing_now
        )
        self._maintain = handler.maintain if isinstance(handler, Maintained) else None
        # /healthz asks the handler (relay.health) whether what it depends on is reachable
        self._health = handler if isinstance(handler, HealthReporting) else None
        if isinstance(handler, Instrumented):
            handler.instrument(self.metrics)
        if self.config.certfile is not None and self.config.keyfile is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.config.certfile, self.config.keyfile)
            self._ssl = ctx
        if self.routes is not None:
            self.metrics.registry.register(RouteCollector(self.routes))
        self.metrics.registry.register(TurnsCollector(self.turns))
        self.plain = PlainHttp(
            self.config,
            self.metrics,
            self.routes,
            draining=lambda: self.draining,
            problem=self._problem,
        )

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
        metrics_listeners: list[trio.SocketListener] = []
        metrics_at = config.metrics_address
        if metrics_at is not None:
            metrics_listeners = await trio.open_tcp_listeners(metrics_at[1], host=metrics_at[0])
            bound = metrics_listeners[0].socket.getsockname()
            self.metrics_address = BoundAddress(host=metrics_at[0], port=bound[1], scheme="http")
        async with trio.open_nursery() as root:
            conn_nursery: trio.Nursery = await root.start(self._host)
            # In the shielded host nursery: /healthz keeps answering (503) while draining.
            await conn_nursery.start(self._accept, listeners, conn_nursery)
            # Not shielded: the metrics listener closes when the drain begins.
            for listener in metrics_listeners:
                root.start_soon(self._accept_loop, listener, root, self.plain.serve_metrics)
            log.info("listening on %s", self.address.url)
            if self.metrics_address is not None:
                log.info("serving /metrics on %s/metrics", self.metrics_address.url)
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
                    nursery.start_soon(self.poller.run, self._flush)
                    nursery.start_soon(self._ticker)
                    nursery.start_soon(self.deadlines.run)
                    task_status.started(nursery)
                    await trio.sleep_forever()
        finally:
            # Every task of this nursery has ended: what is left are dormant ws:// connections
            # (no task of their own; relay.transport.connection), ended here.
            for conn in list(self.conns.values()):
                if isinstance(conn, RawConnection):
                    conn.abandon()
            self.poller.close()

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
                    accepting.start_soon(self._accept_loop, listener, nursery, self._handle_tcp)
                task_status.started(listeners)

    async def _accept_loop(
        self,
        listener: trio.SocketListener,
        nursery: trio.Nursery,
        handle: Callable[[trio.SocketStream], Awaitable[None]],
    ) -> None:
        # Out of descriptors (or memory), accept fails every ACCEPT_RETRY until some are
        # freed: one warning per such episode, and one line when it ends.
        failures = 0
        async with listener:
            # The listening socket as a plain stdlib socket (a second descriptor of it): up to
            # ACCEPT_BATCH non-blocking accepts per wake-up, with no scheduler pass between.
            with socket.socket(fileno=os.dup(listener.socket.fileno())) as raw:
                raw.setblocking(False)
                while True:
                    await trio.lowlevel.wait_readable(listener.socket)
                    for _ in range(ACCEPT_BATCH):
                        try:
                            sock, _peer = raw.accept()
                        except BlockingIOError:
                            break
                        except OSError as exc:
                            if exc.errno in _ACCEPT_SKIP_ERRNOS:
                                continue
                            if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                                raise
                            if not failures:
                                log.warning(
                                    "cannot accept connections: %s (%s); retrying every %s s",
                                    errno.errorcode[exc.errno],
                                    os.strerror(exc.errno),
                                    ACCEPT_RETRY,
                                )
                            failures += 1
                            await trio.sleep(ACCEPT_RETRY)
                            break
                        if failures:
                            log.info(
                                "accepting connections again after %d failed attempts", failures
                            )
                            failures = 0
                        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
                        # A constant name: trio would otherwise build one string per task.
                        nursery.start_soon(handle, stream, name=_CONNECTION_TASK)
                        del stream, sock

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
        if self._flusher_parked and not self.poller.polling:
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
        if not dirty:
            return
        self.dirty = []
        for conn in dirty:
            conn.dirty = False
            if conn.outbox.dropped:
                conn.count_dropped()
            if conn.writer_active or conn.ws_state is _ENDED:
                continue
            if conn.flush_now():
                conn.start_writer()
        stats = self.stats
        mark = stats.delivery_mark
        if mark:
            stats.delivery_mark = 0.0
            stats.delivery_seconds.observe(_monotonic() - mark)

    def defer(self, conn: WsConnection) -> None:
        """`conn` holds frames queued by send_later (relay.transport.later)."""
        self.later.append(conn)

    def expire_at(self, conn: RawConnection, deadline: float) -> None:
        """End `conn` (RawConnection.expire) once trio.current_time() reaches `deadline`."""
        self.deadlines.at(conn, deadline)

    def flushed(self, conn: WsConnection) -> None:
        try:
            self.handler.on_flushed(conn)
        except Exception:
            log.exception("handler.on_flushed failed on connection %d", conn.id)

    # --- the ticker -----------------------------------------------------------------------------

    async def _ticker(self) -> None:
        config = self.config
        every = sweep_every(config)
        next_tick = next_sweep = trio.current_time()
        while True:
            await trio.sleep_until(min(next_tick, next_sweep))
            t = trio.current_time()
            if t >= next_tick:
                next_tick = t + TICK_INTERVAL
                # before maintain(): the receipts it queues by send_later join these writes
                later = self.later
                if later:
                    self.later = []
                    await write_deferred(later, trio.lowlevel.checkpoint)
                try:
                    self.handler.tick(_monotonic())
                except Exception:
                    log.exception("handler.tick failed")
                self.admission.prune(t)
                # store work the handler's sync callbacks queued (MessagingService.maintain),
                # pausing so that the poller and flusher run between its slices, and before
                # its first: tick() alone is some tenths of a millisecond
                maintain = self._maintain
                if maintain is not None:
                    await trio.lowlevel.checkpoint()
                    try:
                        await maintain(trio.lowlevel.checkpoint)
                    except Exception:
                        log.exception("handler.maintain failed")
            if t >= next_sweep:
                next_sweep = t + every
                await sweep(self.conns.values(), config, self.stats, t, trio.lowlevel.checkpoint)

    def forget(self, conn: WsConnection) -> None:
        if self.conns.pop(conn.id, None) is not None:
            self.stats.connections_open -= 1
            if conn.admitted is not None:
                self.admission.release(conn.admitted)
        if not self.conns:
            self._all_closed.set()

    # --- one TCP connection ---------------------------------------------------------------------

    async def _handle_tcp(self, tcp: trio.SocketStream) -> None:
        try:
            peer = tcp.socket.getpeername()
        except OSError:
            await trio.aclose_forcefully(tcp)
            return
        address = str(peer[0])
        admitted: str | None = None
        if self.config.limit_loopback or not is_loopback_peer(address):
            refusal = self.admission.admit(address, trio.current_time())
            if refusal is not None:
                log.debug("refused %s: %s", address, refusal)
                await self.plain.refuse(tcp, HttpFailure(429, refusal))
                return
            admitted = address
        await self._serve_tcp(tcp, f"{address}:{peer[1]}", admitted)

    async def _serve_tcp(self, tcp: trio.SocketStream, remote: str, admitted: str | None) -> None:
        # The handshake runs in its own frame, so that none of its state (h11 and wsproto
        # objects, the request) stays referenced while the WebSocket lives; nor does `tcp`
        # (ws:// detached its socket, wss://'s stream wraps it).
        # `admitted`: the admission this connection holds; released here when no WebSocket
        # opened, else when the server forgets the connection (a ws:// one outlives its task).
        opened: tuple[WsConnection, bytes] | None = None
        turn = self.turns.turn()
        try:
            opened = await self._handle(tcp, remote, turn)
        except Exception:
            log.exception("connection task failed")
        finally:
            turn.release()
            if opened is None:
                if admitted is not None:
                    self.admission.release(admitted)
                await trio.aclose_forcefully(tcp)
        del tcp
        if opened is not None:
            conn, trailing = opened
            del opened
            conn.admitted = admitted
            try:
                await conn.run(trailing)
            except Exception:
                log.exception("connection %d failed", conn.id)

    async def _handle(
        self, tcp: trio.SocketStream, remote: str, turn: Turn
    ) -> tuple[WsConnection, bytes] | None:
        """The opening handshake: plain HTTP is answered here; an accepted WebSocket upgrade
        returns its registered connection and the bytes that followed the request. `turn`:
        held while the relay works on the handshake (wss://'s TLS handshake, the request, the
        upgrade), not while it waits for the client (relay.transport.turns), nor while it
        answers plain HTTP."""
        stats = self.stats
        stream: trio.abc.Stream = tcp
        under_tls: TurnStream | None = None
        request: OpeningRequest | None = None
        failure: HttpFailure | None = None
        with trio.move_on_after(self.config.handshake_timeout) as timeout:
            turn.deadline = timeout
            try:
                if self._ssl is None:
                    request = await read_request(tcp, partial(turn.readable, tcp.socket))
                else:
                    # the turns are taken beneath the TLS: bytes it has already decrypted
                    # leave the socket unreadable, so a wait above it could hang
                    under_tls = TurnStream(tcp, turn)
                    tls = trio.SSLStream(
                        under_tls, self._ssl, server_side=True, https_compatible=True
                    )
                    stream = tls
                    await tls.do_handshake()
                    request = await read_request(tls)
                if request is not None and request.is_upgrade:
                    await turn.take()  # an upgrade never skips the line, whatever its path
            except HttpFailure as exc:
                failure = exc
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                stats.handshake_failures += 1
                await trio.aclose_forcefully(stream)
                return None
            finally:
                if under_tls is not None:
                    under_tls.turn = None  # the connection's own reads take no turns
        if not (request is not None and request.is_upgrade):
            turn.release()
        if timeout.cancelled_caught:
            log.debug("handshake timeout from %s", remote)
            stats.handshake_failures += 1
            await trio.aclose_forcefully(stream)
            return None
        if failure is not None:
            await self.plain.refuse(stream, failure)
            return None
        if request is None:  # closed before sending a request
            await trio.aclose_forcefully(stream)
            return None
        if not request.is_upgrade:
            await self.plain.answer(stream, request, remote)
            return None
        return await self._upgrade(tcp, stream, request, remote, turn)

    def _problem(self) -> str | None:
        return None if self._health is None else self._health.problem()

    async def _upgrade(
        self,
        tcp: trio.SocketStream,
        stream: trio.abc.Stream,
        request: OpeningRequest,
        remote: str,
        turn: Turn,
    ) -> tuple[WsConnection, bytes] | None:
        stats = self.stats
        config = self.config
        try:
            if self.draining:
                raise HttpFailure(503, "draining")
            if len(self.conns) >= config.max_connections:
                raise HttpFailure(503, "too many connections")
            deflate = deflate_offered(request) if config.compression else None
            response, trailing = accept_upgrade(request, deflate)
            if not origin_allowed(request, self._origins, config.web_chat):
                raise HttpFailure(403, "this origin may not open WebSockets here")
        except HttpFailure as exc:
            turn.release()
            await self.plain.refuse(stream, exc)
            return None
        with trio.move_on_after(self.config.handshake_timeout) as timeout:
            try:
                await stream.send_all(response)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                stats.handshake_failures += 1
                await trio.aclose_forcefully(stream)
                return None
        if timeout.cancelled_caught:
            stats.handshake_failures += 1
            await trio.aclose_forcefully(stream)
            return None
        # what both drivers take; each adds its transport (the socket, or the TLS stream)
        shared: dict[str, Any] = {
            "outbox": Outbox(config.outbox_max_bytes, config.outbox_max_frames),
            "parser": FrameParser(min(config.max_message_bytes, PREAUTH_MESSAGE_BYTES)),
            "stats": stats,
            "wake": self._wake,
            "last_rx": trio.current_time(),
            "message_limit": config.max_message_bytes,
            "id": next(_ids),
            "remote": remote,
            "path": request.target,
            "server": self,
        }
        conn: WsConnection
        if self._ssl is None:
            # From here on the socket is ours: no trio wrapper on the data path.
            # The C socket type, given what it is: no system call to ask, and not tracked by
            # the collector as socket.socket is (what an idle connection keeps is walked by
            # every collection of its generation; test_an_idle_connection_keeps_few_objects...).
            raw = tcp.socket
            sock = _socket.socket(raw.family, raw.type, raw.proto, raw.detach())
            sock.setblocking(False)
            conn = RawConnection(sock=sock, fd=sock.fileno(), **shared)
        else:
            conn = TlsConnection(stream=stream, **shared)
        if deflate is not None:
            conn.use_deflate(*self.deflaters.for_params(deflate))
        self.conns[conn.id] = conn
        if self._all_closed.is_set():
            self._all_closed = trio.Event()
        stats.connections_open += 1
        stats.connections_total += 1
        return conn, trailing
