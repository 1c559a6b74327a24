"""The pure-Python twin of relay._fastpath: RFC 6455 server-side framing, Outbox, the
message path's JSON frames, the `message` frame's checks, records, the in-memory store's append
and the SQLite store's rows.

A leaf: it imports nothing from relay. Its functions work on plain values; the classes they
build (MessageFrame, StoredMessage, Appended) and the limits they check are parameters.

Invariant: for every input this module and the compiled relay._fastpath give equal events,
equal failed/close_code/close_reason, equal encoded bytes, equal Outbox states, equal
message_fault answers, and for NewMessages equal MemoryAppender results and containers and
equal sqlite_rows results and calls (tests/test_fastpath_parity.py holds them to it). Import it
through relay.fastpath.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import orjson
from attrs import define, field

T = TypeVar("T")

OP_CONT = 0
OP_TEXT = 1
OP_BINARY = 2
OP_CLOSE = 8
OP_PING = 9
OP_PONG = 10

_KNOWN_OPCODES = frozenset((OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG))
_SERVER_OPCODES = frozenset((OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG))

# Close reasons; the compiled module uses the same words.
R_RSV = "reserved bits set without a negotiated extension"
R_OPCODE = "unknown opcode"
R_UNMASKED = "client frame is not masked"
R_CONTROL_FRAGMENTED = "fragmented control frame"
R_CONTROL_TOO_LONG = "control frame payload over 125 bytes"
R_CONT_WITHOUT_START = "continuation frame without a message to continue"
R_DATA_IN_FRAGMENTED = "new data frame while a fragmented message is open"
R_LENGTH_TOP_BIT = "64-bit payload length with the top bit set"
R_TOO_BIG = "message over max_message_bytes"
R_TEXT_UTF8 = "invalid UTF-8 in a text message"
R_CLOSE_ONE_BYTE = "close payload of 1 byte"
R_CLOSE_CODE = "invalid close code"
R_CLOSE_UTF8 = "invalid UTF-8 in a close reason"

_H16 = struct.Struct("!BBH")
_H64 = struct.Struct("!BBQ")
_MAX_CLOSE_REASON = 123  # 125 bytes of control payload minus the 2-byte code


def _valid_close_code(code: int) -> bool:
    """RFC 6455 7.4: 1000-1003, 1007-1014 (registered) and 3000-4999 (libraries, apps)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def _close_violation(payload: bytes) -> tuple[int, str] | None:
    """(close code, reason) when a received close payload breaks RFC 6455, else None."""
    n = len(payload)
    if n == 0:
        return None
    if n == 1:
        return 1002, R_CLOSE_ONE_BYTE
    if not _valid_close_code((payload[0] << 8) | payload[1]):
        return 1002, R_CLOSE_CODE
    reason = payload[2:]
    if not reason.isascii():
        try:
            reason.decode("utf-8")
        except UnicodeDecodeError:
            return 1007, R_CLOSE_UTF8
    return None


def _unmask(data: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    """XOR `data` with the 4-byte `mask` repeated, as one big-integer operation."""
    n = len(data)
    if n == 0:
        return b""
    key = (bytes(mask) * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def _utf8_valid(data: bytes) -> bool:
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@define(eq=False)
class FrameParser:
    """Parses masked client frames from a byte stream, reassembling fragmented messages.

    Invariants: `_buf` holds only bytes of frames not yet complete (frames are parsed straight
    from the caller's bytes when nothing is buffered); `_frag_op` is 0 exactly
    when no fragmented message is open, and then `_frag_parts` is empty and `_frag_len` 0.
    Once `failed` (or after a close frame) the parser is finished: feeds return [].
    """

    max_message_bytes: int
    failed: bool = field(init=False, default=False)
    close_code: int = field(init=False, default=0)
    close_reason: str = field(init=False, default="")
    _buf: bytearray = field(init=False, factory=bytearray)
    _frag_op: int = field(init=False, default=0)
    _frag_parts: list[bytes] = field(init=False, factory=list)
    _frag_len: int = field(init=False, default=0)
    _done: bool = field(init=False, default=False)

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[int, bytes]]:
        """Parse and unmask every complete client frame in the buffered bytes.

        Returns events (opcode, payload) in order: OP_TEXT with the whole (defragmented,
        UTF-8-validated) message, OP_BINARY likewise, OP_PING/OP_PONG with their payload,
        OP_CLOSE with the raw close payload (already validated). Incomplete data stays
        buffered. On a violation it stops: `failed` becomes True, `close_code`/`close_reason`
        say why (1002 protocol, 1007 bad UTF-8, 1009 too big), and later feeds return [].
        The events before the violation are still returned.
        """
        if self._done:
            return []
        buf: bytes | bytearray
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            buf = bytes(data)  # nothing buffered: parse the caller's bytes without copying them
        events: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            opcode = b0 & 0x0F
            if b0 & 0x70:
                return self._fail(events, 1002, R_RSV)
            if opcode not in _KNOWN_OPCODES:
                return self._fail(events, 1002, R_OPCODE)
            if not b1 & 0x80:
                return self._fail(events, 1002, R_UNMASKED)
            fin = b0 & 0x80
            length = b1 & 0x7F
            if opcode >= OP_CLOSE:
                if not fin:
                    return self._fail(events, 1002, R_CONTROL_FRAGMENTED)
                if length > 125:
                    return self._fail(events, 1002, R_CONTROL_TOO_LONG)
            elif opcode == OP_CONT:
                if not self._frag_op:
                    return self._fail(events, 1002, R_CONT_WITHOUT_START)
            elif self._frag_op:
                return self._fail(events, 1002, R_DATA_IN_FRAGMENTED)
            head = pos + 2
            if length == 126:
                if end - pos < 4:
                    break
                length = (buf[head] << 8) | buf[head + 1]
                head += 2
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buf[head : head + 8], "big")
                if length >> 63:
                    return self._fail(events, 1002, R_LENGTH_TOP_BIT)
                head += 8
            if opcode < OP_CLOSE and self._frag_len + length > self.max_message_bytes:
                return self._fail(events, 1009, R_TOO_BIG)
            start = head + 4
            stop = start + length
            if stop > end:
                break
            payload = _unmask(buf[start:stop], buf[head:start])
            pos = stop
            if opcode >= OP_CLOSE:
                if opcode == OP_CLOSE:
                    violation = _close_violation(payload)
                    if violation is not None:
                        return self._fail(events, *violation)
                    events.append((opcode, payload))
                    self._finish()
                    return events
                events.append((opcode, payload))
                continue
            if not fin:
                if opcode != OP_CONT:
                    self._frag_op = opcode
                self._frag_parts.append(payload)
                self._frag_len += length
                continue
            if opcode == OP_CONT:
                self._frag_parts.append(payload)
                payload = b"".join(self._frag_parts)
                opcode = self._frag_op
                self._frag_op = 0
                self._frag_parts.clear()
                self._frag_len = 0
            if opcode == OP_TEXT and not _utf8_valid(payload):
                return self._fail(events, 1007, R_TEXT_UTF8)
            events.append((opcode, payload))
        if buf is self._buf:
            del buf[:pos]
        elif pos < end:
            self._buf += buf[pos:]
        return events

    def _fail(
        self, events: list[tuple[int, bytes]], code: int, reason: str
    ) -> list[tuple[int, bytes]]:
        self.failed = True
        self.close_code = code
        self.close_reason = reason
        self._finish()
        return events

    def _finish(self) -> None:
        self._done = True
        self._buf.clear()
        self._frag_parts.clear()
        self._frag_op = 0
        self._frag_len = 0


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked FIN server frame. ValueError for an opcode a server cannot send alone
    (continuation, unknown) or a control payload over 125 bytes."""
    if opcode not in _SERVER_OPCODES:
        raise ValueError(f"cannot encode a frame with opcode {opcode}")
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if opcode >= OP_CLOSE:
        raise ValueError(f"control frame payload of {n} bytes (max 125)")
    if n < 65536:
        return _H16.pack(0x80 | opcode, 126, n) + payload
    return _H64.pack(0x80 | opcode, 127, n) + payload


def encode_close(code: int, reason: str = "") -> bytes:
    """A close frame. The reason is cut to 123 bytes of UTF-8 at a character boundary.
    ValueError for a code an endpoint may not send (RFC 6455 7.4)."""
    if not _valid_close_code(code):
        raise ValueError(f"{code} is not a close code an endpoint may send")
    raw = reason.encode("utf-8")
    if len(raw) > _MAX_CLOSE_REASON:
        raw = raw[:_MAX_CLOSE_REASON].decode("utf-8", "ignore").encode("utf-8")
    return encode_frame(OP_CLOSE, code.to_bytes(2, "big") + raw)


def parse_close(payload: bytes) -> tuple[int, str]:
    """(code, reason) of a close payload; (1005, "") for an empty one. ValueError when the
    payload breaks RFC 6455 (1 byte, invalid code, reason not UTF-8)."""
    if not payload:
        return 1005, ""
    violation = _close_violation(payload)
    if violation is not None:
        raise ValueError(violation[1])
    return (payload[0] << 8) | payload[1], payload[2:].decode("utf-8")


@define(eq=False)
class Outbox:
    """The bounded queue of encoded frames for one connection.

    Invariants: `pending_bytes`/`pending_frames` are the sums over `_chunks`; `_droppable` is
    None only while no queued frame is droppable, else `_droppable[i]` says whether
    `_chunks[i]` may still be dropped (never a tail put back by unsend). `_chunks` is one list
    for the outbox's life (take() empties it): nothing is allocated per flush.
    Limits bound push, never unsend: bytes handed back were already promised to the peer.
    """

    max_bytes: int
    max_frames: int
    pending_bytes: int = field(init=False, default=0)
    pending_frames: int = field(init=False, default=0)
    _chunks: list[bytes] = field(init=False, factory=list)
    _droppable: list[bool] | None = field(init=False, default=None)
    _droppable_bytes: int = field(init=False, default=0)
    _droppable_frames: int = field(init=False, default=0)

    def push(self, frame: bytes, droppable: bool = False) -> bool:
        """Queue a frame. Droppable frames (typing, presence) are refused when the outbox is
        over half full; when a non-droppable frame does not fit, droppable frames queued are
        dropped first; returns False when it still does not fit (the caller then closes with
        1013).

        "Over half full": more than max_bytes/2 bytes or more than max_frames/2 frames queued.
        Droppable frames are dropped oldest first, only as many as needed, and only when
        dropping them makes room: a refused push leaves the outbox unchanged.
        """
        n = len(frame)
        new_bytes = self.pending_bytes + n
        new_frames = self.pending_frames + 1
        if droppable:
            if (
                self.pending_bytes * 2 > self.max_bytes
                or self.pending_frames * 2 > self.max_frames
                or new_bytes > self.max_bytes
                or new_frames > self.max_frames
            ):
                return False
            if self._droppable is None:
                self._droppable = [False] * len(self._chunks)
            self._droppable_bytes += n
            self._droppable_frames += 1
        elif new_bytes > self.max_bytes or new_frames > self.max_frames:
            if (
                new_bytes - self._droppable_bytes > self.max_bytes
                or new_frames - self._droppable_frames > self.max_frames
            ):
                return False
            self._drop_until(new_bytes - self.max_bytes, new_frames - self.max_frames)
        self._chunks.append(frame)
        if self._droppable is not None:
            self._droppable.append(droppable)
        self.pending_bytes += n
        self.pending_frames += 1
        return True

    def _drop_until(self, excess_bytes: int, excess_frames: int) -> None:
        """Drop droppable frames, oldest first, until `excess_*` (<= their sums) are freed."""
        chunks: list[bytes] = []
        flags: list[bool] = []
        freed_bytes = 0
        freed_frames = 0
        droppable = self._droppable
        assert droppable is not None  # only called while droppable frames are queued
        for chunk, drop in zip(self._chunks, droppable, strict=True):
            if drop and (freed_bytes < excess_bytes or freed_frames < excess_frames):
                freed_bytes += len(chunk)
                freed_frames += 1
                continue
            chunks.append(chunk)
            flags.append(drop)
        self._chunks = chunks
        self._droppable = flags
        self.pending_bytes -= freed_bytes
        self.pending_frames -= freed_frames
        self._droppable_bytes -= freed_bytes
        self._droppable_frames -= freed_frames

    def take(self) -> bytes:
        """Everything queued, joined; the outbox is then empty."""
        chunks = self._chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._droppable = None
        self.pending_bytes = 0
        self.pending_frames = 0
        self._droppable_bytes = 0
        self._droppable_frames = 0
        return data

    def unsend(self, rest: bytes) -> None:
        """Put back the unwritten tail of what take() gave (partial send), ahead of anything
        queued since; it counts as one frame that cannot be dropped."""
        if not rest:
            return
        self._chunks.insert(0, bytes(rest))
        if self._droppable is not None:
            self._droppable.insert(0, False)
        self.pending_bytes += len(rest)
        self.pending_frames += 1


# --- JSON frames of the message path --------------------------------------------------------------


def message_dict(message: Any, status: str = "delivered") -> dict[str, Any]:
    """A stored message (a StoredMessage) in the contract's message shape (delivery, history,
    conversations); absent optional fields are left out. Built field by field: it is on the
    hot path."""
    body: dict[str, Any] = {"type": "message", "id": message.id, "senderId": message.sender_id}
    if message.sender_name is not None:
        body["senderName"] = message.sender_name
    if message.sender_avatar is not None:
        body["senderAvatar"] = message.sender_avatar
    if message.recipient_id is not None:
        body["recipientId"] = message.recipient_id
    if message.group_id is not None:
        body["groupId"] = message.group_id
    body["text"] = message.text
    body["timestamp"] = message.client_timestamp or message.server_timestamp
    body["status"] = status
    body["seq"] = message.seq
    body["serverTimestamp"] = message.server_timestamp
    if message.meta is not None:
        body["meta"] = message.meta
    return body


def encode_sent(
    message_id: str, peer_id: str | None, group_id: str | None, seq: int, timestamp: str
) -> bytes:
    """The JSON of the `sent` receipt: to the sender once its message is durable."""
    if group_id is None:
        body: dict[str, Any] = {"type": "receipt", "id": message_id, "peerId": peer_id}
    else:
        body = {"type": "receipt", "id": message_id, "groupId": group_id}
    body["status"] = "sent"
    body["seq"] = seq
    body["timestamp"] = timestamp
    return orjson.dumps(body)


def encode_delivery(message: Any) -> bytes:
    """The delivery frame of a stored message (a StoredMessage): a text frame of its contract
    shape with status `delivered`, seq and serverTimestamp."""
    return encode_frame(1, orjson.dumps(message_dict(message)))


def encode_sent_frame(
    message_id: str, peer_id: str | None, group_id: str | None, seq: int, timestamp: str
) -> bytes:
    """The `sent` receipt's text frame: to the sender once its message is durable."""
    return encode_frame(1, encode_sent(message_id, peer_id, group_id, seq, timestamp))


# --- the `message` frame's checks -----------------------------------------------------------------

#: what message_fault's answer means: MESSAGE_FAULTS[answer] names the first check the message
#: fails, in the order they are made ("" at 0: it passes them all). "<field>:type" is a value of
#: the wrong type, "<field>:length" a string out of its range; the ids (recipientId, groupId,
#: senderId) are 1-ident_max characters, the short texts 0-short_text_max.
MESSAGE_FAULTS = (
    "",
    "id",
    "recipientId:type",
    "recipientId:length",
    "groupId:type",
    "groupId:length",
    "senderId:type",
    "senderId:length",
    "senderName:type",
    "senderName:length",
    "senderAvatar:type",
    "senderAvatar:length",
    "timestamp:type",
    "timestamp:length",
    "recipientId:one_of",
    "text:type",
    "text:empty",
    "text:long",
    "meta:type",
    "meta:long",
)
_F_ID = 1
_F_STRINGS = 2  # the first of the six optional strings' pairs of answers (type, length)
_F_ONE_OF = 14
_F_TEXT_TYPE = 15
_F_TEXT_EMPTY = 16
_F_TEXT_LONG = 17
_F_META_TYPE = 18
_F_META_LONG = 19


def message_fault(
    obj: Mapping[str, Any], message_id: object, rules: tuple[int, int, int, int, int]
) -> int:
    """The checks of a `message` frame (or a published message), made once here: 0 when
    `message_id` and the fields of `obj` pass them all, else the first failed one's number
    (MESSAGE_FAULTS names it). `rules` is (message_id_max, ident_max, short_text_max,
    max_text_chars, max_meta_bytes): the limits, chosen by relay.protocol. A `meta` over
    max_meta_bytes is measured as orjson writes it (its JSONEncodeError when it cannot)."""
    id_max, ident_max, short_max, max_text, max_meta = rules
    if message_id.__class__ is not str or not 0 < len(message_id) <= id_max:
        return _F_ID
    get = obj.get
    peer = get("recipientId")
    group = get("groupId")
    sender = get("senderId")
    name = get("senderName")
    avatar = get("senderAvatar")
    stamp = get("timestamp")
    # the common case in one expression; the loop below finds the first bad field otherwise
    if not (
        (peer is None or (peer.__class__ is str and 0 < len(peer) <= ident_max))
        and (group is None or (group.__class__ is str and 0 < len(group) <= ident_max))
        and (sender is None or (sender.__class__ is str and 0 < len(sender) <= ident_max))
        and (name is None or (name.__class__ is str and len(name) <= short_max))
        and (avatar is None or (avatar.__class__ is str and len(avatar) <= short_max))
        and (stamp is None or (stamp.__class__ is str and len(stamp) <= short_max))
    ):
        fault = _F_STRINGS
        for value, low, high in (
            (peer, 1, ident_max),
            (group, 1, ident_max),
            (sender, 1, ident_max),
            (name, 0, short_max),
            (avatar, 0, short_max),
            (stamp, 0, short_max),
        ):
            if value is not None:
                if value.__class__ is not str:
                    return fault
                if not low <= len(value) <= high:
                    return fault + 1
            fault += 2
    if (peer is None) == (group is None):
        return _F_ONE_OF
    text = get("text")
    if text.__class__ is not str:
        return _F_TEXT_TYPE
    if not text:
        return _F_TEXT_EMPTY
    if len(text) > max_text:
        return _F_TEXT_LONG
    meta = get("meta")
    if meta is not None:
        if not isinstance(meta, dict):
            return _F_META_TYPE
        if len(orjson.dumps(meta)) > max_meta:
            return _F_META_LONG
    return 0


def decode_message(
    payload: bytes | str, rules: tuple[int, int, int, int, int], frame_cls: type[T]
) -> T | Any:
    """A client frame's bytes: a `frame_cls` (MessageFrame: id, text, senderId, recipientId,
    groupId, senderName, senderAvatar, timestamp, meta, ref, with ref the id when it is not a
    string) when it is a `message` frame message_fault passes under `rules`, else the decoded
    JSON value (orjson.loads; its JSONDecodeError when not JSON). The compiled module reads the
    usual shape without a dict."""
    obj = orjson.loads(payload)
    if obj.__class__ is dict and obj.get("type") == "message":
        get = obj.get
        ident = get("id")
        if not message_fault(obj, ident, rules):
            ref = get("ref")
            if ref.__class__ is not str:
                ref = ident
            fields = (
                ident,
                get("text"),
                get("senderId"),
                get("recipientId"),
                get("groupId"),
                get("senderName"),
                get("senderAvatar"),
                get("timestamp"),
                get("meta"),
                ref,
            )
            return record(frame_cls, fields)
    return obj


# --- the collector's view ---------------------------------------------------------------------


def untracked(obj: T) -> T:
    """`obj`, unchanged: the compiled module takes lists and tuples of atomic values out of the
    cyclic collector's sight (only the cost of full collections changes); Python cannot."""
    return obj


# --- records --------------------------------------------------------------------------------------


def record(cls: type[T], items: tuple[Any, ...]) -> T:
    """An instance of the tuple subclass `cls` (a NamedTuple: MessageFrame, NewMessage,
    StoredMessage) holding `items`: cls(*items) without NamedTuple.__new__'s Python frame."""
    if not issubclass(cls, tuple):
        raise TypeError(f"record() needs a tuple subclass, not {cls!r}")
    return tuple.__new__(cls, items)


# --- the in-memory store's append -----------------------------------------------------------------


class MemoryAppender:
    """MemoryStore.append_now, the store's part of every message: appends NewMessages to the
    containers it owns and returns their Appended. The store reads them through the read-only
    views below and never writes them.

    - `by_sender[sender_id][id]` -> the stored row: the idempotency check (a known id is
      answered with the stored message, `duplicate=True`, and nothing changes);
    - `logs[conversation]` -> the rows in seq order (seq = position + 1), and beside it
      `orders[conversation]` -> the acceptance order of each: a counter, shared with
      take_order(), increasing across every conversation from 1;
    - a row is StoredMessage's fields in an exact tuple; the StoredMessage handed out is
      `stored_cls` made of it (its own copy of `meta` when there is one);
    - the first message of a 1:1 conversation not in `direct` (the store's, only read here) is
      passed to `note_direct`.
    The compiled class does the same in C (and keeps rows and logs out of the collector's sight)."""

    __slots__ = (
        "_appended_cls",
        "_by_sender",
        "_direct",
        "_last_order",
        "_logs",
        "_note_direct",
        "_orders",
        "_stored_cls",
    )

    def __init__(
        self,
        direct: Container[str],
        note_direct: Callable[[Any], None],
        stored_cls: type[tuple[Any, ...]],
        appended_cls: type[tuple[Any, ...]],
    ) -> None:
        if not (issubclass(stored_cls, tuple) and issubclass(appended_cls, tuple)):
            raise TypeError("MemoryAppender needs tuple classes (NamedTuples)")
        self._by_sender: dict[str, dict[str, tuple[Any, ...]]] = {}
        self._logs: dict[str, list[tuple[Any, ...]]] = {}
        self._orders: dict[str, list[int]] = {}
        self._last_order = 0
        self._direct = direct
        self._note_direct = note_direct
        self._stored_cls = stored_cls
        self._appended_cls = appended_cls

    @property
    def by_sender(self) -> Mapping[str, Mapping[str, tuple[Any, ...]]]:
        return self._by_sender

    @property
    def logs(self) -> Mapping[str, Sequence[tuple[Any, ...]]]:
        return self._logs

    @property
    def orders(self) -> Mapping[str, Sequence[int]]:
        return self._orders

    def take_order(self) -> int:
        """The acceptance counter's next value, given to no message: the messages appended
        after this call have greater orders (a device registering is placed with it)."""
        self._last_order += 1
        return self._last_order

    def append(self, messages: Iterable[Any]) -> list[Any]:
        results: list[Any] = []
        by_sender = self._by_sender
        logs = self._logs
        orders = self._orders
        stored_cls = self._stored_cls
        appended_cls = self._appended_cls
        for message in messages:
            sent = by_sender.get(message.sender_id)
            if sent is None:
                sent = by_sender[message.sender_id] = {}
            existing = sent.get(message.id)
            if existing is not None:
                results.append(record(appended_cls, (record(stored_cls, existing), True)))
                continue
            conversation = message.conversation
            log = logs.get(conversation)
            if log is None:
                log = logs[conversation] = untracked([])
                orders[conversation] = untracked([])
            seq = len(log) + 1
            if message.meta is None:
                row = untracked((conversation, seq, *message[1:]))
                stored = record(stored_cls, row)
            else:
                stored = message.stored(seq)  # its own copy of `meta`
                row = tuple(stored)
            log.append(row)
            sent[message.id] = row
            self._last_order += 1
            orders[conversation].append(self._last_order)
            if message.group_id is None and conversation not in self._direct:
                self._note_direct(message)
            results.append(record(appended_cls, (stored, False)))
        return results


# --- the SQLite store's rows ----------------------------------------------------------------------

#: StoredMessage's optional columns, in the order of the bits of a row's `present` mask: a row's
#: parameters are pos, conversation, seq, id, sender_id, text, server_timestamp, then those of
#: these it sets, in this order (meta as its JSON text)
ROW_OPTIONAL = (
    "recipient_id",
    "group_id",
    "sender_name",
    "sender_avatar",
    "client_timestamp",
    "meta",
)


def sqlite_rows(
    requests: Iterable[Iterable[Any]],
    tip_of: Callable[[Any], list[Any]],
    pos: int,
    stored_cls: type[tuple[Any, ...]],
    appended_cls: type[tuple[Any, ...]],
) -> tuple[dict[int, list[Any]], list[list[Any]], int]:
    """SqliteStore's per-message work for a fused append: every NewMessage of `requests`, in
    order, numbered and laid out as INSERT parameters.

    - `tip_of(message)` is called once per conversation (at its first message) and returns
      that conversation's counters, a list [last_seq, last_pos, updated_at] that this updates
      in place as its messages are numbered: seq = last_seq + 1, pos counts on from `pos`;
    - the rows go by the optional columns they set (`present`, bits of ROW_OPTIONAL): rows
      [present] is their parameters laid end to end;
    - each request's answer is a list of `appended_cls((stored, False))`, `stored` being
      `stored_cls` made of the message's fields with its seq second (its own copy of `meta`).
    Returns (rows, answers, the last pos given). The compiled function does the same in C."""
    tips: dict[str, list[Any]] = {}
    rows: dict[int, list[Any]] = {}
    answers: list[list[Any]] = []
    for messages in requests:
        results: list[Any] = []
        for m in messages:
            (
                conversation,
                ident,
                sender,
                text,
                timestamp,
                recipient,
                group,
                name,
                avatar,
                stamp,
                meta,
            ) = m
            tip = tips.get(conversation)
            if tip is None:
                tip = tips[conversation] = tip_of(m)
            pos += 1
            seq = tip[0] = tip[0] + 1
            tip[1] = pos
            tip[2] = timestamp
            present = 0
            if recipient is not None:
                present = 1
            if group is not None:
                present |= 2
            if name is not None:
                present |= 4
            if avatar is not None:
                present |= 8
            if stamp is not None:
                present |= 16
            if meta is not None:
                present |= 32
            params = rows.get(present)
            if params is None:
                params = rows[present] = []
            params += (pos, conversation, seq, ident, sender, text, timestamp)
            if present:
                if recipient is not None:
                    params.append(recipient)
                if group is not None:
                    params.append(group)
                if name is not None:
                    params.append(name)
                if avatar is not None:
                    params.append(avatar)
                if stamp is not None:
                    params.append(stamp)
            if meta is None:
                stored = record(stored_cls, (conversation, seq, *m[1:]))
            else:
                params.append(orjson.dumps(meta).decode())
                stored = m.stored(seq)  # its own copy of `meta`
            results.append(record(appended_cls, (stored, False)))
        answers.append(results)
    return rows, answers, pos
