"""The shell's connections: the sans-IO WebSocket driven over a socket (the Connection port).

`WsConnection` adds to relay.transport.websocket.WebSocket what needs trio: the handler
calls, the close deadline, the life cycle (`run`). Its two drivers:

- `RawConnection` (ws://): a plain non-blocking stdlib socket read by the server's poller
  (relay.transport.poller), which hands the connection's task only what must wait; writes
  are non-blocking `send`s, and a writer task exists only while the kernel buffer is full.
  No task, nursery or cancel scope per idle connection (memory per idle connection counts;
  a parked task with its coroutine frames cost about 3 kB of the 6.7): after its opening, a
  connection waiting for nothing is *dormant*, registered in the poller and owned by no
  task; what needs waiting (an `on_messages` the poller cannot finish, the close) gets a task
  per hand-off (`_hand_off` starts `_resume`). Every wait is on the socket, so `_mark_broken`
  (a failed write, or the close deadline through the server's expirer) ends them all with
  `notify_closing`, and hands a dormant connection to a task that ends it.
- `TlsConnection` (wss://): a trio.SSLStream read by the connection's task; every write is
  made by a writer task in the connection's nursery, whose scope carries the close deadline
  and is cancelled when the transport breaks.

Invariants:
- `handler.on_close` is called exactly once per connection that got `on_open`.
- Closing is bounded: the wait for the peer's close, the flush of ours and the wait for the
  peer's FIN share one deadline, CLOSE_TIMEOUT after closing began.
- A connection whose writer task is active is skipped by the flusher (the writer owns its
  outbox then).
- ws://: a connection is in the poller exactly while no task handles it (dormant); a
  hand-off unregisters it and starts one task, so at most one task reads or ends it.

Logging (relay.logs; logger relay.transport): one INFO line when a connection opens and one
when it ends (its close code, the reason, and who closed: relay, peer, or network when no
close frame was exchanged), WARNING instead when the relay closed it 1013 (a slow consumer) or
1011; one INFO line for a protocol violation the relay closes the connection for. Never the
request path (a token may ride in it) nor anything the client sent but the peer's close reason.
"""

from __future__ import annotations

import _socket
import logging
import socket
from collections.abc import Callable
from typing import Any, Protocol

import trio
from attrs import define

from relay.fastpath import OP_CLOSE, parse_close
from relay.ports import Connection, ConnectionHandler
from relay.transport.poller import Poller
from relay.transport.turns import Turns
from relay.transport.websocket import WebSocket, WsState


class Host(Protocol):
    """What a connection uses of the server that accepted it (relay.transport.server.Server)."""

    handler: ConnectionHandler
    poller: Poller
    turns: Turns  # the line for joining work (handshakes, sign-ins)
    recv_buffer: bytearray  # the poller's shared read buffer
    recv_view: memoryview
    host_nursery: trio.Nursery | None
    on_messages_nowait: Callable[[Connection, list[bytes]], int]

    def flushed(self, conn: WsConnection) -> None: ...

    def defer(self, conn: WsConnection) -> None: ...

    def expire_at(self, conn: RawConnection, deadline: float) -> None: ...

    def forget(self, conn: WsConnection) -> None: ...


log = logging.getLogger("relay.transport")

#: How long a closing connection waits for the peer's close frame and its TCP end.
CLOSE_TIMEOUT = 2.0
#: Most bytes one read of a wss:// connection takes.
RECV_SIZE = 256 * 1024

_OPEN = WsState.OPEN
_ENDED = WsState.ENDED

#: What the poller hands a connection's task: (payloads left, stop op, its payload); see
#: WebSocket.receive.
_Work = tuple[list[bytes], int, bytes]


#: The name of every hand-off task (a constant: trio would otherwise build one per task).
_RESUME_TASK = "relay.transport connection hand-off"


@define(eq=False, kw_only=True)
class WsConnection(WebSocket):
    """One WebSocket after its handshake: the Connection the core is handed."""

    id: int
    remote: str
    path: str
    server: Host
    state: Any = None  # the core's slot (relay.ports.Connection)
    close_deadline: float = 0.0
    writer_active: bool = False
    #: in the server's list of connections holding frames queued by `send_later` (at most once)
    deferred: bool = False
    _opened: bool = False
    _broken: bool = False  # the transport failed or its deadline passed: no wait starts again
    _idle: trio.Event | None = None  # set when the writer task ends
    #: why the connection ends, for its log line: the reason of the close frame it ends with,
    #: and who sent it first ("relay", "peer"; "" while none was exchanged)
    close_reason: str = ""
    closed_by: str = ""
    #: the peer address whose admission (relay.transport.admission) this connection holds
    #: until the server forgets it; None when uncapped
    admitted: str | None = None

    # --- the Connection port (called by the core) ------------------------------------------

    def send_later(self, frame: bytes) -> bool:
        """Queue a frame for the next write this connection makes anyway, at the latest the
        server's next tick (the Connection port's `send_later`)."""
        if not self.queue_quietly(frame):
            return False
        if not self.dirty and not self.deferred:
            self.deferred = True
            self.server.defer(self)
        return True

    def close(self, code: int, reason: str = "") -> None:
        """Queue a close frame after what is queued, then end the connection: wait (bounded
        by CLOSE_TIMEOUT) for the peer's close, then close the socket. Idempotent."""
        if self.begin_close(code, reason):
            self.close_reason, self.closed_by = reason, "relay"
            self._closing(wait_peer=True)

    def close_now(self, code: int, reason: str) -> None:
        """Close without waiting for the peer (it is presumed dead): our close frame is
        written if the kernel takes it at once, then the connection ends."""
        if self.begin_close(code, reason):
            self.close_reason, self.closed_by = reason, "relay"
            self._closing(wait_peer=False)

    # --- driver hooks -----------------------------------------------------------------------

    def _closing(self, *, wait_peer: bool) -> None:
        """Closing began (our close frame is queued): bound it and have it written."""
        now = trio.current_time()
        self.close_deadline = now + CLOSE_TIMEOUT if wait_peer else now
        self._bound_close()
        self.flush_soon()

    def _bound_close(self) -> None:
        raise NotImplementedError

    def _mark_broken(self) -> None:
        """Stop the connection: every wait on its transport ends and none starts again."""
        raise NotImplementedError

    def flush_now(self) -> bool:
        """Write what is queued as far as possible without waiting; True: the rest needs
        the writer task (start_writer)."""
        raise NotImplementedError

    def start_writer(self) -> None:
        raise NotImplementedError

    async def _read(self) -> None:
        raise NotImplementedError

    async def _linger(self) -> None:
        """After our close frame is written (see RawConnection)."""

    async def _close_transport(self) -> None:
        raise NotImplementedError

    # --- reading ----------------------------------------------------------------------------

    async def _process(self, data: bytes | bytearray | memoryview) -> bool:
        """Feed received bytes to the WebSocket and act on them; True: stop reading."""
        payloads, stop_op, stop_payload = self.receive(data)
        return await self._handle_events(payloads, stop_op, stop_payload)

    async def _handle_events(
        self, payloads: list[bytes], stop_op: int, stop_payload: bytes
    ) -> bool:
        if payloads and self.ws_state is _OPEN:
            try:
                await self.server.handler.on_messages(self, payloads)
            except Exception:
                log.exception("handler.on_messages failed on connection %d", self.id)
                self.close(1011, "internal error")
        return self._end_of_read(stop_op, stop_payload)

    async def _joined(self, work: _Work) -> bool:
        """`_handle_events(*work)`; a connection not yet signed in waits for a turn first
        (relay.transport.turns): a storm's sign-ins go through a few at a time."""
        if self.established:
            return await self._handle_events(*work)
        self.input_queued = True
        try:
            await self.server.turns.limiter.acquire_on_behalf_of(self)
        finally:
            self.input_queued = False
        try:
            return await self._handle_events(*work)
        finally:
            self.server.turns.limiter.release_on_behalf_of(self)

    def _end_of_read(self, stop_op: int, stop_payload: bytes) -> bool:
        peer_closing = stop_op == OP_CLOSE and self.ws_state is _OPEN
        stop, began_closing = self.end_of_read(stop_op, stop_payload)
        if began_closing:
            if peer_closing:
                self.close_reason, self.closed_by = parse_close(stop_payload)[1], "peer"
            else:  # a binary frame (1003) or what the frame parser refused
                parser = self.parser
                reason = parser.close_reason if parser.failed else "binary frames are not supported"
                self.close_reason, self.closed_by = reason, "relay"
                self._log_violation()
            self._closing(wait_peer=True)
        return stop

    def _log_violation(self) -> None:
        log.info(
            "connection %d from %s broke the WebSocket protocol: closing %d (%s)",
            self.id,
            self.remote,
            self.close_code,
            self.close_reason,
            extra={
                "conn": self.id,
                "peer": self.remote,
                "code": self.close_code,
                "reason": self.close_reason,
            },
        )

    def _log_closed(self) -> None:
        code = self.close_code
        by = self.closed_by or "network"
        level = logging.WARNING if by == "relay" and code in (1011, 1013) else logging.INFO
        if not log.isEnabledFor(level):
            return
        log.log(
            level,
            "connection %d from %s closed: %d %s (by %s)",
            self.id,
            self.remote,
            code,
            self.close_reason or "-",
            by,
            extra={
                "conn": self.id,
                "peer": self.remote,
                "code": code,
                "reason": self.close_reason,
                "by": by,
            },
        )

    # --- life cycle -------------------------------------------------------------------------

    async def run(self, trailing: bytes) -> None:
        """Serve the connection until it ends; the caller registered it with the server."""
        try:
            await self._serve(trailing)
        finally:
            await self._teardown()

    async def _serve(self, trailing: bytes) -> None:
        self._open()
        if self.ws_state is _OPEN and not (trailing and await self._process(trailing)):
            await self._read()
        await self._close_down()

    def _open(self) -> None:
        """Log the opening and tell the handler. A plain function, not inline in a coroutine:
        logging's caller lookup (f_back) would give the coroutine a frame object (216 bytes)
        that then lives as long as the connection."""
        self._opened = True
        if log.isEnabledFor(logging.INFO):
            log.info(
                "connection %d opened from %s",
                self.id,
                self.remote,
                extra={"conn": self.id, "peer": self.remote},
            )
        try:
            self.server.handler.on_open(self)
        except Exception:
            log.exception("handler.on_open failed on connection %d", self.id)
            self.close(1011, "internal error")

    async def _close_down(self) -> None:
        """Reading ended: once closing, write up to our close frame and linger (bounded by
        the close deadline)."""
        if self.closing and not self._broken:
            await self._wait_flushed()
            await self._linger()

    async def _wait_flushed(self) -> None:
        """Return once everything up to the close frame reached the kernel (or the peer broke)."""
        while not self._broken:
            if self.writer_active:
                self._idle = trio.Event()
                await self._idle.wait()
                continue
            if not self.outbox.pending_bytes or self.close_written:
                return
            if self.flush_now():
                self.start_writer()

    async def _teardown(self) -> None:
        self.end()
        self.count_dropped()
        await self._close_transport()
        self._ended()

    def _ended(self) -> None:
        """The transport is closed: forget the connection and tell the handler."""
        self.server.forget(self)
        if self._opened:
            self._log_closed()
            try:
                self.server.handler.on_close(self, self.close_code)
            except Exception:
                log.exception("handler.on_close failed on connection %d", self.id)

    def _writer_done(self) -> None:
        self.writer_active = False
        if self._idle is not None:
            self._idle.set()


@define(eq=False, kw_only=True)
class RawConnection(WsConnection):
    """ws://: read by the server's poller, written with non-blocking sends."""

    # the C socket type: unlike socket.socket (a Python subclass), it is not tracked by the
    # collector, which then walks one object fewer per connection
    sock: _socket.socket
    fd: int  # sock.fileno(), kept: the poller's key, valid until the socket is closed

    def _bound_close(self) -> None:
        self.server.expire_at(self, self.close_deadline)

    def _closing(self, *, wait_peer: bool) -> None:
        super()._closing(wait_peer=wait_peer)
        if not wait_peer and not self.writer_active:
            self.flush_now()  # best effort, right now: the connection ends at once

    def _mark_broken(self) -> None:
        self._broken = True
        if self.ws_state is not _ENDED:
            # Wakes the linger and the writer task (ClosedResourceError); a dormant connection
            # gets a task that ends it (a hand-off); the flag keeps them from waiting again.
            if self.server.poller.holds(self.fd, self):
                self._hand_off(None)
            trio.lowlevel.notify_closing(self.sock)

    def expire(self) -> None:
        """The close deadline passed: end the connection now."""
        if self.ws_state is not _ENDED:
            self._mark_broken()

    # --- writing ----------------------------------------------------------------------------

    def flush_now(self) -> bool:
        """One non-blocking `send` of everything queued. True while bytes remain that the
        kernel did not take (the caller then lets the writer task wait)."""
        ob = self.outbox
        frames = ob.pending_frames
        data = ob.take()
        if not data:
            return False
        closing = self.ws_state is not _OPEN
        clipped = False
        if closing:
            allowed = self.clip_to_close(data)
            if not allowed:
                return False  # everything after the close frame is discarded
            clipped = len(allowed) < len(data)
            data = allowed
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self._mark_broken()
            return False
        stats = self.stats
        stats.socket_writes += 1
        stats.bytes_out += n
        if closing:
            self.wrote_while_closing(n)
        if n < len(data):
            ob.unsend(data[n:])
            stats.frames_out += frames - 1
            return True
        stats.frames_out += frames
        if not clipped:
            self.server.flushed(self)
        return bool(ob.pending_bytes) and not self.close_written

    def start_writer(self) -> None:
        """Hand the rest of the outbox to a writer task (only while the kernel buffer is full)."""
        if self.writer_active or self.ws_state is _ENDED:
            return
        nursery = self.server.host_nursery
        if nursery is None:
            return
        self.writer_active = True
        nursery.start_soon(self._writer)

    async def _writer(self) -> None:
        # Runs in the server's host nursery; the teardown waits for it to end before the
        # socket is closed, after _mark_broken() woke it.
        try:
            while not self._broken:
                try:
                    await trio.lowlevel.wait_writable(self.sock)
                except trio.ClosedResourceError:
                    break
                if not self.flush_now():
                    break
        except Exception:
            log.exception("writer of connection %d failed", self.id)
            self._mark_broken()
        finally:
            self._writer_done()

    # --- reading ----------------------------------------------------------------------------

    def on_readable(self, now: float) -> None:
        """The poller saw the socket readable: one read, handled at once as far as the handler
        can without waiting; the rest goes to a task (`_hand_off`)."""
        server = self.server
        try:
            n = self.sock.recv_into(server.recv_buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._broken = True
            self._hand_off(None)
            return
        if n == 0:
            self._hand_off(None)
            return
        self.stats.bytes_in += n
        self.last_rx = now
        # The shared buffer is consumed (copied by the parser) before anything else reads.
        payloads, stop_op, stop_payload = self.receive(server.recv_view[:n])
        if payloads and self.ws_state is _OPEN:
            try:
                done = server.on_messages_nowait(self, payloads)
            except Exception:
                log.exception("handler.on_messages_nowait failed on connection %d", self.id)
                self.close(1011, "internal error")
                done = len(payloads)
            if done < len(payloads):
                self._hand_off((payloads[done:], stop_op, stop_payload))
                return
        if (stop_op >= 0 or self.parser.failed) and self._end_of_read(stop_op, stop_payload):
            self._hand_off(None)

    def read_failed(self) -> None:
        self._broken = True
        self._hand_off(None)

    def _hand_off(self, work: _Work | None) -> None:
        """Stop polling this socket and start a task that handles `work` (None: end the
        connection). Called only while the connection is dormant (in the poller, no task)."""
        server = self.server
        poller = server.poller
        if not poller.holds(self.fd, self):
            return  # handed off already (its task ends the connection, or will see `_broken`)
        poller.unregister(self.fd, self)
        nursery = server.host_nursery
        try:
            if nursery is None:
                raise RuntimeError("the server is not serving")
            nursery.start_soon(self._resume, work, name=_RESUME_TASK)
        except RuntimeError:  # the host nursery is closed: the server is stopping
            self.abandon()

    def _dormant(self) -> bool:
        """Hand the socket back to the poller, unless it broke. True: the connection is
        dormant, the calling task ends, and the poller's next hand-off starts another."""
        if self._broken:
            return False
        self.server.poller.register(self.fd, self, newcomer=not self.established)
        return True

    async def run(self, trailing: bytes) -> None:
        """Open the connection and handle `trailing`; then, while nothing needs waiting, it
        is dormant: in the poller with no task (an idle connection costs no task, coroutine
        frames or cancel state), until `_hand_off` starts `_resume`."""
        dormant = False
        try:
            self._open()
            if self.ws_state is _OPEN and not (trailing and await self._process(trailing)):
                dormant = self._dormant()
            if not dormant:
                await self._close_down()
        finally:
            if not dormant:
                await self._teardown()

    async def _resume(self, work: _Work | None) -> None:
        """The task of one hand-off: handle what the poller could not handle without
        waiting, then go dormant again, or close and end the connection."""
        dormant = False
        try:
            try:
                if work is not None and not self._broken and not await self._joined(work):
                    dormant = self._dormant()
                if not dormant:
                    await self._close_down()
            finally:
                if not dormant:
                    await self._teardown()
        except Exception:
            log.exception("connection %d failed", self.id)

    def abandon(self) -> None:
        """End a dormant connection at once, without a task (the server stopped serving)."""
        if self.ws_state is _ENDED:
            return
        self._broken = True
        self._finish()

    async def _linger(self) -> None:
        """After our close frame: half-close; unless the peer's close frame was read, wait for
        the peer's end of the TCP stream, so that bytes the peer still sends cannot turn our
        close into a reset that destroys the close frame before the peer reads it."""
        sock = self.sock
        if self._broken:
            return
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        if self.peer_close_seen:
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
        if self.writer_active:
            # The writer lives in the host nursery: wake it and let it end before the socket
            # is closed (bounded: it waits on nothing else).
            self._mark_broken()
            with trio.CancelScope(shield=True):
                while self.writer_active:
                    self._idle = trio.Event()
                    await self._idle.wait()
        self._finish()

    def _finish(self) -> None:
        """The teardown once no writer task is active (it needs no waiting)."""
        self.end()
        self.count_dropped()
        self._close_socket()
        self._ended()

    async def _close_transport(self) -> None:
        self._close_socket()

    def _close_socket(self) -> None:
        self.server.poller.unregister(self.fd, self)
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()


@define(eq=False, kw_only=True)
class TlsConnection(WsConnection):
    """wss://: a trio.SSLStream read by the connection's task, written by a writer task."""

    stream: trio.abc.Stream
    # The connection nursery (its writer task) and its scope (close deadline, breakage).
    _nursery: trio.Nursery | None = None

    async def run(self, trailing: bytes) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self.closing:  # closed (drain) before it was served
                    nursery.cancel_scope.deadline = self.close_deadline
                await self._serve(trailing)
                nursery.cancel_scope.cancel()
        finally:
            await self._teardown()

    def _bound_close(self) -> None:
        nursery = self._nursery
        if nursery is not None:
            scope = nursery.cancel_scope
            scope.deadline = min(scope.deadline, self.close_deadline)

    def _mark_broken(self) -> None:
        self._broken = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def flush_now(self) -> bool:
        return True  # every write of a TLS stream waits: the writer task makes it

    def start_writer(self) -> None:
        if self.writer_active or self.ws_state is _ENDED or self._nursery is None:
            return
        self.writer_active = True
        self._nursery.start_soon(self._writer)

    async def _writer(self) -> None:
        ob = self.outbox
        stats = self.stats
        try:
            while not self._broken and ob.pending_bytes:
                frames = ob.pending_frames
                data = ob.take()
                clipped = False
                if self.ws_state is not _OPEN:
                    allowed = self.clip_to_close(data)
                    if not allowed:
                        break
                    clipped = len(allowed) < len(data)
                    data = allowed
                    self.wrote_while_closing(len(data))
                self.in_flight = len(data)
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._mark_broken()
                    break
                finally:
                    self.in_flight = 0
                stats.socket_writes += 1
                stats.bytes_out += len(data)
                stats.frames_out += frames
                if not clipped:
                    self.server.flushed(self)
        finally:
            self._writer_done()

    async def _read(self) -> None:
        stats = self.stats
        while True:
            try:
                data = await self.stream.receive_some(RECV_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._broken = True
                return
            if not data:
                return
            stats.bytes_in += len(data)
            self.last_rx = trio.current_time()
            if await self._joined(self.receive(data)):
                return

    async def _close_transport(self) -> None:
        await trio.aclose_forcefully(self.stream)
