"""Fuzz harness: the compiled FrameParser against its pure twin, and chunking invariance.

`python tests/fuzz/run.py frames` runs it (see tests/fuzz/run.py for time and corpus options).

One input is a byte stream of client frames and a way to cut it (tests/fuzz/script.py's
format): `max_message_bytes`, up to 16 cut points with the buffer type of each piece, then the
stream, either raw bytes or frames built from fuzzer-chosen headers (FIN, RSV, opcode, mask
bit, length form, declared length, mask key, payload). It checks:
- compiled and pure give the same events, the same `failed`, close code and reason, for the
  stream fed whole and fed in the chosen pieces;
- the pieces give the same events and outcome as the whole stream (chunking invariance), even
  when each piece's buffer is overwritten right after its feed (the shell reads every socket
  into one shared buffer: what a parser keeps, it must have copied);
- every payload is `bytes`, and once failed or closed a parser's feeds return [];
- all of it with RSV1 allowed (permessage-deflate negotiated) and not.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from typing import Any

from fuzz.script import Reader, Writer

from relay import _fastpath, _fastpath_py

MAX_MESSAGE_BYTES = (0, 1, 125, 126, 127, 65535, 65536, 1 << 20)
#: how a piece is handed to feed(): the shell hands a memoryview of a reused bytearray
VIEWS = ("bytes", "bytearray", "memoryview")
MAX_CUTS = 16
MODES = ("raw", "built")
# the length field's form in a built frame
LEN_MINIMAL, LEN_16, LEN_64, LEN_DECLARED = range(4)
FLAG_UNMASKED = 4
FLAG_TOP_BIT = 8

Events = list[tuple[int, bytes]]


def build_frame(
    flags: int, form: int, key: bytes, payload: bytes, declared: int | None = None
) -> bytes:
    """A client frame with header byte `flags` (FIN, RSV, opcode); `form`'s low 2 bits choose
    the length field (minimal, 16-bit, 64-bit, or `declared` instead of the payload's length),
    FLAG_UNMASKED leaves out the mask, FLAG_TOP_BIT sets the 64-bit length's top bit."""
    n = len(payload)
    length = declared if form & 3 == LEN_DECLARED and declared is not None else n
    mask_bit = 0 if form & FLAG_UNMASKED else 0x80
    kind = form & 3
    if kind == LEN_64 or form & FLAG_TOP_BIT:
        top = (1 << 63) if form & FLAG_TOP_BIT else 0
        head = struct.pack("!BBQ", flags, mask_bit | 127, length | top)
    elif kind == LEN_16 or length > 125:
        head = struct.pack("!BBH", flags, mask_bit | 126, length & 0xFFFF)
    else:
        head = bytes((flags, mask_bit | length))
    if not mask_bit:
        return head + payload
    key = (key + b"\0\0\0\0")[:4]
    masked = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
    return head + key + masked


def read_built(r: Reader) -> bytes:
    out = bytearray()
    while r.more():
        flags = r.byte()
        form = r.byte()
        declared = r.u16() if form & 3 == LEN_DECLARED else None
        key = bytes(r.byte() for _ in range(4))
        out += build_frame(flags, form, key, r.chunk(), declared)
    return bytes(out)


def feed_all(parser: Any, pieces: Sequence[tuple[str, bytes]]) -> Events:
    """Feed `pieces` in order as their buffer types; each mutable buffer is overwritten after
    its feed returns."""
    events: Events = []
    for view, data in pieces:
        if view == "bytes":
            events += parser.feed(data)
            continue
        buf = bytearray(data)
        events += parser.feed(buf if view == "bytearray" else memoryview(buf))
        buf[:] = b"\xaa" * len(buf)
    return events


def outcome(parser: Any) -> tuple[bool, int, str]:
    return parser.failed, parser.close_code, parser.close_reason


def check(data: bytes, compiled: Any = _fastpath, pure: Any = _fastpath_py) -> None:
    """One fuzz input; AssertionError names the broken invariant."""
    r = Reader(data)
    max_bytes = r.pick(MAX_MESSAGE_BYTES)
    cuts = [r.u16() for _ in range(r.byte() % (MAX_CUTS + 1))]
    views = [r.pick(VIEWS) for _ in range(len(cuts) + 1)]
    stream = r.rest() if r.pick(MODES) == "raw" else read_built(r)
    bounds = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    pieces = [
        (views[i % len(views)], stream[a:b]) for i, (a, b) in enumerate(itertools.pairwise(bounds))
    ]

    # each input twice: without and with RSV1 allowed (permessage-deflate negotiated)
    for rsv1 in (False, True):
        results = {}
        for name, module in (("compiled", compiled), ("pure", pure)):
            whole = module.FrameParser(max_bytes)
            chunked = module.FrameParser(max_bytes)
            whole.allow_rsv1 = chunked.allow_rsv1 = rsv1
            results[name, "whole"] = (whole, feed_all(whole, [("bytes", stream)]))
            results[name, "chunked"] = (chunked, feed_all(chunked, pieces))
        (ref_parser, ref_events) = results["pure", "whole"]
        for key, (parser, events) in results.items():
            assert events == ref_events, (
                f"{key} events differ from pure whole (allow_rsv1={rsv1}):\n"
                f"{events!r}\n{ref_events!r}"
            )
            assert outcome(parser) == outcome(ref_parser), (
                key,
                outcome(parser),
                outcome(ref_parser),
            )
            assert all(type(payload) is bytes for _, payload in events), key
            if parser.failed or (events and events[-1][0] == pure.OP_CLOSE):
                assert parser.feed(build_frame(0x81, 0, b"abcd", b"late")) == [], key


def seeds() -> dict[str, bytes]:
    """The seed corpus: real client frames, alone, in sequences, and broken the ways RFC 6455
    names (file name -> input)."""
    key = b"\x37\xfa\x21\x3d"
    auth = b'{"type":"auth","userId":"alice","deviceId":"phone","acks":true}'
    message = b'{"type":"message","id":"m1","recipientId":"bob","text":"hello \xc3\xa9"}'
    history = b'{"type":"history","peerId":"bob","limit":50}'

    def frame(flags: int, payload: bytes, form: int = LEN_MINIMAL) -> bytes:
        return build_frame(flags, form, key, payload)

    def raw(stream: bytes, max_bytes: int = 65536, cuts: Sequence[int] = ()) -> bytes:
        w = Writer().pick(MAX_MESSAGE_BYTES, max_bytes).byte(len(cuts))
        for cut in cuts:
            w.u16(cut)
        for i in range(len(cuts) + 1):
            w.byte(i % len(VIEWS))
        return w.pick(MODES, "raw").raw(stream).done()

    def built(frames: Sequence[tuple[int, int, bytes]], max_bytes: int = 65536) -> bytes:
        w = Writer().pick(MAX_MESSAGE_BYTES, max_bytes).byte(0).byte(0).pick(MODES, "built")
        for flags, form, payload in frames:
            w.byte(flags).byte(form).raw(key).chunk(payload)
        return w.done()

    session = frame(0x81, auth) + frame(0x81, message) + frame(0x81, history)
    big = b'{"type":"message","id":"m2","recipientId":"bob","text":"' + b"x" * 300 + b'"}'
    return {
        "text-auth": raw(frame(0x81, auth)),
        "text-message": raw(frame(0x81, message)),
        "session": raw(session),
        "session-cut": raw(session, cuts=(1, 2, 7, 40, 90, 200)),
        "session-cut-each-byte": raw(frame(0x81, auth), cuts=tuple(range(1, 17))),
        "len16": raw(frame(0x81, big)),
        "len16-forced": raw(frame(0x81, message, LEN_16)),
        "len64-forced": raw(frame(0x81, message, LEN_64), cuts=(3, 9, 12)),
        "too-big": raw(frame(0x81, big), max_bytes=125),
        "too-big-fragments": raw(frame(0x01, big[:100]) + frame(0x80, big[100:]), max_bytes=126),
        "fragmented": raw(
            frame(0x01, message[:10]) + frame(0x00, message[10:30]) + frame(0x80, message[30:])
        ),
        "fragmented-with-ping": raw(
            frame(0x01, auth[:5]) + frame(0x89, b"p") + frame(0x80, auth[5:])
        ),
        "ping": raw(frame(0x89, b"are you there")),
        "pong": raw(frame(0x8A, b"")),
        "close-1000": raw(frame(0x88, b"\x03\xe8bye") + frame(0x81, auth)),
        "close-empty": raw(frame(0x88, b"")),
        "close-one-byte": raw(frame(0x88, b"\x03")),
        "close-bad-code": raw(frame(0x88, b"\x03\xed")),
        "close-bad-utf8": raw(frame(0x88, b"\x03\xe8\xff")),
        "binary": raw(frame(0x82, b"\x00\x01\x02")),
        "bad-utf8": raw(frame(0x81, b'{"a":"\xc3"}')),
        "utf8-split-across-fragments": raw(frame(0x01, b"\xc3") + frame(0x80, b"\xa9")),
        "unmasked": raw(frame(0x81, auth, FLAG_UNMASKED)),
        "rsv": raw(frame(0xC1, auth)),
        "unknown-opcode": raw(frame(0x83, b"x")),
        "control-fragmented": raw(frame(0x09, b"x")),
        "control-too-long": raw(frame(0x89, b"p" * 126, LEN_16)),
        "continuation-first": raw(frame(0x80, b"x")),
        "data-inside-fragmented": raw(frame(0x01, b"a") + frame(0x81, b"b")),
        "length-top-bit": raw(frame(0x81, b"x", FLAG_TOP_BIT)),
        "truncated": raw(session[:-5]),
        "built-session": built(
            [(0x81, LEN_MINIMAL, auth), (0x81, LEN_16, message), (0x89, LEN_MINIMAL, b"")]
        ),
        "built-fragments": built(
            [(0x01, LEN_MINIMAL, b"he"), (0x00, LEN_64, b"ll"), (0x80, LEN_MINIMAL, b"o")]
        ),
        "built-close": built([(0x88, LEN_MINIMAL, b"\x0f\xa0app"), (0x81, LEN_MINIMAL, b"after")]),
    }
