"""The sans-IO WebSocket connection: close handshake, frame parsing, outbox, heartbeat.

No sockets, no trio: bytes go in (`receive`), frames are queued (`send`), and what may be
written is taken out (`outbox.take()`, clipped by `clip_to_close`). The Trio shell
(relay.transport.connection) moves the bytes, for ws:// through the poller and for wss://
through trio.SSLStream; both drive this one object, so the close handshake lives only here.

The close handshake (RFC 6455 7.1) as a state machine, in the style of h11's `_state.py`:
the state says which close frames were exchanged, the events are what moves it, and
`_TRANSITIONS` is the whole table (an event missing from a state's row does not apply there:
the method that would fire it returns without effect).

    state            our close queued  the peer's close read
    OPEN             no                no
    LOCAL_CLOSING    yes               no        we wait (bounded) for the peer's reply
    REMOTE_CLOSING   no                yes       transient: our echo is queued in the same call
    CLOSED           yes               yes       done once our close frame is written
    ENDED            -                 -         the transport is closed (terminal)

    OPEN --SEND_CLOSE--> LOCAL_CLOSING --RECEIVE_CLOSE--> CLOSED
    OPEN --RECEIVE_CLOSE--> REMOTE_CLOSING --SEND_CLOSE--> CLOSED
    any state but ENDED --END--> ENDED

Invariants:
- `send` queues frames only in OPEN; every droppable frame refused or dropped to make room is
  counted by the outbox and reaches Stats.messages_dropped by the next write or the end
  (`count_dropped`). Stats.slow_consumer_closes counts the 1013 closes this side begins,
  never a peer's own close frame with that code.
- Until `authenticated()` the parser accepts frames of at most the limit it was built with
  (the shell builds it with PREAUTH_MESSAGE_BYTES): what an unauthenticated peer can make the
  relay buffer stays that small. `authenticated()` raises it to `message_limit`, for good.
- `backed_up_since` is when the queued bytes (outbox and `in_flight`) last rose above the
  slow-consumer mark, None while they are at or under it (see `backed_up`).
- Our close frame is the last frame written: once it is queued, `close_remaining` is the
  number of bytes still allowed out (everything queued before it, and itself).
- `close_code` is the code the connection ends with: the peer's when the peer closed first
  (1005 when it gave none), ours when we closed first, 1006 while no close frame was exchanged.
- `dirty` is True from the first frame queued after the driver last took the outbox until
  the driver takes it again; `wake(self)` is called once per such period, so the driver holds
  each connection at most once in its list of outboxes to write.
- permessage-deflate (relay.transport.deflate) is on exactly when `deflater` and `inflater`
  are set (and the parser's `allow_rsv1`): `send` hands each frame to the shared deflater,
  which compresses a payload once for all recipients; `receive` inflates compressed messages
  within the parser's current limit (over it: 1009; corrupt: 1007) and checks their UTF-8.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any

from attrs import define

from relay.fastpath import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RSV1,
    FrameParser,
    Outbox,
    encode_close,
    encode_frame,
    parse_close,
)
from relay.metrics import Stats
from relay.transport.deflate import FrameDeflater, InflateError, Inflater

PING_FRAME = encode_frame(OP_PING, b"")
#: Largest WebSocket message taken before the session authenticated: an `auth` frame with
#: the longest token (8192 characters) and every other field at its limit is under 9 KiB.
PREAUTH_MESSAGE_BYTES = 16 * 1024
_EMPTY_CLOSE = encode_frame(OP_CLOSE, b"")
_TEXT_DEFLATED = OP_TEXT | RSV1
R_INFLATED_UTF8 = "invalid UTF-8 in a text message"


class WsState(enum.Enum):
    OPEN = "open"
    LOCAL_CLOSING = "local closing"
    REMOTE_CLOSING = "remote closing"
    CLOSED = "closed"
    ENDED = "ended"


class WsEvent(enum.Enum):
    SEND_CLOSE = "send close"  # our close frame is queued
    RECEIVE_CLOSE = "receive close"  # the peer's close frame was read
    END = "end"  # the transport was closed


_TRANSITIONS: dict[WsState, dict[WsEvent, WsState]] = {
    WsState.OPEN: {
        WsEvent.SEND_CLOSE: WsState.LOCAL_CLOSING,
        WsEvent.RECEIVE_CLOSE: WsState.REMOTE_CLOSING,
        WsEvent.END: WsState.ENDED,
    },
    WsState.LOCAL_CLOSING: {
        WsEvent.RECEIVE_CLOSE: WsState.CLOSED,
        WsEvent.END: WsState.ENDED,
    },
    WsState.REMOTE_CLOSING: {
        WsEvent.SEND_CLOSE: WsState.CLOSED,
        WsEvent.END: WsState.ENDED,
    },
    WsState.CLOSED: {WsEvent.END: WsState.ENDED},
    WsState.ENDED: {},
}

# Module constants: the hot path compares identities without an attribute lookup on the enum.
_OPEN = WsState.OPEN
_ENDED = WsState.ENDED


@define(eq=False, slots=True)
class WebSocket:
    """One WebSocket after its opening handshake, without I/O (see the module docstring).

    `wake(self)` tells the driver that output is pending (see the `dirty` invariant); `stats`
    receives the counts of frames in, frames dropped and slow-consumer closes."""

    outbox: Outbox
    parser: FrameParser
    stats: Stats
    wake: Callable[[Any], None]  # called with this object; the driver's own subclass
    ws_state: WsState = WsState.OPEN
    close_code: int = 1006
    #: bytes still allowed out once our close frame is queued (it is the last of them)
    close_remaining: int = 0
    dirty: bool = False
    #: heartbeat: when the peer was last heard from, when we last pinged it (the driver's
    #: clock: trio's, in the shell)
    last_rx: float = 0.0
    pinged_at: float = 0.0
    #: the parser's limit once the session authenticated (see `authenticated`)
    message_limit: int = 0
    #: the session authenticated: a ws:// connection is polled with the sessions, no longer
    #: with the newcomers (relay.transport.poller)
    established: bool = False
    #: the Connection port's `input_queued` (set by the driver while a read waits its turn)
    input_queued: bool = False
    #: bytes a driver took from the outbox and is still waiting to write (wss://)
    in_flight: int = 0
    backed_up_since: float | None = None
    #: permessage-deflate, when negotiated (see the module docstring)
    deflater: FrameDeflater | None = None
    inflater: Inflater | None = None

    @property
    def closing(self) -> bool:
        """No more frames are queued: our close frame is queued or the transport ended."""
        return self.ws_state is not _OPEN

    @property
    def ended(self) -> bool:
        return self.ws_state is _ENDED

    def _fire(self, event: WsEvent) -> None:
        self.ws_state = _TRANSITIONS[self.ws_state][event]

    # --- output -----------------------------------------------------------------------------

    def send(self, frame: bytes, droppable: bool = False) -> bool:
        """Queue an encoded server frame (the Connection port's `send`). False when the outbox
        is full (the caller closes 1013) or the connection is closing."""
        # the outbox counts the droppable frames it refuses or drops (Outbox.dropped); the
        # driver moves that count into the stats when it writes the outbox (`count_dropped`),
        # once per write rather than per frame: this runs once per frame per recipient
        if self.ws_state is not _OPEN:
            return False
        deflater = self.deflater
        if deflater is not None and len(frame) > deflater.min_bytes:
            frame = deflater.frame(frame)
        if not self.outbox.push(frame, droppable):
            return False
        if not self.dirty:
            self.dirty = True
            self.wake(self)
        return True

    def send_all(self, frames: Sequence[bytes]) -> bool:
        """`send` each of `frames` (none droppable), in order, stopping at the first that does
        not fit (the Connection port's `send_all`): a read's answers, a run of messages to one
        device. One state check and one call into the outbox for all of them."""
        if self.ws_state is not _OPEN:
            return False
        if self.deflater is not None:  # each frame is compressed or not by its own size
            send = self.send
            return all(send(frame) for frame in frames)
        queued = self.outbox.push_all(frames)
        if queued and not self.dirty:
            self.dirty = True
            self.wake(self)
        return queued == len(frames)

    def queue_quietly(self, frame: bytes) -> bool:
        """Queue a frame like `send` (never droppable) without waking the driver: it is written
        with the next write the driver makes. The driver's `send_later` bounds the wait."""
        if self.ws_state is not _OPEN:
            return False
        deflater = self.deflater
        if deflater is not None and len(frame) > deflater.min_bytes:
            frame = deflater.frame(frame)
        return self.outbox.push(frame)

    def count_dropped(self) -> None:
        """Move the outbox's count of droppable frames it refused or dropped into the stats."""
        outbox = self.outbox
        self.stats.messages_dropped += outbox.dropped
        outbox.dropped = 0

    def flush_soon(self) -> None:
        """Have what was pushed to `outbox` directly written like what `send` queued.
        Idempotent and cheap."""
        if not self.dirty and self.ws_state is not _ENDED:
            self.dirty = True
            self.wake(self)

    def clip_to_close(self, data: bytes) -> bytes:
        """What of `data` (taken from the outbox while closing) may still be written: nothing
        after our close frame. The driver reports what it wrote with `wrote_while_closing`."""
        remaining = self.close_remaining
        if remaining <= 0:
            return b""
        return data[:remaining] if len(data) > remaining else data

    def wrote_while_closing(self, n: int) -> None:
        self.close_remaining -= n

    @property
    def close_written(self) -> bool:
        """Our close frame (and everything before it) was written."""
        return self.ws_state is not _OPEN and self.close_remaining <= 0

    # --- the close handshake ----------------------------------------------------------------

    def begin_close(self, code: int, reason: str = "") -> bool:
        """Queue our close frame after what is queued. True when this started the closing
        (the driver then bounds it with a deadline and flushes); False when already closing."""
        if self.ws_state is not _OPEN:
            return False
        if code == 1013:
            self.stats.slow_consumer_closes += 1
        self._queue_close(code, encode_close(code, reason))
        return True

    def _queue_close(self, code: int, frame: bytes) -> None:
        self._fire(WsEvent.SEND_CLOSE)
        self.close_code = code
        ob = self.outbox
        if not ob.push(frame):
            # The outbox limits bound push, not unsend: the close frame goes in regardless.
            ob.unsend(ob.take() + frame)
        self.close_remaining = ob.pending_bytes

    @property
    def peer_close_seen(self) -> bool:
        """The peer's close frame was read (while the transport is up)."""
        return self.ws_state is WsState.CLOSED or self.ws_state is WsState.REMOTE_CLOSING

    def _receive_close(self, payload: bytes) -> bool:
        """The peer's close frame; True when it started our closing (our echo is queued)."""
        state = self.ws_state
        if state is not _OPEN:
            if state is WsState.LOCAL_CLOSING:
                self._fire(WsEvent.RECEIVE_CLOSE)  # the reply to our close: handshake done
            return False
        self._fire(WsEvent.RECEIVE_CLOSE)
        code, _reason = parse_close(payload)
        # Echo the peer's code (RFC 6455 5.5.1); an empty close is answered with an empty one.
        self._queue_close(code, _EMPTY_CLOSE if code == 1005 else encode_close(code))
        return True

    def end(self) -> None:
        """The transport is closed: nothing more is queued or written."""
        self._fire(WsEvent.END)

    # --- input ------------------------------------------------------------------------------

    def receive(self, data: bytes | bytearray | memoryview) -> tuple[list[bytes], int, bytes]:
        """Feed received bytes to the parser: (text payloads, the op that stops this read or
        -1, its payload). Pings are answered here; nothing after a close or binary frame is
        returned. The driver hands the payloads to the handler (unless `closing`), then
        calls `end_of_read` with the stop op."""
        events = self.parser.feed(data)
        self.stats.frames_in += len(events)
        payloads: list[bytes] = []
        for op, payload in events:
            if op == OP_TEXT:
                payloads.append(payload)
            elif op == _TEXT_DEFLATED:
                text = self._inflate(payload)
                if text is None:
                    return payloads, -1, b""  # the parser failed: end_of_read closes
                payloads.append(text)
            elif op == OP_BINARY | RSV1:
                return payloads, OP_BINARY, b""
            elif op == OP_PING:
                self.send(encode_frame(OP_PONG, payload))
            elif op != OP_PONG:
                return payloads, op, payload
        return payloads, -1, b""

    def _inflate(self, payload: bytes) -> bytes | None:
        """A compressed text message inflated and UTF-8-checked; None after failing the
        parser (1009 over its limit, 1007 corrupt or not UTF-8)."""
        parser = self.parser
        inflater = self.inflater
        assert inflater is not None  # the parser takes RSV1 only after use_deflate
        try:
            text = inflater.inflate(payload, parser.max_message_bytes)
        except InflateError as exc:
            parser.fail(exc.code, exc.reason)
            return None
        if not text.isascii():
            try:
                text.decode("utf-8")
            except UnicodeDecodeError:
                parser.fail(1007, R_INFLATED_UTF8)
                return None
        return text

    def use_deflate(self, deflater: FrameDeflater, inflater: Inflater) -> None:
        """permessage-deflate was negotiated: compress through `deflater` (shared), inflate
        through `inflater` (this connection's), take RSV1 on data messages."""
        self.deflater = deflater
        self.inflater = inflater
        self.parser.allow_rsv1 = True

    def end_of_read(self, stop_op: int, stop_payload: bytes) -> tuple[bool, bool]:
        """Act on what ended a read's events (see `receive`): (stop reading, closing started).
        A binary frame is closed with 1003 while reading goes on, so that the peer's close
        reply ends the connection without waiting for its deadline."""
        if stop_op == OP_CLOSE:
            return True, self._receive_close(stop_payload)
        if stop_op == OP_BINARY:
            return False, self.begin_close(1003, "binary frames are not supported")
        parser = self.parser
        if parser.failed:
            return True, self.begin_close(parser.close_code, parser.close_reason)
        return False, False

    def authenticated(self) -> None:
        """The session authenticated (the Connection port): take messages up to
        `message_limit` from now on."""
        self.established = True
        parser = self.parser
        parser.max_message_bytes = max(parser.max_message_bytes, self.message_limit)

    # --- bounds -----------------------------------------------------------------------------

    @property
    def queued_bytes(self) -> int:
        """Bytes this connection holds on their way out: its outbox and what is in flight."""
        return self.outbox.pending_bytes + self.in_flight

    def backed_up(self, now: float, mark: int, timeout: float) -> bool:
        """True once the queued bytes have stayed above `mark` for `timeout` (the driver then
        closes the connection with 1013: its peer does not read). Called periodically; a
        dip to `mark` or under starts the time again."""
        if self.queued_bytes <= mark:
            self.backed_up_since = None
            return False
        since = self.backed_up_since
        if since is None:
            self.backed_up_since = now
            return False
        return now - since >= timeout

    # --- heartbeat --------------------------------------------------------------------------

    def heartbeat(self, now: float, interval: float, timeout: float) -> bool:
        """Ping a peer silent for `interval` (again every `interval` while it stays silent);
        True when it was silent for `interval + timeout`: the driver closes it with 1011
        without waiting for a reply (the peer is presumed dead)."""
        silent = now - self.last_rx
        if silent >= interval + timeout:
            return True
        if silent >= interval and now - self.pinged_at >= interval:
            self.pinged_at = now
            self.send(PING_FRAME)
        return False
