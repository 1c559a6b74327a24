"""RFC 6455 server-side framing: the FrameParser of client frames (unmasking, UTF-8,
reassembly) and the encoders of server frames."""

from __future__ import annotations

import struct

from attrs import define, field

OP_CONT = 0
OP_TEXT = 1
OP_BINARY = 2
OP_CLOSE = 8
OP_PING = 9
OP_PONG = 10
#: RSV1 (permessage-deflate: "compressed") as it is or-ed into an event's opcode
RSV1 = 0x40

_KNOWN_OPCODES = frozenset((OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG))
_SERVER_OPCODES = frozenset((OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG))

# Close reasons; the compiled module uses the same words.
R_RSV = "reserved bits set without a negotiated extension"
R_RSV1_FRAME = "RSV1 set on a control or continuation frame"
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
    `max_message_bytes` may be changed between feeds; frames not yet complete are checked
    against the new value. `allow_rsv1` (permessage-deflate negotiated) lets the first frame
    of a data message carry RSV1; such a message's event opcode has RSV1 or-ed in and its
    payload is returned as received (compressed, its UTF-8 unchecked).
    """

    max_message_bytes: int
    allow_rsv1: bool = field(init=False, default=False)
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
        OP_CLOSE with the raw close payload (already validated); OP_TEXT | RSV1 and
        OP_BINARY | RSV1 with a compressed message (see `allow_rsv1`). Incomplete data stays
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
            flag = b0 & 0x70
            if flag:
                if flag != RSV1 or not self.allow_rsv1:
                    return self._fail(events, 1002, R_RSV)
                if opcode != OP_TEXT and opcode != OP_BINARY:
                    return self._fail(events, 1002, R_RSV1_FRAME)
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
                    self._frag_op = opcode | flag
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
            else:
                opcode |= flag
            if opcode == OP_TEXT and not _utf8_valid(payload):
                return self._fail(events, 1007, R_TEXT_UTF8)
            events.append((opcode, payload))
        if buf is self._buf:
            del buf[:pos]
        elif pos < end:
            self._buf += buf[pos:]
        return events

    def fail(self, code: int, reason: str) -> None:
        """Stop as on a violation found by the caller (a compressed message that does not
        inflate): `failed`, `close_code`, `close_reason` say so and later feeds return []."""
        self.failed = True
        self.close_code = code
        self.close_reason = reason
        self._finish()

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
