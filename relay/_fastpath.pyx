# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled hot path: RFC 6455 server-side framing, Outbox, the JSON frames of the message
path (delivery and `sent`), the `message` frame's checks and reader, the in-memory store's
append and the SQLite store's rows.

A leaf: it imports nothing from relay. The classes it builds and the limits it checks are
parameters; the few tables and dict builders it shares with its twin are written in both and
held equal by the parity suite.

Invariant: for every input this module and relay._fastpath_py give equal events, equal
failed/close_code/close_reason, equal encoded bytes, equal Outbox states, equal message_fault
answers, and for NewMessages equal MemoryAppender results and containers and equal sqlite_rows
results and calls (tests/test_fastpath_parity.py holds them to it). Import it through
relay.fastpath.
"""

import orjson

cimport cython

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.exc cimport PyErr_Clear, PyErr_Occurred
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Realloc
from cpython.object cimport Py_EQ, PyObject, PyObject_Hash, PyObject_RichCompareBool
from cpython.ref cimport Py_DECREF, Py_INCREF
from cpython.list cimport PyList_GET_ITEM
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE, PyTuple_New, PyTuple_SET_ITEM
from cpython.type cimport PyType_GenericAlloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memmove


cdef extern from "Python.h":
    # declared here without an exception spec: the caller checks PyErr_Occurred itself
    long long PyLong_AsLongLongAndOverflow(object value, int* overflow)
    int PyObject_IS_GC(object obj)
    int PyObject_GC_IsTracked(object obj)
    void PyObject_GC_UnTrack(void* obj)
    bint PyUnicode_IS_COMPACT_ASCII(object op)
    Py_ssize_t PyUnicode_GET_LENGTH(object op)
    void* PyUnicode_DATA(object op)

OP_CONT = 0
OP_TEXT = 1
OP_BINARY = 2
OP_CLOSE = 8
OP_PING = 9
OP_PONG = 10
#: RSV1 (permessage-deflate: "compressed") as it is or-ed into an event's opcode
RSV1 = 0x40

# Close reasons; the twin uses the same words.
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

cdef Py_ssize_t _MAX_CLOSE_REASON = 123  # 125 bytes of control payload minus the 2-byte code
# An empty receive buffer bigger than this is freed, so idle connections stay small.
cdef Py_ssize_t _KEEP_BUFFER = 1024
cdef uint64_t _HIGH_BITS = 0x8080808080808080ULL


cdef inline bint _known_opcode(int op) noexcept nogil:
    return 0 <= op <= 2 or 8 <= op <= 10


cdef inline bint _valid_close_code(long code) noexcept nogil:
    """RFC 6455 7.4: 1000-1003, 1007-1014 (registered) and 3000-4999 (libraries, apps)."""
    return (1000 <= code <= 1003) or (1007 <= code <= 1014) or (3000 <= code <= 4999)


cdef inline void _unmask(
    const unsigned char* src, const unsigned char* mask, unsigned char* dst, Py_ssize_t n
) noexcept nogil:
    """dst[i] = src[i] ^ mask[i % 4], eight bytes per step."""
    cdef uint32_t m32
    cdef uint64_t m64, v
    cdef Py_ssize_t i = 0
    memcpy(&m32, mask, 4)
    m64 = (<uint64_t>m32 << 32) | <uint64_t>m32  # both halves equal: byte order does not matter
    while i + 8 <= n:
        memcpy(&v, src + i, 8)
        v ^= m64
        memcpy(dst + i, &v, 8)
        i += 8
    while i < n:
        dst[i] = src[i] ^ mask[i & 3]
        i += 1


cdef bint _utf8_valid(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """Strict UTF-8 (RFC 3629): no overlongs, no surrogates, nothing above U+10FFFF."""
    cdef Py_ssize_t i = 0
    cdef uint64_t v
    cdef unsigned char c, c1
    while i < n:
        while i + 8 <= n:
            memcpy(&v, s + i, 8)
            if v & _HIGH_BITS:
                break
            i += 8
        if i >= n:
            break
        c = s[i]
        if c < 0x80:
            i += 1
        elif c < 0xC2:
            return False
        elif c < 0xE0:
            if i + 1 >= n or (s[i + 1] & 0xC0) != 0x80:
                return False
            i += 2
        elif c < 0xF0:
            if i + 2 >= n:
                return False
            c1 = s[i + 1]
            if (c1 & 0xC0) != 0x80 or (s[i + 2] & 0xC0) != 0x80:
                return False
            if (c == 0xE0 and c1 < 0xA0) or (c == 0xED and c1 > 0x9F):
                return False
            i += 3
        elif c < 0xF5:
            if i + 3 >= n:
                return False
            c1 = s[i + 1]
            if (c1 & 0xC0) != 0x80 or (s[i + 2] & 0xC0) != 0x80 or (s[i + 3] & 0xC0) != 0x80:
                return False
            if (c == 0xF0 and c1 < 0x90) or (c == 0xF4 and c1 > 0x8F):
                return False
            i += 4
        else:
            return False
    return True


cdef int _close_violation(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """0 when a received close payload is valid; else 1 (1 byte), 2 (code), 3 (reason UTF-8)."""
    if n == 0:
        return 0
    if n == 1:
        return 1
    if not _valid_close_code((<long>p[0] << 8) | p[1]):
        return 2
    if not _utf8_valid(p + 2, n - 2):
        return 3
    return 0


@cython.no_gc
cdef class FrameParser:
    """Parses masked client frames from a byte stream, reassembling fragmented messages.

    Not tracked by the collector (`no_gc`): it refers only to a str and a list of bytes, so it
    is never part of a reference cycle, and every idle connection keeps one.

    Invariants: `_buf[_start:_end]` holds only bytes of frames not yet complete (frames are
    parsed straight from the caller's bytes when nothing is buffered); `_frag_op` is 0 exactly
    when no fragmented message is open, and then `_frag_parts` is None (no list is kept per
    connection while idle) and `_frag_len` 0.
    Once `failed` (or after a close frame) the parser is finished: feeds return [].
    `max_message_bytes` may be changed between feeds; frames not yet complete are checked
    against the new value. `allow_rsv1` (permessage-deflate negotiated) lets the first frame
    of a data message carry RSV1; such a message's event opcode has RSV1 or-ed in and its
    payload is returned as received (compressed, its UTF-8 unchecked).
    """

    cdef public Py_ssize_t max_message_bytes
    cdef public bint allow_rsv1
    cdef readonly bint failed
    cdef readonly int close_code
    cdef readonly str close_reason
    cdef unsigned char* _buf
    cdef Py_ssize_t _start
    cdef Py_ssize_t _end
    cdef Py_ssize_t _cap
    cdef int _frag_op
    cdef list _frag_parts
    cdef Py_ssize_t _frag_len
    cdef bint _done

    def __cinit__(self, Py_ssize_t max_message_bytes):
        self.max_message_bytes = max_message_bytes
        self.allow_rsv1 = False
        self.failed = False
        self.close_code = 0
        self.close_reason = ""
        self._buf = NULL
        self._start = 0
        self._end = 0
        self._cap = 0
        self._frag_op = 0
        self._frag_parts = None
        self._frag_len = 0
        self._done = False

    def __dealloc__(self):
        PyMem_Free(self._buf)

    def feed(self, data):
        """Parse and unmask every complete client frame in the buffered bytes.

        Returns events (opcode, payload) in order: OP_TEXT with the whole (defragmented,
        UTF-8-validated) message, OP_BINARY likewise, OP_PING/OP_PONG with their payload,
        OP_CLOSE with the raw close payload (already validated); OP_TEXT | RSV1 and
        OP_BINARY | RSV1 with a compressed message (see `allow_rsv1`). Incomplete data stays
        buffered. On a violation it stops: `failed` becomes True, `close_code`/`close_reason`
        say why (1002 protocol, 1007 bad UTF-8, 1009 too big), and later feeds return [].
        The events before the violation are still returned.
        """
        cdef list events = []
        cdef Py_buffer view
        cdef Py_ssize_t used
        if self._done:
            return events
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if self._start == self._end:
                used = self._parse(<const unsigned char*>view.buf, view.len, events)
                if not self._done and used < view.len:
                    self._append(<const unsigned char*>view.buf + used, view.len - used)
            else:
                self._append(<const unsigned char*>view.buf, view.len)
                used = self._parse(self._buf + self._start, self._end - self._start, events)
                if not self._done:
                    self._start += used
                    if self._start == self._end:
                        self._start = 0
                        self._end = 0
                        if self._cap > _KEEP_BUFFER:
                            self._release()
        finally:
            PyBuffer_Release(&view)
        return events

    cdef int _append(self, const unsigned char* p, Py_ssize_t n) except -1:
        cdef Py_ssize_t live = self._end - self._start
        cdef Py_ssize_t cap
        cdef unsigned char* grown
        if self._end + n > self._cap:
            if self._start > 0:
                memmove(self._buf, self._buf + self._start, live)
                self._start = 0
                self._end = live
            if live + n > self._cap:
                cap = max(self._cap * 2, live + n, 256)
                grown = <unsigned char*>PyMem_Realloc(self._buf, cap)
                if grown == NULL:
                    raise MemoryError()
                self._buf = grown
                self._cap = cap
        memcpy(self._buf + self._end, p, n)
        self._end += n
        return 0

    cdef void _release(self) noexcept:
        PyMem_Free(self._buf)
        self._buf = NULL
        self._cap = 0
        self._start = 0
        self._end = 0

    cdef Py_ssize_t _parse(self, const unsigned char* p, Py_ssize_t n, list events) except -1:
        """Parse complete frames from p[0:n] into `events`; returns the bytes consumed."""
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t head, size
        cdef unsigned char b0, b1
        cdef int opcode, violation, flag
        cdef bint fin
        cdef uint64_t length
        cdef bytes payload
        cdef list parts
        while n - pos >= 2:
            b0 = p[pos]
            b1 = p[pos + 1]
            opcode = b0 & 0x0F
            flag = b0 & 0x70
            if flag:
                if flag != 0x40 or not self.allow_rsv1:
                    return self._fail(1002, R_RSV)
                if opcode != 1 and opcode != 2:
                    return self._fail(1002, R_RSV1_FRAME)
            if not _known_opcode(opcode):
                return self._fail(1002, R_OPCODE)
            if not (b1 & 0x80):
                return self._fail(1002, R_UNMASKED)
            fin = (b0 & 0x80) != 0
            length = b1 & 0x7F
            if opcode >= 8:
                if not fin:
                    return self._fail(1002, R_CONTROL_FRAGMENTED)
                if length > 125:
                    return self._fail(1002, R_CONTROL_TOO_LONG)
            elif opcode == 0:
                if self._frag_op == 0:
                    return self._fail(1002, R_CONT_WITHOUT_START)
            elif self._frag_op != 0:
                return self._fail(1002, R_DATA_IN_FRAGMENTED)
            head = pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (<uint64_t>p[head] << 8) | p[head + 1]
                head += 2
            elif length == 127:
                if n - pos < 10:
                    break
                length = (
                    (<uint64_t>p[head] << 56) | (<uint64_t>p[head + 1] << 48)
                    | (<uint64_t>p[head + 2] << 40) | (<uint64_t>p[head + 3] << 32)
                    | (<uint64_t>p[head + 4] << 24) | (<uint64_t>p[head + 5] << 16)
                    | (<uint64_t>p[head + 6] << 8) | <uint64_t>p[head + 7]
                )
                if length >> 63:
                    return self._fail(1002, R_LENGTH_TOP_BIT)
                head += 8
            if opcode < 8 and <uint64_t>self._frag_len + length > <uint64_t>self.max_message_bytes:
                return self._fail(1009, R_TOO_BIG)
            # From here length <= max(125, max_message_bytes): it fits a Py_ssize_t.
            size = <Py_ssize_t>length
            if n - head - 4 < size:
                break
            payload = PyBytes_FromStringAndSize(NULL, size)
            _unmask(p + head + 4, p + head, <unsigned char*>PyBytes_AS_STRING(payload), size)
            pos = head + 4 + size
            if opcode >= 8:
                if opcode == 8:
                    violation = _close_violation(<const unsigned char*>PyBytes_AS_STRING(payload), size)
                    if violation == 1:
                        return self._fail(1002, R_CLOSE_ONE_BYTE)
                    if violation == 2:
                        return self._fail(1002, R_CLOSE_CODE)
                    if violation == 3:
                        return self._fail(1007, R_CLOSE_UTF8)
                    events.append((opcode, payload))
                    self._finish()
                    return pos
                events.append((opcode, payload))
                continue
            if not fin:
                if opcode != 0:
                    self._frag_op = opcode | flag
                if self._frag_parts is None:
                    self._frag_parts = [payload]
                else:
                    self._frag_parts.append(payload)
                self._frag_len += size
                continue
            if opcode == 0:
                parts = self._frag_parts  # not None: a continuation was accepted above
                parts.append(payload)
                payload = b"".join(parts)
                opcode = self._frag_op
                self._frag_op = 0
                self._frag_parts = None
                self._frag_len = 0
            else:
                opcode |= flag
            if opcode == 1 and not _utf8_valid(
                <const unsigned char*>PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload)
            ):
                return self._fail(1007, R_TEXT_UTF8)
            events.append((opcode, payload))
        return pos

    def fail(self, int code, str reason):
        """Stop as on a violation found by the caller (a compressed message that does not
        inflate): `failed`, `close_code`, `close_reason` say so and later feeds return []."""
        self._fail(code, reason)

    cdef Py_ssize_t _fail(self, int code, str reason) noexcept:
        self.failed = True
        self.close_code = code
        self.close_reason = reason
        self._finish()
        return 0

    cdef void _finish(self) noexcept:
        self._done = True
        self._release()
        self._frag_parts = None
        self._frag_op = 0
        self._frag_len = 0


cdef inline Py_ssize_t _header_len(Py_ssize_t n) noexcept nogil:
    """Bytes of an unmasked server frame's header for `n` payload bytes."""
    return 2 if n < 126 else (4 if n < 65536 else 10)


cdef inline unsigned char* _write_header(
    unsigned char* o, int opcode, Py_ssize_t n
) noexcept nogil:
    """Write the header of an unmasked FIN frame of `n` payload bytes; where the payload goes."""
    cdef int i
    o[0] = 0x80 | opcode
    if n < 126:
        o[1] = <unsigned char>n
        return o + 2
    if n < 65536:
        o[1] = 126
        o[2] = <unsigned char>(n >> 8)
        o[3] = <unsigned char>n
        return o + 4
    o[1] = 127
    for i in range(8):
        o[2 + i] = <unsigned char>((<uint64_t>n) >> (56 - 8 * i))
    return o + 10


def encode_frame(int opcode, payload):
    """One unmasked FIN server frame. ValueError for an opcode a server cannot send alone
    (continuation, unknown) or a control payload over 125 bytes."""
    cdef Py_ssize_t n
    cdef bytes out
    cdef unsigned char* o
    if opcode == 0 or not _known_opcode(opcode):
        raise ValueError(f"cannot encode a frame with opcode {opcode}")
    if type(payload) is not bytes:
        payload = bytes(payload)
    n = PyBytes_GET_SIZE(payload)
    if opcode >= 8 and n >= 126:
        raise ValueError(f"control frame payload of {n} bytes (max 125)")
    out = PyBytes_FromStringAndSize(NULL, _header_len(n) + n)
    o = _write_header(<unsigned char*>PyBytes_AS_STRING(out), opcode, n)
    memcpy(o, PyBytes_AS_STRING(payload), n)
    return out


def encode_close(int code, str reason=""):
    """A close frame. The reason is cut to 123 bytes of UTF-8 at a character boundary.
    ValueError for a code an endpoint may not send (RFC 6455 7.4)."""
    if not _valid_close_code(code):
        raise ValueError(f"{code} is not a close code an endpoint may send")
    raw = reason.encode("utf-8")
    if len(raw) > _MAX_CLOSE_REASON:
        raw = raw[:_MAX_CLOSE_REASON].decode("utf-8", "ignore").encode("utf-8")
    return encode_frame(8, code.to_bytes(2, "big") + raw)


def parse_close(payload):
    """(code, reason) of a close payload; (1005, "") for an empty one. ValueError when the
    payload breaks RFC 6455 (1 byte, invalid code, reason not UTF-8)."""
    cdef bytes raw = payload if type(payload) is bytes else bytes(payload)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef int violation
    if n == 0:
        return 1005, ""
    violation = _close_violation(p, n)
    if violation == 1:
        raise ValueError(R_CLOSE_ONE_BYTE)
    if violation == 2:
        raise ValueError(R_CLOSE_CODE)
    if violation == 3:
        raise ValueError(R_CLOSE_UTF8)
    return (p[0] << 8) | p[1], raw[2:].decode("utf-8")


cdef inline list _untracked(list items):
    """`items` out of the collector's sight (as `untracked` does a list): CPython never
    tracks a list again by itself, and these hold only bytes and bools."""
    PyObject_GC_UnTrack(<void*>items)
    return items


@cython.no_gc
cdef class Outbox:
    """The bounded queue of encoded frames for one connection.

    Neither it nor its lists are tracked by the collector (`no_gc`, `_untracked`): they hold
    only frames (bytes) and flags, so they are never part of a reference cycle, and every idle
    connection keeps them.

    Invariants: `pending_bytes`/`pending_frames` are the sums over `_chunks`; `_droppable` is
    None only while no queued frame is droppable, else `_droppable[i]` says whether
    `_chunks[i]` may still be dropped (never a tail put back by unsend). `_chunks` is one list
    for the outbox's life (take() empties it): nothing is allocated per flush.
    Limits bound push, never unsend: bytes handed back were already promised to the peer.
    """

    cdef readonly Py_ssize_t max_bytes
    cdef readonly Py_ssize_t max_frames
    cdef readonly Py_ssize_t pending_bytes
    cdef readonly Py_ssize_t pending_frames
    cdef list _chunks
    cdef list _droppable
    cdef Py_ssize_t _droppable_bytes
    cdef Py_ssize_t _droppable_frames
    # droppable frames refused or dropped to make room since the owner last reset it
    cdef public Py_ssize_t dropped

    def __cinit__(self, Py_ssize_t max_bytes, Py_ssize_t max_frames):
        self.max_bytes = max_bytes
        self.max_frames = max_frames
        self.pending_bytes = 0
        self.pending_frames = 0
        self._chunks = _untracked([])
        self._droppable = None
        self._droppable_bytes = 0
        self._droppable_frames = 0
        self.dropped = 0

    cpdef bint push(self, frame, bint droppable=False) except -1:
        """Queue a frame. Droppable frames (typing, presence) are refused when the outbox is
        over half full; when a non-droppable frame does not fit, droppable frames queued are
        dropped first; returns False when it still does not fit (the caller then closes with
        1013).

        "Over half full": more than max_bytes/2 bytes or more than max_frames/2 frames queued.
        Droppable frames are dropped oldest first, only as many as needed, and only when
        dropping them makes room: a refused push leaves the outbox unchanged.
        """
        cdef Py_ssize_t n = len(frame)
        cdef Py_ssize_t new_bytes = self.pending_bytes + n
        cdef Py_ssize_t new_frames = self.pending_frames + 1
        if droppable:
            if (
                self.pending_bytes * 2 > self.max_bytes
                or self.pending_frames * 2 > self.max_frames
                or new_bytes > self.max_bytes
                or new_frames > self.max_frames
            ):
                self.dropped += 1
                return False
            if self._droppable is None:
                self._droppable = _untracked([False] * len(self._chunks))
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

    cpdef Py_ssize_t push_all(self, frames) except -1:
        """`push` each of `frames` (a list or tuple; none droppable), in order, stopping at the
        first that does not fit: returns how many were queued."""
        cdef Py_ssize_t i
        cdef Py_ssize_t count = len(frames)
        for i in range(count):
            if not self.push(frames[i]):
                return i
        return count

    cdef void _drop_until(self, Py_ssize_t excess_bytes, Py_ssize_t excess_frames) except *:
        """Drop droppable frames, oldest first, until `excess_*` (<= their sums) are freed."""
        cdef list chunks = []
        cdef list flags = []
        cdef Py_ssize_t freed_bytes = 0
        cdef Py_ssize_t freed_frames = 0
        cdef Py_ssize_t i
        cdef object chunk
        cdef bint drop
        cdef list droppable = self._droppable  # not None: droppable frames are queued
        for i in range(len(self._chunks)):
            chunk = self._chunks[i]
            drop = droppable[i]
            if drop and (freed_bytes < excess_bytes or freed_frames < excess_frames):
                freed_bytes += len(chunk)
                freed_frames += 1
                continue
            chunks.append(chunk)
            flags.append(drop)
        self._chunks = _untracked(chunks)
        self._droppable = _untracked(flags)
        self.pending_bytes -= freed_bytes
        self.pending_frames -= freed_frames
        self._droppable_bytes -= freed_bytes
        self._droppable_frames -= freed_frames
        self.dropped += freed_frames

    def take(self):
        """Everything queued, joined; the outbox is then empty."""
        cdef list chunks = self._chunks
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

    def unsend(self, rest):
        """Put back the unwritten tail of what take() gave (partial send), ahead of anything
        queued since; it counts as one frame that cannot be dropped."""
        if not rest:
            return
        self._chunks.insert(0, bytes(rest))
        if self._droppable is not None:
            self._droppable.insert(0, False)
        self.pending_bytes += len(rest)
        self.pending_frames += 1


# --- JSON frames of the message path -------------------------------------------------------------
# The delivery and `sent` frames are written here directly: the JSON text, byte for byte what
# orjson.dumps gives for the twin's dict (same keys, same order, same escapes), inside one
# unfragmented text frame, in a single allocation. Any value of an unexpected type takes the
# twin's way (a dict through orjson), so the two agree on every input.

# the twin's dicts, for the rare values the writers below leave to orjson (the parity suite
# holds the two equal)
def message_dict(message, status="delivered"):
    """A stored message (a StoredMessage) in the contract's message shape (delivery, history,
    conversations); absent optional fields are left out. Built field by field: it is on the
    hot path."""
    body = {"type": "message", "id": message.id, "senderId": message.sender_id}
    if message.sender_name is not None:
        body["senderName"] = message.sender_name
    if message.sender_avatar is not None:
        body["senderAvatar"] = message.sender_avatar
    if message.recipient_id is not None:
        body["recipientId"] = message.recipient_id
    if message.group_id is not None:
        body["groupId"] = message.group_id
    if message.e2e is None:
        body["text"] = message.text
    else:
        body["e2e"] = message.e2e
    body["timestamp"] = message.client_timestamp or message.server_timestamp
    body["status"] = status
    body["seq"] = message.seq
    body["serverTimestamp"] = message.server_timestamp
    if message.meta is not None:
        body["meta"] = message.meta
    if message.attachments is not None:
        body["attachments"] = message.attachments
    if message.call is not None:
        body["call"] = message.call
    return body


def encode_sent(message_id, peer_id, group_id, seq, timestamp):
    """The JSON of the `sent` receipt: to the sender once its message is durable."""
    if group_id is None:
        body = {"type": "receipt", "id": message_id, "peerId": peer_id}
    else:
        body = {"type": "receipt", "id": message_id, "groupId": group_id}
    body["status"] = "sent"
    body["seq"] = seq
    body["timestamp"] = timestamp
    return orjson.dumps(body)


cdef const char* _HEX = b"0123456789abcdef"


# Word-at-a-time scanning (SWAR): a word with no byte < 0x20, no '"' and no '\\' needs no
# escape and is copied whole; any other word (a false positive included) goes byte by byte.
cdef uint64_t _ONES = 0x0101010101010101ULL
cdef uint64_t _QUOTES = 0x2222222222222222ULL
cdef uint64_t _BACKSLASHES = 0x5C5C5C5C5C5C5C5CULL


cdef inline bint _word_plain(uint64_t w) noexcept nogil:
    """No byte of `w` needs a JSON escape (exact: < 0x20, 0x22 and 0x5C are all caught)."""
    cdef uint64_t q = w ^ _QUOTES
    cdef uint64_t b = w ^ _BACKSLASHES
    return ((((w - _ONES * 0x20) & ~w) | ((q - _ONES) & ~q) | ((b - _ONES) & ~b)) & _HIGH_BITS) == 0


cdef inline Py_ssize_t _json_str_len(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """Length of the JSON string literal of `s` (quotes included), escaped as orjson does."""
    cdef Py_ssize_t size = n + 2
    cdef Py_ssize_t i = 0
    cdef unsigned char c
    cdef uint64_t w
    while i < n:
        if i + 8 <= n:
            memcpy(&w, s + i, 8)
            if _word_plain(w):
                i += 8
                continue
        c = s[i]
        if c < 0x20:
            size += 1 if (c == 8 or c == 9 or c == 10 or c == 12 or c == 13) else 5
        elif c == 34 or c == 92:
            size += 1
        i += 1
    return size


cdef inline unsigned char* _json_str(
    unsigned char* o, const unsigned char* s, Py_ssize_t n, Py_ssize_t escaped_len
) noexcept nogil:
    """Write the JSON string literal of `s`, `escaped_len` bytes long (_json_str_len)."""
    cdef Py_ssize_t i = 0
    cdef unsigned char c
    cdef uint64_t w
    o[0] = 34
    o += 1
    if escaped_len == n + 2:  # nothing to escape
        memcpy(o, s, n)
        o[n] = 34
        return o + n + 1
    while i < n:
        if i + 8 <= n:
            memcpy(&w, s + i, 8)
            if _word_plain(w):
                memcpy(o, s + i, 8)
                o += 8
                i += 8
                continue
        c = s[i]
        i += 1
        if c >= 0x20 and c != 34 and c != 92:
            o[0] = c
            o += 1
            continue
        o[0] = 92
        if c == 34 or c == 92:
            o[1] = c
        elif c == 8:
            o[1] = 98  # b
        elif c == 9:
            o[1] = 116  # t
        elif c == 10:
            o[1] = 110  # n
        elif c == 12:
            o[1] = 102  # f
        elif c == 13:
            o[1] = 114  # r
        else:
            o[1] = 117  # u
            o[2] = 48
            o[3] = 48
            o[4] = _HEX[c >> 4]
            o[5] = _HEX[c & 15]
            o += 6
            continue
        o += 2
    o[0] = 34
    return o + 1


cdef inline Py_ssize_t _decimal(char* buf, long long v) noexcept nogil:
    """Write `v` in decimal (as str(int) does) to `buf` (24 bytes); returns its length."""
    cdef char tmp[24]
    cdef Py_ssize_t n = 0, k = 0
    cdef unsigned long long u = <unsigned long long>(-v) if v < 0 else <unsigned long long>v
    while True:
        tmp[n] = <char>(48 + u % 10)
        n += 1
        u //= 10
        if u == 0:
            break
    if v < 0:
        buf[0] = 45  # -
        k = 1
    while n:
        n -= 1
        buf[k] = tmp[n]
        k += 1
    return k


cdef struct _Part:
    const unsigned char* key  # `,"key":` (or `{"key":` first), NULL: none
    Py_ssize_t key_len
    const unsigned char* raw  # the value's UTF-8, or its literal JSON (string=0)
    Py_ssize_t raw_len
    bint string  # raw is a string's UTF-8, written escaped in quotes
    Py_ssize_t out_len  # the value's length as written (set by _text_frame_of)


cdef inline int _set_str(_Part* part, const char* key, Py_ssize_t key_len, object value) except -1:
    cdef Py_ssize_t n
    part.key = <const unsigned char*>key
    part.key_len = key_len
    part.raw = <const unsigned char*>PyUnicode_AsUTF8AndSize(value, &n)
    part.raw_len = n
    part.string = True
    return 0


cdef inline void _set_raw(_Part* part, const char* key, Py_ssize_t key_len, bytes value) noexcept:
    part.key = <const unsigned char*>key
    part.key_len = key_len
    part.raw = <const unsigned char*>PyBytes_AS_STRING(value)
    part.raw_len = PyBytes_GET_SIZE(value)
    part.string = False


cdef inline void _set_int(
    _Part* part, const char* key, Py_ssize_t key_len, char* buf, long long value
) noexcept:
    """An integer value, written in decimal to `buf` (24 bytes, alive until the frame is made)."""
    part.key = <const unsigned char*>key
    part.key_len = key_len
    part.raw = <const unsigned char*>buf
    part.raw_len = _decimal(buf, value)
    part.string = False


cdef inline bint _as_long_long(object value, long long* out) noexcept:
    """An int that fits a long long, into `out`; False otherwise (the twin's way then)."""
    cdef int overflow = 0
    cdef long long v = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow != 0 or (v == -1 and PyErr_Occurred() != NULL):
        PyErr_Clear()
        return False
    out[0] = v
    return True


cdef bytes _text_frame_of(_Part* parts, int count):
    """One text frame holding the JSON object `parts` describe (keys carry their punctuation)."""
    cdef Py_ssize_t n = 1  # the closing brace
    cdef int i
    cdef bytes out
    cdef unsigned char* o
    for i in range(count):
        n += parts[i].key_len
        if parts[i].string:
            parts[i].out_len = _json_str_len(parts[i].raw, parts[i].raw_len)
        else:
            parts[i].out_len = parts[i].raw_len
        n += parts[i].out_len
    out = PyBytes_FromStringAndSize(NULL, _header_len(n) + n)
    o = _write_header(<unsigned char*>PyBytes_AS_STRING(out), 1, n)
    for i in range(count):
        memcpy(o, parts[i].key, parts[i].key_len)
        o += parts[i].key_len
        if parts[i].string:
            o = _json_str(o, parts[i].raw, parts[i].raw_len, parts[i].out_len)
        else:
            memcpy(o, parts[i].raw, parts[i].raw_len)
            o += parts[i].raw_len
    o[0] = 125  # }
    return out


cdef inline bint _str_or_none(object value) noexcept:
    return value is None or type(value) is str


def encode_delivery(message):
    """The delivery frame of a stored message: a text frame of its contract shape with status
    `delivered`, seq and serverTimestamp (the twin: message_dict through orjson)."""
    cdef _Part parts[16]
    cdef int k = 0
    cdef char seq_buf[24]
    cdef long long seq_value
    cdef tuple m
    if not isinstance(message, tuple) or len(message) != 15:
        raise TypeError("encode_delivery needs a StoredMessage")
    m = <tuple>message  # a StoredMessage: a tuple subclass, read by index
    ident = m[2]
    sender = m[3]
    text = m[4]
    server_ts = m[5]
    recipient = m[6]
    group = m[7]
    name = m[8]
    avatar = m[9]
    client_ts = m[10]
    meta = m[11]
    e2e = m[12]
    attachments = m[13]
    call = m[14]
    seq = m[1]
    if not (
        type(ident) is str and type(sender) is str and type(text) is str
        and type(server_ts) is str and type(seq) is int
        and _str_or_none(recipient) and _str_or_none(group) and _str_or_none(name)
        and _str_or_none(avatar) and _str_or_none(client_ts)
        and _as_long_long(seq, &seq_value)
    ):
        return _delivery_by_dict(message)
    stamp = client_ts if client_ts else server_ts
    try:
        _set_raw(&parts[k], b'{"type":', 8, b'"message"'); k += 1
        _set_str(&parts[k], b',"id":', 6, ident); k += 1
        _set_str(&parts[k], b',"senderId":', 12, sender); k += 1
        if name is not None:
            _set_str(&parts[k], b',"senderName":', 14, name); k += 1
        if avatar is not None:
            _set_str(&parts[k], b',"senderAvatar":', 16, avatar); k += 1
        if recipient is not None:
            _set_str(&parts[k], b',"recipientId":', 15, recipient); k += 1
        if group is not None:
            _set_str(&parts[k], b',"groupId":', 11, group); k += 1
        if e2e is None:
            _set_str(&parts[k], b',"text":', 8, text); k += 1
        else:  # the sender's e2e object, written once for every recipient
            e2e_json = _orjson_dumps(e2e)
            _set_raw(&parts[k], b',"e2e":', 7, e2e_json); k += 1
        _set_str(&parts[k], b',"timestamp":', 13, stamp); k += 1
        _set_raw(&parts[k], b',"status":', 10, b'"delivered"'); k += 1
        _set_int(&parts[k], b',"seq":', 7, seq_buf, seq_value); k += 1
        _set_str(&parts[k], b',"serverTimestamp":', 19, server_ts); k += 1
        if meta is not None:
            meta_json = _orjson_dumps(meta)
            _set_raw(&parts[k], b',"meta":', 8, meta_json); k += 1
        if attachments is not None:
            attachments_json = _orjson_dumps(attachments)
            _set_raw(&parts[k], b',"attachments":', 15, attachments_json); k += 1
        if call is not None:
            call_json = _orjson_dumps(call)
            _set_raw(&parts[k], b',"call":', 8, call_json); k += 1
    except UnicodeEncodeError:  # a lone surrogate: orjson's error, through the twin
        return _delivery_by_dict(message)
    return _text_frame_of(parts, k)


def encode_sent_frame(message_id, peer_id, group_id, seq, timestamp):
    """The `sent` receipt's text frame (the twin: encode_sent's dict through orjson)."""
    cdef _Part parts[6]
    cdef int k = 0
    cdef char seq_buf[24]
    cdef long long seq_value
    if not (
        type(message_id) is str and type(timestamp) is str and type(seq) is int
        and _str_or_none(peer_id) and _str_or_none(group_id)
        and (group_id is not None or peer_id is not None)
        and _as_long_long(seq, &seq_value)
    ):
        return _sent_by_dict(message_id, peer_id, group_id, seq, timestamp)
    try:
        _set_raw(&parts[k], b'{"type":', 8, b'"receipt"'); k += 1
        _set_str(&parts[k], b',"id":', 6, message_id); k += 1
        if group_id is None:
            _set_str(&parts[k], b',"peerId":', 10, peer_id); k += 1
        else:
            _set_str(&parts[k], b',"groupId":', 11, group_id); k += 1
        _set_raw(&parts[k], b',"status":', 10, b'"sent"'); k += 1
        _set_int(&parts[k], b',"seq":', 7, seq_buf, seq_value); k += 1
        _set_str(&parts[k], b',"timestamp":', 13, timestamp); k += 1
    except UnicodeEncodeError:
        return _sent_by_dict(message_id, peer_id, group_id, seq, timestamp)
    return _text_frame_of(parts, k)


def encode_receipt_frame(message_id, seq, status, user_id, timestamp, peer_id, group_id):
    """A delivered/read watermark receipt's text frame (the twin: the dict of the fields that are
    not None through orjson)."""
    cdef _Part parts[8]
    cdef int k = 0
    cdef char seq_buf[24]
    cdef long long seq_value
    if not (
        _str_or_none(message_id) and type(seq) is int and type(status) is str
        and type(user_id) is str and type(timestamp) is str
        and _str_or_none(peer_id) and _str_or_none(group_id)
        and _as_long_long(seq, &seq_value)
    ):
        return _receipt_by_dict(message_id, seq, status, user_id, timestamp, peer_id, group_id)
    try:
        _set_raw(&parts[k], b'{"type":', 8, b'"receipt"'); k += 1
        if message_id is not None:
            _set_str(&parts[k], b',"id":', 6, message_id); k += 1
        if peer_id is not None:
            _set_str(&parts[k], b',"peerId":', 10, peer_id); k += 1
        if group_id is not None:
            _set_str(&parts[k], b',"groupId":', 11, group_id); k += 1
        _set_int(&parts[k], b',"seq":', 7, seq_buf, seq_value); k += 1
        _set_str(&parts[k], b',"status":', 10, status); k += 1
        _set_str(&parts[k], b',"userId":', 10, user_id); k += 1
        _set_str(&parts[k], b',"timestamp":', 13, timestamp); k += 1
    except UnicodeEncodeError:
        return _receipt_by_dict(message_id, seq, status, user_id, timestamp, peer_id, group_id)
    return _text_frame_of(parts, k)


def _receipt_by_dict(message_id, seq, status, user_id, timestamp, peer_id, group_id):
    body = {
        "type": "receipt",
        "id": message_id,
        "peerId": peer_id,
        "groupId": group_id,
        "seq": seq,
        "status": status,
        "userId": user_id,
        "timestamp": timestamp,
    }
    return encode_frame(1, orjson.dumps({k: v for k, v in body.items() if v is not None}))


cdef inline bytes _orjson_dumps(value):
    return orjson.dumps(value)


def _delivery_by_dict(message):
    return encode_frame(1, orjson.dumps(message_dict(message)))


def _sent_by_dict(message_id, peer_id, group_id, seq, timestamp):
    return encode_frame(1, encode_sent(message_id, peer_id, group_id, seq, timestamp))


# --- the `message` frame's checks --------------------------------------------------------------------
# The twin's message_fault, in C: the same checks in the same order, the same answers (the twin's
# MESSAGE_FAULTS names them). decode_message makes them on the values it reads from the wire.

# the twin's table, equal by the parity suite: what each answer means
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
    "meta:deep",
    "meta:long",
    "e2e:type",
    "e2e:text",
    "e2e:v",
    "e2e:suite",
    "e2e:senderDevice",
    "e2e:boxes",
    "e2e:long",
    "attachments:type",
    "call",
)

# a message's files, as the twin's
ATTACHMENTS_MAX = 10
ATTACHMENT_ID_MAX = 64

# the e2e object's fixed shape, as the twin's
E2E_VERSION = 1
E2E_SUITE = "hpke-x25519-sha256-aes256gcm"
E2E_BOXES_MAX = 256
E2E_BYTES_MAX = 262144
_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")

cdef enum:
    _FAULT_OK = 0
    _FAULT_ID = 1
    _FAULT_STRINGS = 2  # then a (type, length) pair per optional string, in _fault's order
    _FAULT_ONE_OF = 14
    _FAULT_TEXT_TYPE = 15
    _FAULT_TEXT_EMPTY = 16
    _FAULT_TEXT_LONG = 17
    _FAULT_META_TYPE = 18
    _FAULT_META_DEEP = 19
    _FAULT_META_LONG = 20
    _FAULT_E2E = 21  # then the other e2e answers, in MESSAGE_FAULTS' order
    _FAULT_ATTACHMENTS = 28
    _FAULT_CALL = 29  # a client's message carrying `call`: only the relay writes call records


cdef struct _Rules:
    Py_ssize_t id_max
    Py_ssize_t ident_max
    Py_ssize_t short_max
    Py_ssize_t max_text
    Py_ssize_t max_meta
    Py_ssize_t max_meta_depth
    Py_ssize_t max_frame_depth


# The rules tuple read last, and its values: relay.protocol passes one tuple per Limits (the same
# object on every call), so it is read once, not per message.
cdef object _rules_seen = None
cdef _Rules _rules


cdef inline _Rules* _rules_of(object rules) except NULL:
    global _rules_seen
    if rules is not _rules_seen:
        if type(rules) is not tuple or PyTuple_GET_SIZE(rules) != 7:
            raise TypeError(
                "rules must be (message_id_max, ident_max, short_text_max, max_text_chars, "
                f"max_meta_bytes, max_meta_depth, max_frame_depth), not {rules!r}"
            )
        (
            _rules.id_max, _rules.ident_max, _rules.short_max, _rules.max_text, _rules.max_meta,
            _rules.max_meta_depth, _rules.max_frame_depth,
        ) = rules
        _rules_seen = rules
    return &_rules


cdef inline int _string_fault(object value, Py_ssize_t low, Py_ssize_t high) noexcept:
    """0 when `value` is None or a str of low..high characters; 1: not a str; 2: its length."""
    if value is None:
        return 0
    if type(value) is not str:
        return 1
    if not low <= len(<str>value) <= high:
        return 2
    return 0


cdef Py_ssize_t _depth(object value, Py_ssize_t cap) except -1:
    """How many objects and arrays (dicts, lists, tuples) `value` nests on its deepest path,
    counted up to cap + 1: the twin's _deeper(value, cap) is _depth(value, cap) > cap. Recurses
    at most cap + 1 deep."""
    cdef Py_ssize_t deepest = 0, d
    if isinstance(value, dict):
        if cap <= 0:
            return 1
        for item in (<dict>value).values():
            if isinstance(item, (dict, list, tuple)):
                d = _depth(item, cap - 1)
                if d >= cap:
                    return cap + 1
                if d > deepest:
                    deepest = d
    elif isinstance(value, (list, tuple)):
        if cap <= 0:
            return 1
        for item in value:
            if isinstance(item, (dict, list, tuple)):
                d = _depth(item, cap - 1)
                if d >= cap:
                    return cap + 1
                if d > deepest:
                    deepest = d
    else:
        return 0
    return deepest + 1


# 1 for each character of the standard base64 alphabet (_B64), by byte value (a C global:
# zeroed before the module runs)
cdef unsigned char _B64_TABLE[256]
for _c in _B64:
    _B64_TABLE[_c] = 1


cdef bint _base64(object value):
    """The twin's _base64: a non-empty str of standard padded base64. An ASCII str is read in
    place by the table (the set's way took ~3 us per 200-character box: an e2e message's
    boxes were most of its check); any other str holds a character outside the alphabet."""
    cdef const unsigned char* data
    cdef Py_ssize_t n, end, i
    if type(value) is not str:
        return False
    n = PyUnicode_GET_LENGTH(value)
    if n == 0 or n % 4:
        return False
    if not PyUnicode_IS_COMPACT_ASCII(value):
        body = (<str>value).rstrip("=")  # not ASCII, or a legacy str: the twin's way
        if n - len(body) > 2 or not body.isascii():
            return False
        return _B64.issuperset(body.encode())
    data = <const unsigned char*>PyUnicode_DATA(value)
    end = n
    while end > 0 and data[end - 1] == 61:  # =
        end -= 1
    if n - end > 2:
        return False
    for i in range(end):
        if not _B64_TABLE[data[i]]:
            return False
    return True


def attachments_fault(attachments, e2e):
    """The twin's attachments_fault (the attachment list's shape), compiled."""
    if type(attachments) is not list or e2e is not None:
        return _FAULT_ATTACHMENTS
    if not 0 < len(<list>attachments) <= ATTACHMENTS_MAX:
        return _FAULT_ATTACHMENTS
    for item in <list>attachments:
        if type(item) is not dict:
            return _FAULT_ATTACHMENTS
        file_id = (<dict>item).get("fileId")
        if type(file_id) is not str or not 0 < len(<str>file_id) <= ATTACHMENT_ID_MAX:
            return _FAULT_ATTACHMENTS
    return 0


def e2e_fault(e2e, text, Py_ssize_t ident_max):
    """The twin's e2e_fault (the e2e object's checks), compiled."""
    if type(e2e) is not dict:
        return _FAULT_E2E
    if len(<dict>e2e) != 4:
        return _FAULT_E2E
    if text is not None:
        return _FAULT_E2E + 1
    v = (<dict>e2e).get("v")
    if type(v) is not int or v != E2E_VERSION:
        return _FAULT_E2E + 2
    if (<dict>e2e).get("suite") != E2E_SUITE:
        return _FAULT_E2E + 3
    device = (<dict>e2e).get("senderDevice")
    if type(device) is not str or not 0 < len(<str>device) <= ident_max:
        return _FAULT_E2E + 4
    boxes = (<dict>e2e).get("boxes")
    if type(boxes) is not dict or not 0 < len(<dict>boxes) <= E2E_BOXES_MAX:
        return _FAULT_E2E + 5
    for key, box in (<dict>boxes).items():
        if type(key) is not str or not 0 < len(<str>key) <= ident_max or not _base64(box):
            return _FAULT_E2E + 5
    if len(_orjson_dumps(e2e)) > E2E_BYTES_MAX:
        return _FAULT_E2E + 6
    return 0


cdef int _fault(
    object ident, object peer, object group, object sender, object name, object avatar,
    object stamp, object text, object meta, _Rules* r, bint meta_shallow=False,
    object e2e=None, object attachments=None, bint has_call=False,
) except -1:
    """The checks; `meta_shallow`: the caller knows meta nests at most max_meta_depth levels
    (decode_message measured the whole frame), so it is not walked again."""
    cdef int bad
    if type(ident) is not str or not 0 < len(<str>ident) <= r.id_max:
        return _FAULT_ID
    bad = _string_fault(peer, 1, r.ident_max)
    if bad:
        return _FAULT_STRINGS - 1 + bad
    bad = _string_fault(group, 1, r.ident_max)
    if bad:
        return _FAULT_STRINGS + 1 + bad
    bad = _string_fault(sender, 1, r.ident_max)
    if bad:
        return _FAULT_STRINGS + 3 + bad
    bad = _string_fault(name, 0, r.short_max)
    if bad:
        return _FAULT_STRINGS + 5 + bad
    bad = _string_fault(avatar, 0, r.short_max)
    if bad:
        return _FAULT_STRINGS + 7 + bad
    bad = _string_fault(stamp, 0, r.short_max)
    if bad:
        return _FAULT_STRINGS + 9 + bad
    if (peer is None) == (group is None):
        return _FAULT_ONE_OF
    if has_call:
        return _FAULT_CALL
    if attachments is not None:
        bad = attachments_fault(attachments, e2e)
        if bad:
            return bad
    if e2e is not None:
        bad = e2e_fault(e2e, text, r.ident_max)
        if bad:
            return bad
    elif text is None and attachments is not None:
        pass  # files alone: the text is optional
    elif type(text) is not str:
        return _FAULT_TEXT_TYPE
    elif len(<str>text) == 0:
        return _FAULT_TEXT_EMPTY
    elif len(<str>text) > r.max_text:
        return _FAULT_TEXT_LONG
    if meta is not None:
        if not isinstance(meta, dict):
            return _FAULT_META_TYPE
        if not meta_shallow and _depth(meta, r.max_meta_depth) > r.max_meta_depth:
            return _FAULT_META_DEEP
        if len(_orjson_dumps(meta)) > r.max_meta:
            return _FAULT_META_LONG
    return _FAULT_OK


def message_fault(obj, message_id, rules):
    """The twin's message_fault in C (`obj` a mapping of the frame's fields)."""
    cdef _Rules* r = _rules_of(rules)
    cdef dict d = obj if type(obj) is dict else dict(obj)
    return _fault(
        message_id, d.get("recipientId"), d.get("groupId"), d.get("senderId"),
        d.get("senderName"), d.get("senderAvatar"), d.get("timestamp"), d.get("text"),
        d.get("meta"), r, False, d.get("e2e"), d.get("attachments"), "call" in d,
    )


# --- the collector's view ----------------------------------------------------------------------------


def untracked(obj):
    """`obj`, out of the cyclic garbage collector's sight when that cannot hide a cycle: a
    list (whatever it will hold: a reference from an untracked container keeps its target
    alive, it never frees it), or a tuple none of whose items the collector tracks (what the
    collector itself would do to it later). Anything else is returned as it is. Values are
    untouched; only the cost of full collections changes (the twin does nothing)."""
    if type(obj) is list:
        _untracked(<list>obj)
    elif type(obj) is tuple:
        _untrack_tuple(<tuple>obj)
    return obj


#: how deep untracked_json goes: the protocol's values nest at most 16 deep (META_DEPTH_MAX);
#: a container deeper than this stays tracked, which is always safe
cdef int _JSON_DEPTH = 64


def untracked_json(obj):
    """`obj`, a JSON value (dicts, lists, strings, numbers, booleans, None: what a stored
    message's meta, e2e, attachments and call record are), with every container in it out of
    the collector's sight, itself included. A JSON value holds no cycle, so no collection
    could free anything in it; untracked, a full collection no longer walks it. The caller
    keeps it as it is from now on (a cycle put into it later would never be freed). Values
    are untouched (the twin does nothing)."""
    _untrack_json(obj, _JSON_DEPTH)
    return obj


cdef int _untrack_json(object obj, int depth) except -1:
    """untracked_json() down to `depth` levels (deeper containers stay tracked)."""
    cdef type t = type(obj)
    if depth <= 0:
        return 0
    if t is dict:
        items = (<dict>obj).values()
    elif t is list or t is tuple:
        items = obj
    else:
        return 0
    for value in items:
        if PyObject_IS_GC(value):
            _untrack_json(value, depth - 1)
    if t is tuple:
        _untrack_tuple(<tuple>obj)  # only when nothing in it is tracked
    elif PyObject_GC_IsTracked(obj):
        PyObject_GC_UnTrack(<void*>obj)
    return 0


cdef inline void _untrack_tuple(tuple obj):
    """untracked() of an exact tuple."""
    cdef Py_ssize_t i
    if not PyObject_GC_IsTracked(obj):
        return
    for i in range(PyTuple_GET_SIZE(obj)):
        item = <object>PyTuple_GET_ITEM(obj, i)
        if PyObject_IS_GC(item) and PyObject_GC_IsTracked(item):
            return
    PyObject_GC_UnTrack(<void*>obj)


# --- records ---------------------------------------------------------------------------------------


def record(type cls, tuple items):
    """An instance of the tuple subclass `cls` (a NamedTuple: MessageFrame, NewMessage,
    StoredMessage) holding `items`, in one allocation: what tuple.__new__(cls, items) gives
    (the twin), without its copy of `items` and its checks. __init__ is not called (a
    NamedTuple has none)."""
    if cls is tuple:
        return items
    if not issubclass(cls, tuple):
        raise TypeError(f"record() needs a tuple subclass, not {cls!r}")
    return _record(cls, items)


cdef inline object _record(type cls, tuple items):
    """record() of a tuple subclass `cls` (checked by the caller)."""
    cdef Py_ssize_t n, i
    n = PyTuple_GET_SIZE(items)
    result = PyType_GenericAlloc(cls, n)  # zeroed, sized, tracked: as tuple's own subclasses
    for i in range(n):
        item = <object>PyTuple_GET_ITEM(items, i)
        Py_INCREF(item)  # PyTuple_SET_ITEM steals it
        PyTuple_SET_ITEM(result, i, item)
    return result


# --- the in-memory store's append -----------------------------------------------------------------
# MemoryStore.append_now's per-message work (see the twin for what it keeps where): the row is
# built once from the NewMessage's items with `seq` put second, no slice, no Python frame.

cdef Py_ssize_t _NEW_FIELDS = 14  # NewMessage: conversation, id, ..., e2e, attachments, call
cdef Py_ssize_t _F_CONVERSATION = 0
cdef Py_ssize_t _F_ID = 1
cdef Py_ssize_t _F_SENDER = 2
cdef Py_ssize_t _F_GROUP = 6
cdef Py_ssize_t _F_META = 10
cdef Py_ssize_t _F_E2E = 11
cdef Py_ssize_t _F_ATTACHMENTS = 12
cdef Py_ssize_t _F_CALL = 13


cdef object _stored_fields(type cls, tuple m, object seq):
    """StoredMessage's fields made of the NewMessage `m` without meta (its conversation, `seq`,
    then the rest of its items) as a `cls`: an exact tuple, or a tuple subclass (a NamedTuple).
    Out of the collector's sight when none of the fields is in it."""
    cdef Py_ssize_t i
    # objects, never inferred C values: each reference the result steals must be their own
    cdef object result, item
    if cls is tuple:
        result = PyTuple_New(_NEW_FIELDS + 1)
    else:
        result = PyType_GenericAlloc(cls, _NEW_FIELDS + 1)
    item = <object>PyTuple_GET_ITEM(m, _F_CONVERSATION)
    Py_INCREF(item)
    PyTuple_SET_ITEM(result, 0, item)
    Py_INCREF(seq)
    PyTuple_SET_ITEM(result, 1, seq)
    for i in range(1, _NEW_FIELDS):
        item = <object>PyTuple_GET_ITEM(m, i)
        Py_INCREF(item)
        PyTuple_SET_ITEM(result, i + 1, item)
    _untrack_tuple(<tuple>result)
    return result


# The idempotency index: every stored row by (sender_id, id), in open-addressing tables of
# 16-byte slots (a fingerprint of the pair and the row), probed linearly. A dict per sender does
# the same job, but at a million rows each lookup of a new id (nearly every lookup) misses the
# cache two to four times (the dict's index, then each entry it probes): 8% of the relay's CPU
# under the pairwise load (perf, DWARF call graphs). Here the probe of a new id reads one or two
# adjacent lines, and append() asks for a request's slots before it probes them, so that their
# misses overlap: pairwise +9% msg/s against the dicts (median of four alternating pairs, each
# faster; 2-core Intel VM, 2026-12-07) for about 35 more bytes of peak RSS per stored message.
# The rows are spread over _SHARDS tables by the fingerprint's top byte, each grown on its own,
# because a doubling stalls its append: one table of a million rows took 56 ms to double (64 MB
# copied and faulted in at once), which an open loop near its core's limit pays back as p99; a
# table's doubling here moves 1/256 of that (the worst append of two million rows: 7 ms, as
# with the dicts).
# Invariants: a slot is empty exactly when its fingerprint is 0; each table is at most half
# full; a fingerprint only selects candidates: a row is the answer only when its own id and
# sender_id equal the pair asked for; the tables hold a reference of their own to each row.

ctypedef struct _Slot:
    uint64_t fp
    PyObject *row

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define RELAY_PREFETCH(p) __builtin_prefetch(p)
    #else
    #define RELAY_PREFETCH(p) ((void)0)
    #endif
    """
    void RELAY_PREFETCH(const void *p) noexcept nogil

cdef Py_ssize_t _ROW_ID = 2  # a row's id (StoredMessage: conversation, seq, id, sender_id, ...)
cdef Py_ssize_t _ROW_SENDER = 3
cdef enum:
    _SHARDS = 256  # tables, one per value of a fingerprint's top byte
cdef Py_ssize_t _SHARD_FIRST = 8  # slots of a new table (a power of two)


cdef inline uint64_t _mix(uint64_t x) noexcept nogil:
    """splitmix64's finalizer: every bit of x moves every bit of the result."""
    x ^= x >> 30
    x *= 0xBF58476D1CE4E5B9ULL
    x ^= x >> 27
    x *= 0x94D049BB133111EBULL
    x ^= x >> 31
    return x


cdef inline uint64_t _fingerprint(object sender, object ident) except? 0:
    cdef uint64_t fp = _mix(<uint64_t>PyObject_Hash(ident) ^ _mix(<uint64_t>PyObject_Hash(sender)))
    return fp if fp != 0 else 1  # 0 marks an empty slot


cdef class MemoryAppender:
    """MemoryStore.append_now's per-message work, in C (relay._fastpath_py.MemoryAppender is
    the reference: same containers, same views, same results)."""

    cdef _Slot *_tables[_SHARDS]
    cdef Py_ssize_t _masks[_SHARDS]  # each table's slots - 1
    cdef Py_ssize_t _counts[_SHARDS]  # each table's rows
    cdef dict _logs
    cdef dict _orders
    cdef long long _last_order
    cdef object _direct
    cdef object _note_direct
    cdef type _stored_cls
    cdef type _appended_cls

    def __cinit__(self):
        # tp_alloc zeroed the arrays: __dealloc__ skips the tables not made when one fails
        cdef Py_ssize_t k
        for k in range(_SHARDS):
            self._tables[k] = <_Slot *>PyMem_Calloc(_SHARD_FIRST, sizeof(_Slot))
            if self._tables[k] == NULL:
                raise MemoryError()
            self._masks[k] = _SHARD_FIRST - 1
            self._counts[k] = 0

    def __dealloc__(self):
        cdef Py_ssize_t i, k
        cdef _Slot *table
        for k in range(_SHARDS):
            table = self._tables[k]
            if table == NULL:
                continue
            for i in range(self._masks[k] + 1):
                if table[i].fp != 0:
                    Py_DECREF(<object>table[i].row)
            PyMem_Free(table)
            self._tables[k] = NULL

    def __init__(self, direct, note_direct, type stored_cls, type appended_cls):
        if not (issubclass(stored_cls, tuple) and issubclass(appended_cls, tuple)):
            raise TypeError("MemoryAppender needs tuple classes (NamedTuples)")
        self._logs = {}
        self._orders = {}
        self._last_order = 0
        self._direct = direct
        self._note_direct = note_direct
        self._stored_cls = stored_cls
        self._appended_cls = appended_cls

    @property
    def logs(self):
        return self._logs

    @property
    def orders(self):
        return self._orders

    def find(self, sender_id, ident):
        """The stored row of (sender_id, id), or None."""
        cdef _Slot *slot = self._probe(_fingerprint(sender_id, ident), sender_id, ident)
        return <object>slot.row if slot.fp != 0 else None

    def take_order(self):
        self._last_order += 1
        return self._last_order

    cdef _Slot *_probe(self, uint64_t fp, object sender, object ident) except NULL:
        """The slot holding (sender, ident)'s row, else the empty slot where it would go."""
        cdef Py_ssize_t k = <Py_ssize_t>(fp >> 56)
        cdef Py_ssize_t at = <Py_ssize_t>(fp & <uint64_t>self._masks[k])
        cdef _Slot *slot
        cdef object row
        while True:
            slot = &self._tables[k][at]
            if slot.fp == 0:
                return slot
            if slot.fp == fp:
                row = <object>slot.row
                if (
                    PyObject_RichCompareBool(<object>PyTuple_GET_ITEM(row, _ROW_ID), ident, Py_EQ)
                    and PyObject_RichCompareBool(
                        <object>PyTuple_GET_ITEM(row, _ROW_SENDER), sender, Py_EQ
                    )
                ):
                    return &self._tables[k][at]  # the comparisons ran Python: re-read the table
            at = (at + 1) & self._masks[k]

    cdef int _grow(self, Py_ssize_t k) except -1:
        """Table k with twice the slots, every row moved by its fingerprint (no Python object
        is read)."""
        cdef Py_ssize_t size = (self._masks[k] + 1) * 2
        cdef Py_ssize_t i, at
        cdef _Slot *old = self._tables[k]
        cdef _Slot *slots = <_Slot *>PyMem_Calloc(size, sizeof(_Slot))
        if slots == NULL:
            raise MemoryError()
        for i in range(self._masks[k] + 1):
            if old[i].fp != 0:
                at = <Py_ssize_t>(old[i].fp & <uint64_t>(size - 1))
                while slots[at].fp != 0:
                    at = (at + 1) & (size - 1)
                slots[at] = old[i]
        self._tables[k] = slots
        self._masks[k] = size - 1
        PyMem_Free(old)
        return 0

    def append(self, messages):
        cdef list results = []
        cdef tuple m, row
        cdef Py_ssize_t i, k
        cdef uint64_t fp
        cdef _Slot *slot
        cdef list log
        # objects, never inferred C values: each reference a row steals must be the variable's own
        cdef object seq, conversation
        if type(messages) is list and len(<list>messages) > 1:
            # Each probe of a big table misses the cache: ask for every slot of the request
            # first, so that the misses overlap instead of coming one per message.
            for message in <list>messages:
                if isinstance(message, tuple) and PyTuple_GET_SIZE(message) == _NEW_FIELDS:
                    fp = _fingerprint(
                        <object>PyTuple_GET_ITEM(<tuple>message, _F_SENDER),
                        <object>PyTuple_GET_ITEM(<tuple>message, _F_ID),
                    )
                    k = <Py_ssize_t>(fp >> 56)
                    RELAY_PREFETCH(&self._tables[k][fp & <uint64_t>self._masks[k]])
        for message in messages:
            if not isinstance(message, tuple) or PyTuple_GET_SIZE(message) != _NEW_FIELDS:
                raise TypeError(f"MemoryAppender.append needs NewMessages, not {message!r}")
            m = <tuple>message
            sender = <object>PyTuple_GET_ITEM(m, _F_SENDER)
            ident = <object>PyTuple_GET_ITEM(m, _F_ID)
            fp = _fingerprint(sender, ident)
            slot = self._probe(fp, sender, ident)
            if slot.fp != 0:
                existing = <object>slot.row
                results.append(
                    _record(self._appended_cls, (_record(self._stored_cls, <tuple?>existing), True))
                )
                continue
            conversation = <object>PyTuple_GET_ITEM(m, _F_CONVERSATION)
            found = self._logs.get(conversation)
            if found is None:
                log = untracked([])
                self._logs[conversation] = log
                self._orders[conversation] = untracked([])
            else:
                log = <list?>found
            seq = len(log) + 1
            if (
                <object>PyTuple_GET_ITEM(m, _F_META) is None
                and <object>PyTuple_GET_ITEM(m, _F_E2E) is None
                and <object>PyTuple_GET_ITEM(m, _F_ATTACHMENTS) is None
            ):
                row = <tuple>_stored_fields(tuple, m, seq)
                stored = _record(self._stored_cls, row)
            else:
                stored = message.stored(seq)  # its own copy of `meta`
                row = tuple(stored)
                # kept for the store's life: its JSON values out of the collector's sight, then
                # the row (what keeps full collections short with millions of such rows)
                for i in range(_F_META + 1, _F_CALL + 2):  # a row's fields: seq comes second
                    item = <object>PyTuple_GET_ITEM(row, i)
                    if item is not None:
                        _untrack_json(item, _JSON_DEPTH)
                _untrack_tuple(row)
            log.append(row)
            k = <Py_ssize_t>(fp >> 56)
            if (self._counts[k] + 1) * 2 > self._masks[k] + 1:
                self._grow(k)
            # probed again (its line is cached): Python ran since the first probe (stored() of a
            # message with meta), so the slot found then is not trusted to still be there
            slot = self._probe(fp, sender, ident)
            Py_INCREF(row)
            if slot.fp != 0:  # only if that Python stored the pair: the latest row, as the twin
                Py_DECREF(<object>slot.row)
            else:
                slot.fp = fp
                self._counts[k] += 1
            slot.row = <PyObject *>row
            self._last_order += 1
            (<list>self._orders[conversation]).append(self._last_order)
            if <object>PyTuple_GET_ITEM(m, _F_GROUP) is None and conversation not in self._direct:
                self._note_direct(message)
            results.append(_record(self._appended_cls, (stored, False)))
        return results


# --- the SQLite store's rows ----------------------------------------------------------------------
# SqliteStore's per-message work for a fused append (the twin, sqlite_rows, says what it gives):
# the row's parameters go straight from the NewMessage's items onto its group's list.

# the twin's table, equal by the parity suite: what each bit means
ROW_OPTIONAL = (
    "recipient_id",
    "group_id",
    "sender_name",
    "sender_avatar",
    "client_timestamp",
    "meta",
    "e2e",
    "attachments",
    "call",
)
cdef Py_ssize_t _F_TEXT = 3
cdef Py_ssize_t _F_TIMESTAMP = 4
cdef Py_ssize_t _F_RECIPIENT = 5
# _F_GROUP (6), then sender_name 7, sender_avatar 8, client_timestamp 9, _F_META (10), _F_E2E (11)


def sqlite_rows(requests, tip_of, pos, type stored_cls, type appended_cls):
    """relay._fastpath_py.sqlite_rows in C: same calls of `tip_of`, same rows and answers."""
    if not (issubclass(stored_cls, tuple) and issubclass(appended_cls, tuple)):
        raise TypeError("sqlite_rows needs tuple classes (NamedTuples)")
    cdef dict tips = {}
    cdef dict rows = {}
    cdef list answers = []
    cdef list results, tip, params
    cdef tuple m
    cdef Py_ssize_t i
    cdef int present
    # objects, never inferred C values: each reference a tuple steals must be the variable's own
    cdef object seq, conversation, item, meta, e2e, files, call, key
    for messages in requests:
        results = []
        for message in messages:
            if not isinstance(message, tuple) or PyTuple_GET_SIZE(message) != _NEW_FIELDS:
                raise TypeError(f"sqlite_rows needs NewMessages, not {message!r}")
            m = <tuple>message
            conversation = <object>PyTuple_GET_ITEM(m, _F_CONVERSATION)
            found = tips.get(conversation)
            if found is None:
                found = tip_of(message)
                if type(found) is not list or len(<list>found) != 3:
                    raise TypeError(f"tip_of must return [last_seq, last_pos, updated_at], not {found!r}")
                tips[conversation] = found
            tip = <list>found
            pos = pos + 1
            seq = tip[0] + 1
            tip[0] = seq
            tip[1] = pos
            timestamp = <object>PyTuple_GET_ITEM(m, _F_TIMESTAMP)
            tip[2] = timestamp
            present = 0
            for i in range(_F_RECIPIENT, _F_META + 1):
                if <object>PyTuple_GET_ITEM(m, i) is not None:
                    present |= 1 << (i - _F_RECIPIENT)
            e2e = <object>PyTuple_GET_ITEM(m, _F_E2E)
            if e2e is not None:
                present |= 1 << (_F_E2E - _F_RECIPIENT)
            files = <object>PyTuple_GET_ITEM(m, _F_ATTACHMENTS)
            if files is not None:
                present |= 1 << (_F_ATTACHMENTS - _F_RECIPIENT)
            call = <object>PyTuple_GET_ITEM(m, _F_CALL)
            if call is not None:
                present |= 1 << (_F_CALL - _F_RECIPIENT)
            key = present
            found = rows.get(key)
            if found is None:
                params = []
                rows[key] = params
            else:
                params = <list>found
            params.append(pos)
            params.append(conversation)
            params.append(seq)
            params.append(<object>PyTuple_GET_ITEM(m, _F_ID))
            params.append(<object>PyTuple_GET_ITEM(m, _F_SENDER))
            params.append(<object>PyTuple_GET_ITEM(m, _F_TEXT))
            params.append(timestamp)
            for i in range(_F_RECIPIENT, _F_META):
                item = <object>PyTuple_GET_ITEM(m, i)
                if item is not None:
                    params.append(item)
            meta = <object>PyTuple_GET_ITEM(m, _F_META)
            if meta is None and e2e is None and files is None and call is None:
                stored = _stored_fields(stored_cls, m, seq)  # the StoredMessage, made in place
            else:
                if meta is not None:
                    params.append(_orjson_dumps(meta).decode())
                if e2e is not None:
                    params.append(_orjson_dumps(e2e).decode())
                if files is not None:
                    params.append(_orjson_dumps(files).decode())
                if call is not None:
                    params.append(_orjson_dumps(call).decode())
                stored = message.stored(seq)  # its own copy of `meta`
            appended = PyType_GenericAlloc(appended_cls, 2)
            Py_INCREF(stored)
            PyTuple_SET_ITEM(appended, 0, stored)
            Py_INCREF(False)
            PyTuple_SET_ITEM(appended, 1, False)
            results.append(appended)
        answers.append(results)
    return rows, answers, pos


# --- decoding the common `message` frame ----------------------------------------------------------
# decode_message reads the usual shape of a `message` frame straight from its bytes: one JSON
# object whose values are strings without escapes, or null. Anything else (an escape, a number,
# a nested value, a duplicate key, bad UTF-8, a field _fault refuses) takes the twin's way:
# orjson.loads, then the same checks on the dict. So both give the same result for every input.

cdef enum:
    _K_TYPE = 0
    _K_ID = 1
    _K_REF = 2
    _K_META = 3
    _K_TEXT = 4
    _K_RECIPIENT = 5
    _K_GROUP = 6
    _K_SENDER = 7
    _K_NAME = 8
    _K_AVATAR = 9
    _K_STAMP = 10
    _K_E2E = 11
    _K_CALL = 12
    _K_FILES = 13  # attachments
    _K_COUNT = 14
    _K_OTHER = -1


cdef inline int _key_of(const unsigned char* k, Py_ssize_t n) noexcept nogil:
    if n == 2:
        return _K_ID if memcmp(k, b"id", 2) == 0 else _K_OTHER
    if n == 3:
        if memcmp(k, b"ref", 3) == 0:
            return _K_REF
        return _K_E2E if memcmp(k, b"e2e", 3) == 0 else _K_OTHER
    if n == 4:
        if memcmp(k, b"type", 4) == 0:
            return _K_TYPE
        if memcmp(k, b"text", 4) == 0:
            return _K_TEXT
        if memcmp(k, b"meta", 4) == 0:
            return _K_META
        if memcmp(k, b"call", 4) == 0:
            return _K_CALL
        return _K_OTHER
    if n == 7:
        return _K_GROUP if memcmp(k, b"groupId", 7) == 0 else _K_OTHER
    if n == 8:
        return _K_SENDER if memcmp(k, b"senderId", 8) == 0 else _K_OTHER
    if n == 9:
        return _K_STAMP if memcmp(k, b"timestamp", 9) == 0 else _K_OTHER
    if n == 10:
        return _K_NAME if memcmp(k, b"senderName", 10) == 0 else _K_OTHER
    if n == 11:
        if memcmp(k, b"recipientId", 11) == 0:
            return _K_RECIPIENT
        return _K_FILES if memcmp(k, b"attachments", 11) == 0 else _K_OTHER
    if n == 12:
        return _K_AVATAR if memcmp(k, b"senderAvatar", 12) == 0 else _K_OTHER
    return _K_OTHER


cdef inline Py_ssize_t _skip_space(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    while i < n and (p[i] == 32 or p[i] == 9 or p[i] == 10 or p[i] == 13):
        i += 1
    return i


cdef inline Py_ssize_t _plain_string_end(
    const unsigned char* p, Py_ssize_t i, Py_ssize_t n
) noexcept nogil:
    """`p[i]` opens a string: the index of its closing quote when it holds no escape and no
    control character, else -1."""
    cdef unsigned char c
    cdef uint64_t w
    i += 1
    while i + 8 <= n:
        memcpy(&w, p + i, 8)
        if not _word_plain(w):
            break
        i += 8
    while i < n:
        c = p[i]
        if c == 34:
            return i
        if c == 92 or c < 0x20:
            return -1
        i += 1
    return -1


cdef Py_ssize_t _nested_end(
    const unsigned char* p, Py_ssize_t i, Py_ssize_t n, Py_ssize_t cap, Py_ssize_t* deepest
) noexcept nogil:
    """`p[i]` opens an object or array: the index just past the bracket that closes it, and in
    `deepest` how many objects and arrays it nests on its deepest path (_depth's count: strings
    are skipped whole, escapes included). -1 when it is cut or nests more than `cap` levels.
    Only the brackets are matched: orjson reads the span and refuses what else is wrong."""
    cdef Py_ssize_t depth = 0
    cdef unsigned char c
    cdef uint64_t w
    deepest[0] = 0
    while i < n:
        c = p[i]
        if c == 34:  # "
            i += 1
            while i < n and p[i] != 34:
                if i + 8 <= n:  # a word with no quote, backslash or control byte: skipped whole
                    memcpy(&w, p + i, 8)
                    if _word_plain(w):
                        i += 8
                        continue
                i += 2 if p[i] == 92 else 1  # a backslash escapes the next byte
            if i >= n:
                return -1
        elif c == 123 or c == 91:  # { [
            depth += 1
            if depth > deepest[0]:
                deepest[0] = depth
                if depth > cap:
                    return -1
        elif c == 125 or c == 93:  # } ]
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


cdef bint _scan_message(
    const unsigned char* p, Py_ssize_t n, Py_ssize_t* starts, Py_ssize_t* lens,
    Py_ssize_t* nests, Py_ssize_t cap
) noexcept nogil:
    """Scan one JSON object of plain strings and nulls: each known key's value span into
    starts/lens (start -1: null; absent keys are left at -2). `meta`, `e2e` and `attachments`
    may also hold an object or array nesting at most `cap` levels: its span, brackets included,
    with its depth in `nests` (0 for a string). False for any other shape."""
    cdef Py_ssize_t i = _skip_space(p, 0, n)
    cdef Py_ssize_t key_end, value_end
    cdef int key
    cdef unsigned int seen = 0
    if i >= n or p[i] != 123:  # {
        return False
    i = _skip_space(p, i + 1, n)
    if i < n and p[i] == 125:  # {}
        return False  # no type: not a message
    while True:
        if i >= n or p[i] != 34:
            return False
        key_end = _plain_string_end(p, i, n)
        if key_end < 0:
            return False
        key = _key_of(p + i + 1, key_end - i - 1)
        if key == _K_OTHER and not _utf8_valid(p + i + 1, key_end - i - 1):
            return False  # orjson refuses it: the known keys and values are decoded later
        if key != _K_OTHER:
            if seen & (1u << key):
                return False  # a duplicate: orjson's rule decides
            seen |= 1u << key
        i = _skip_space(p, key_end + 1, n)
        if i >= n or p[i] != 58:  # :
            return False
        i = _skip_space(p, i + 1, n)
        if i >= n:
            return False
        if p[i] == 34:
            value_end = _plain_string_end(p, i, n)
            if value_end < 0:
                return False
            if key != _K_OTHER:
                starts[key] = i + 1
                lens[key] = value_end - i - 1
            elif not _utf8_valid(p + i + 1, value_end - i - 1):
                return False
            i = value_end + 1
        elif i + 4 <= n and memcmp(p + i, b"null", 4) == 0:
            if key != _K_OTHER:
                starts[key] = -1
            i += 4
        elif (p[i] == 123 or p[i] == 91) and (key == _K_META or key == _K_E2E or key == _K_FILES):
            value_end = _nested_end(p, i, n, cap, &nests[key])
            if value_end < 0:
                return False
            starts[key] = i
            lens[key] = value_end - i
            i = value_end
        else:
            return False
        i = _skip_space(p, i, n)
        if i >= n:
            return False
        if p[i] == 44:  # ,
            i = _skip_space(p, i + 1, n)
            continue
        if p[i] != 125:  # }
            return False
        return _skip_space(p, i + 1, n) == n


cdef object _span_str(const unsigned char* p, Py_ssize_t start, Py_ssize_t length):
    """The str of a scanned value (None for null or absent); raises UnicodeDecodeError."""
    if start < 0:
        return None
    return PyUnicode_DecodeUTF8(<const char*>(p + start), length, NULL)


# The last str each repeating field decoded to (the sender's id, name and avatar, the peer or
# group, the client timestamp): consecutive frames mostly repeat them, so the same object is
# returned again. Its hash is then already known to every dict it is looked up in, and nothing
# is allocated. Invariant: an entry is None or an exact str; a span is only matched against an
# ASCII entry, whose characters are its UTF-8 bytes, so a match decodes to an equal str.
cdef list _recent = [None] * _K_COUNT


cdef object _span_str_recent(
    const unsigned char* p, Py_ssize_t start, Py_ssize_t length, int key
):
    """_span_str, returning the field's previous str when the bytes are the same."""
    if start < 0:
        return None
    last = <object>PyList_GET_ITEM(_recent, key)
    if (
        last is not None
        and PyUnicode_IS_COMPACT_ASCII(last)
        and PyUnicode_GET_LENGTH(last) == length
        and memcmp(PyUnicode_DATA(last), p + start, length) == 0
    ):
        return last
    value = PyUnicode_DecodeUTF8(<const char*>(p + start), length, NULL)
    _recent[key] = value
    return value


def decode_message(payload, rules, type frame_cls):
    """The twin's decode_message: a `frame_cls` (MessageFrame) when the payload is a `message`
    frame message_fault passes under `rules`, else the decoded JSON value (orjson.loads; its
    JSONDecodeError when not JSON; ValueError when it nests deeper than max_frame_depth, which
    is at least 1: a frame the scan reads holds no object or array but itself)."""
    cdef Py_ssize_t starts[_K_COUNT]
    cdef Py_ssize_t lens[_K_COUNT]
    cdef Py_ssize_t nests[_K_COUNT]
    cdef const unsigned char* p
    cdef Py_ssize_t n, i
    cdef tuple fields
    cdef _Rules* r = _rules_of(rules)
    if type(payload) is not bytes:
        return _decode_by_dict(payload, r, frame_cls)
    p = <const unsigned char*>PyBytes_AS_STRING(payload)
    n = PyBytes_GET_SIZE(payload)
    for i in range(_K_COUNT):
        starts[i] = -2
        lens[i] = 0
        nests[i] = 0
    # the frame is one level: what it holds nests at most max_frame_depth - 1 more
    if (
        not _scan_message(p, n, starts, lens, nests, r.max_frame_depth - 1)
        or starts[_K_CALL] != -2  # any `call`, even null, is refused: the dict's way says so
        # a string: refused by the dict's way (meta:type, e2e:type, attachments:type)
        or (starts[_K_META] >= 0 and not nests[_K_META])
        or (starts[_K_E2E] >= 0 and not nests[_K_E2E])
        or (starts[_K_FILES] >= 0 and not nests[_K_FILES])
    ):
        return _decode_by_dict(payload, r, frame_cls)
    if lens[_K_TYPE] != 7 or starts[_K_TYPE] < 0 or memcmp(p + starts[_K_TYPE], b"message", 7) != 0:
        return _decode_by_dict(payload, r, frame_cls)
    try:
        ident = _span_str(p, starts[_K_ID], lens[_K_ID])
        ref = _span_str(p, starts[_K_REF], lens[_K_REF])
        text = _span_str(p, starts[_K_TEXT], lens[_K_TEXT])
        peer = _span_str_recent(p, starts[_K_RECIPIENT], lens[_K_RECIPIENT], _K_RECIPIENT)
        group = _span_str_recent(p, starts[_K_GROUP], lens[_K_GROUP], _K_GROUP)
        sender = _span_str_recent(p, starts[_K_SENDER], lens[_K_SENDER], _K_SENDER)
        name = _span_str_recent(p, starts[_K_NAME], lens[_K_NAME], _K_NAME)
        avatar = _span_str_recent(p, starts[_K_AVATAR], lens[_K_AVATAR], _K_AVATAR)
        stamp = _span_str_recent(p, starts[_K_STAMP], lens[_K_STAMP], _K_STAMP)
    except UnicodeDecodeError:
        return _decode_by_dict(payload, r, frame_cls)
    # meta, e2e and attachments: absent, null, or an object or array read from its own span
    # (what orjson reads of the whole frame there; the whole frame by orjson cost ~2x the
    # scan for a message with a small meta). A span orjson refuses goes the dict's way, which
    # raises orjson's own error.
    meta = e2e = attachments = None
    try:
        if nests[_K_META]:
            meta = orjson.loads(PyBytes_FromStringAndSize(<const char*>(p + starts[_K_META]), lens[_K_META]))
        if nests[_K_E2E]:
            e2e = orjson.loads(PyBytes_FromStringAndSize(<const char*>(p + starts[_K_E2E]), lens[_K_E2E]))
        if nests[_K_FILES]:
            attachments = orjson.loads(
                PyBytes_FromStringAndSize(<const char*>(p + starts[_K_FILES]), lens[_K_FILES])
            )
    except orjson.JSONDecodeError:
        return _decode_by_dict(payload, r, frame_cls)
    if _fault(
        ident, peer, group, sender, name, avatar, stamp, text, meta, r,
        nests[_K_META] <= r.max_meta_depth, e2e, attachments,
    ):
        return _decode_by_dict(payload, r, frame_cls)
    if ref is None:
        ref = ident
    if text is None:  # e2e or files in its place
        text = ""
    fields = (ident, text, sender, peer, group, name, avatar, stamp, meta, ref, e2e, attachments)
    return record(frame_cls, fields)


cdef object _decode_by_dict(payload, _Rules* r, type frame_cls):
    """decode_message by orjson's dict, as the twin does it."""
    cdef Py_ssize_t depth = 0
    obj = orjson.loads(payload)
    if type(obj) is dict or type(obj) is list:
        depth = _depth(obj, r.max_frame_depth)
        if depth > r.max_frame_depth:
            raise ValueError(f"JSON nests deeper than {r.max_frame_depth} levels")
    if type(obj) is not dict:
        return obj
    cdef dict d = <dict>obj
    if d.get("type") != "message":
        return obj
    ident = d.get("id")
    meta = d.get("meta")
    e2e = d.get("e2e")
    attachments = d.get("attachments")
    if _fault(
        ident, d.get("recipientId"), d.get("groupId"), d.get("senderId"), d.get("senderName"),
        d.get("senderAvatar"), d.get("timestamp"), d.get("text"), meta, r,
        depth - 1 <= r.max_meta_depth,  # meta is one level inside the frame
        e2e, attachments, "call" in d,
    ):
        return obj
    ref = d.get("ref")
    if type(ref) is not str:
        ref = ident
    fields = (
        ident, "" if d.get("text") is None else d.get("text"), d.get("senderId"),
        d.get("recipientId"),
        d.get("groupId"), d.get("senderName"), d.get("senderAvatar"), d.get("timestamp"), meta,
        ref, e2e, attachments,
    )
    return record(frame_cls, fields)
