"""The compiled fast path and its pure-Python twin agree on every input; relay.fastpath picks
the implementation the environment asks for.

The compiled module is imported directly: when it is not built this module fails, unless
RELAY_PURE=1 is set, in which case the comparisons are skipped with that reason.
"""

from __future__ import annotations

import gc
import os
import shutil
import struct
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import relay
import relay._fastpath_py as pure
import relay.fastpath
from relay import protocol
from relay.store.base import Appended, NewMessage, StoredMessage

PURE_RUN = os.environ.get("RELAY_PURE") == "1"
SETTINGS = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def compiled() -> ModuleType:
    try:
        import relay._fastpath as module
    except ImportError as exc:
        if PURE_RUN:
            pytest.skip(f"relay._fastpath is not built and RELAY_PURE=1 is set ({exc})")
        pytest.fail(
            f"relay._fastpath is not built ({exc}): run `python setup.py build_ext --inplace`, "
            "or set RELAY_PURE=1 to test the pure-Python twin alone",
            pytrace=False,
        )
    return module


# --- strategies ------------------------------------------------------------------------------

KNOWN_OPCODES = [0, 1, 2, 8, 9, 10]


def masked_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool,
    rsv: int,
    masked: bool,
    mask: bytes,
    form: int | None,
    length: int | None,
) -> bytes:
    n = len(payload) if length is None else length
    if form is None or n > 65535:
        form = 7 if n < 126 else 16 if n < 65536 else 64
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if masked else 0
    if form == 7:
        head = bytes((b0, mbit | n))
    elif form == 16:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not masked:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


close_codes = st.one_of(
    st.sampled_from([1000, 1001, 1003, 1008, 1011, 1014, 3000, 4999]),
    st.integers(0, 65535),
)
close_payloads = st.one_of(
    st.just(b""),
    st.binary(min_size=1, max_size=1),
    st.builds(
        lambda code, reason: code.to_bytes(2, "big") + reason,
        close_codes,
        st.one_of(st.text(max_size=40).map(str.encode), st.binary(max_size=10)),
    ),
)
# Byte sequences at the edges of UTF-8 validity (overlongs, surrogates, U+10FFFF, stray bytes).
UTF8_PIECES = [
    b"a",
    b"abcdefgh",
    b"\xc2\x80",
    b"\xc1\xbf",
    b"\xdf\xbf",
    b"\xe0\x9f\xbf",
    b"\xe0\xa0\x80",
    b"\xed\x9f\xbf",
    b"\xed\xa0\x80",
    b"\xee\x80\x80",
    b"\xef\xbf\xbf",
    b"\xf0\x8f\xbf\xbf",
    b"\xf0\x90\x80\x80",
    b"\xf4\x8f\xbf\xbf",
    b"\xf4\x90\x80\x80",
    b"\xf5\x80\x80\x80",
    b"\x80",
    b"\xbf",
    b"\xc3",
    b"\xe2\x82",
    b"\xf0\x9f\x98",
    b"\xfe",
    b"\xff",
]


def _decodes(piece: bytes) -> bool:
    try:
        piece.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_valid_runs = st.lists(st.sampled_from([p for p in UTF8_PIECES if _decodes(p)]), max_size=5)
# valid text around one edge piece, so that piece alone decides validity
utf8_edges = st.builds(
    lambda before, piece, after: b"".join([*before, piece, *after]),
    _valid_runs,
    st.sampled_from(UTF8_PIECES),
    _valid_runs,
)
payloads = st.one_of(
    st.text(max_size=50).map(str.encode),
    utf8_edges,
    st.binary(max_size=40),
    st.binary(min_size=120, max_size=300),
    close_payloads,
)


@st.composite
def raw_frames(draw: st.DrawFn) -> bytes:
    """One frame of any shape, mostly well-formed."""
    return masked_frame(
        draw(st.sampled_from(KNOWN_OPCODES) | st.integers(0, 15)),
        draw(payloads),
        fin=draw(st.booleans()),
        rsv=draw(st.sampled_from([0] * 12 + [1, 2, 4])),
        masked=draw(st.sampled_from([True] * 12 + [False])),
        mask=draw(st.binary(min_size=4, max_size=4)),
        form=draw(st.sampled_from([None] * 6 + [16, 64])),
        length=draw(st.sampled_from([None] * 30 + [70000, (1 << 63) - 1, 1 << 63, (1 << 64) - 1])),
    )


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """A well-formed (possibly fragmented) data message with control frames between parts."""
    opcode = draw(st.sampled_from([1, 2]))
    body = draw(st.text(max_size=80).map(str.encode) if opcode == 1 else st.binary(max_size=80))
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
    parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    # RSV1 (permessage-deflate) on the first frame, as a client that compresses sends it
    first_rsv = draw(st.sampled_from([0, 0, 4]))
    out = b""
    for i, part in enumerate(parts):
        out += masked_frame(
            opcode if i == 0 else 0,
            part,
            fin=i == len(parts) - 1,
            rsv=first_rsv if i == 0 else 0,
            masked=True,
            mask=draw(st.binary(min_size=4, max_size=4)),
            form=draw(st.sampled_from([None, None, 16, 64])),
            length=None,
        )
        if i < len(parts) - 1 and draw(st.booleans()):
            out += masked_frame(
                draw(st.sampled_from([8, 9, 10])),
                draw(st.one_of(close_payloads, st.binary(max_size=20))),
                fin=True,
                rsv=0,
                masked=True,
                mask=b"\x01\x02\x03\x04",
                form=None,
                length=None,
            )
    return out


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """Concatenated frames, maybe with one byte corrupted, and the points to cut it at."""
    data = b"".join(draw(st.lists(st.one_of(messages(), raw_frames()), min_size=1, max_size=8)))
    if data and draw(st.booleans()):
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes((data[at] ^ draw(st.integers(1, 255)),)) + data[at + 1 :]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=10)))
    return data, cuts


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """What a call gave: its result, or its exception's type and message."""
    try:
        return "ok", call()
    except (ValueError, TypeError) as exc:
        return type(exc).__name__, str(exc)


# --- parity: parser --------------------------------------------------------------------------


@SETTINGS
@given(
    stream=streams(),
    limit=st.sampled_from([1 << 20, 100, 300]) | st.integers(1, 400),
    rsv1=st.booleans(),
)
def test_parsers_agree(
    compiled: ModuleType, stream: tuple[bytes, list[int]], limit: int, rsv1: bool
) -> None:
    data, cuts = stream
    fast, slow = compiled.FrameParser(limit), pure.FrameParser(limit)
    fast.allow_rsv1 = slow.allow_rsv1 = rsv1
    all_events = []
    for chunk in chunks(data, cuts):
        events = fast.feed(chunk)
        assert events == slow.feed(chunk)
        assert all(type(payload) is bytes for _, payload in events)
        all_events += events
    state = (fast.failed, fast.close_code, fast.close_reason)
    assert state == (slow.failed, slow.close_code, slow.close_reason)
    # chunking never changes the outcome
    whole = compiled.FrameParser(limit)
    whole.allow_rsv1 = rsv1
    assert whole.feed(data) == all_events
    assert (whole.failed, whole.close_code, whole.close_reason) == state


@SETTINGS
@given(payload=utf8_edges | st.binary(max_size=40))
def test_text_validation_is_strict_utf8(compiled: ModuleType, payload: bytes) -> None:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        expected: tuple[list[tuple[int, bytes]], int] = ([], 1007)
    else:
        expected = ([(1, payload)], 0)
    frame = masked_frame(
        1, payload, fin=True, rsv=0, masked=True, mask=b"\x0f\xf0\x55\xaa", form=None, length=None
    )
    for module in (compiled, pure):
        parser = module.FrameParser(1000)
        assert (parser.feed(frame), parser.close_code) == expected
        reason = masked_frame(
            8,
            b"\x03\xe8" + payload,
            fin=True,
            rsv=0,
            masked=True,
            mask=b"abcd",
            form=None,
            length=None,
        )
        parser = module.FrameParser(1000)
        parser.feed(reason)
        assert parser.close_code == expected[1]


@SETTINGS
@given(
    before=st.binary(max_size=40),
    code=st.sampled_from([1007, 1009]),
    reason=st.text(max_size=20),
)
def test_a_failure_found_by_the_caller_stops_both_alike(
    compiled: ModuleType, before: bytes, code: int, reason: str
) -> None:
    frame = masked_frame(
        1, b"after", fin=True, rsv=0, masked=True, mask=b"abcd", form=None, length=None
    )
    states = []
    for module in (compiled, pure):
        parser = module.FrameParser(1000)
        parser.feed(before)  # maybe half a frame, buffered
        parser.fail(code, reason)
        states.append((parser.feed(frame), parser.failed, parser.close_code, parser.close_reason))
    assert states[0] == states[1] == ([], True, code, reason)


def test_close_reasons_are_worded_alike(compiled: ModuleType) -> None:
    from relay._fastpath_py import framing  # the twin's framing, where its reasons are

    names = [name for name in dir(framing) if name.startswith("R_")]
    assert len(names) == 14
    assert {name: getattr(compiled, name) for name in names} == {
        name: getattr(framing, name) for name in names
    }


def test_the_tables_written_in_both_are_equal(compiled: ModuleType) -> None:
    # the compiled module imports nothing from relay: it writes these tables again
    assert compiled.MESSAGE_FAULTS == pure.MESSAGE_FAULTS
    assert compiled.ROW_OPTIONAL == pure.ROW_OPTIONAL


def test_opcodes_are_equal(compiled: ModuleType) -> None:
    for name in ("OP_CONT", "OP_TEXT", "OP_BINARY", "OP_CLOSE", "OP_PING", "OP_PONG", "RSV1"):
        assert getattr(compiled, name) == getattr(pure, name) == getattr(relay.fastpath, name)


# --- parity: encoders ------------------------------------------------------------------------


@SETTINGS
@given(
    opcode=st.integers(-2, 17),
    payload=st.one_of(
        st.binary(max_size=300),
        st.sampled_from([125, 126, 127, 65535, 65536, 70000]).map(lambda n: b"\xa5" * n),
    ),
)
def test_encode_frame_agrees(compiled: ModuleType, opcode: int, payload: bytes) -> None:
    fast = outcome(lambda: compiled.encode_frame(opcode, payload))
    assert fast == outcome(lambda: pure.encode_frame(opcode, payload))
    if fast[0] == "ok":
        # what the server sends, a parser reads back (once masked, as a client would)
        parser = pure.FrameParser(1 << 20)
        frame = fast[1]
        head = 2 + (0 if len(payload) < 126 else 2 if len(payload) < 65536 else 8)
        remasked = bytes((frame[0], frame[1] | 0x80)) + frame[2:head] + b"\0\0\0\0" + payload
        events = parser.feed(remasked)
        if not parser.failed:
            assert events == [(opcode, payload)]


@SETTINGS
@given(
    code=st.integers(-5, 70000) | st.sampled_from([1000, 1011, 4000]), reason=st.text(max_size=80)
)
def test_encode_close_agrees(compiled: ModuleType, code: int, reason: str) -> None:
    assert outcome(lambda: compiled.encode_close(code, reason)) == outcome(
        lambda: pure.encode_close(code, reason)
    )


@SETTINGS
@given(payload=close_payloads | st.binary(max_size=130))
def test_parse_close_agrees(compiled: ModuleType, payload: bytes) -> None:
    fast = outcome(lambda: compiled.parse_close(payload))
    assert fast == outcome(lambda: pure.parse_close(payload))
    if fast[0] == "ok" and payload:
        code, reason = fast[1]
        assert pure.parse_close(pure.encode_close(code, reason)[2:]) == (code, reason)


# --- parity: Outbox ---------------------------------------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 120), st.booleans()),
        st.tuples(st.just("take"), st.floats(0, 1), st.booleans()),
        st.tuples(st.just("push_all"), st.lists(st.integers(0, 120), max_size=4), st.booleans()),
    ),
    max_size=40,
)


@SETTINGS
@given(max_bytes=st.integers(1, 300), max_frames=st.integers(1, 12), ops=operations)
def test_outboxes_agree(
    compiled: ModuleType, max_bytes: int, max_frames: int, ops: list[tuple[str, Any, bool]]
) -> None:
    fast, slow = compiled.Outbox(max_bytes, max_frames), pure.Outbox(max_bytes, max_frames)
    for i, (op, arg, flag) in enumerate(ops):
        if op == "push":
            frame = bytes([i % 256]) * arg
            assert fast.push(frame, flag) == slow.push(frame, flag)
        elif op == "push_all":
            frames = [bytes([(i + j) % 256]) * size for j, size in enumerate(arg)]
            batch = tuple(frames) if flag else frames
            assert fast.push_all(batch) == slow.push_all(batch)
        else:
            data = fast.take()
            assert data == slow.take()
            if flag and data:
                sent = int(len(data) * arg)
                fast.unsend(data[sent:])
                slow.unsend(data[sent:])
        assert (fast.pending_bytes, fast.pending_frames, fast.dropped) == (
            slow.pending_bytes,
            slow.pending_frames,
            slow.dropped,
        )
    assert fast.take() == slow.take()


# --- JSON frames of the message path ----------------------------------------------------------

# Strings as a client may send them: quotes, backslashes, every control character, non-ASCII,
# astral characters; and (rarely, from a broken peer) lone surrogates, which orjson refuses.
json_text = st.text(
    alphabet=st.one_of(
        st.sampled_from('"\\/\b\f\n\r\t\x00\x1f\x7f\u2028é€😀'),
        st.characters(max_codepoint=0x7F),
        st.characters(blacklist_categories=("Cs",)),
    ),
    max_size=40,
)
maybe_text = st.none() | json_text
json_meta = st.none() | st.dictionaries(
    st.text(max_size=5),
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**53), 2**53) | json_text,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
        ),
        max_leaves=6,
    ),
    max_size=3,
)
# e2e objects: the valid shape (v, suite, senderDevice, boxes of base64) and its near misses
E2E_SUITE = "hpke-x25519-sha256-aes256gcm"
base64_box = st.sampled_from(["", "QQ==", "QUI=", "QUJD", "QUJD=", "QU=J", "QQ===", "Q!==", "é==="])
valid_e2e = st.fixed_dictionaries(
    {
        "v": st.sampled_from([1, 1, 2, True, "1"]),
        "suite": st.sampled_from([E2E_SUITE, E2E_SUITE, "x"]),
        "senderDevice": st.sampled_from(["d1", "", "d" * 200]),
        "boxes": st.dictionaries(
            st.sampled_from(["d1", "d2", "", "d" * 200]), base64_box, max_size=3
        ),
    }
)
json_e2e = st.none() | valid_e2e | valid_e2e.map(lambda e: {**e, "extra": 1})
# attachment lists: as a client sends them (near misses included: 0 or 11 items, no fileId, a
# fileId too long or not a string) and as the relay stores them (resolved records)
attachment_item = st.sampled_from(
    [
        {"fileId": "f1"},
        {"fileId": "AbC_-12345678901234567890"},
        {"fileId": ""},
        {"fileId": 7},
        {"fileId": "x" * 65},
        {"name": "a"},
        "f1",
        {"fileId": "f2", "name": "n"},
    ]
)
json_attachments = st.none() | st.lists(attachment_item, max_size=11) | st.just("f1")
#: a call record, as relay.core.calls stores one (a client's message may not carry it)
CALL_RECORD = {"callId": "c1", "media": "audio", "outcome": "missed", "durationMs": 0}
stored_attachments = st.none() | st.lists(
    st.fixed_dictionaries(
        {
            "fileId": st.sampled_from(["f1", "f2"]),
            "name": st.text(max_size=3),
            "size": st.integers(0, 2**40),
            "mime": st.just("image/png"),
            "sha256": st.just("ab" * 32),
        }
    ),
    min_size=1,
    max_size=3,
)


# integers the compiled writer formats itself (a long long) and those it leaves to the twin
SEQ_EDGES = st.sampled_from(
    [0, 9, 10, -1, -10, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**64, 10**30]
) | st.integers(-(2**80), 2**80)


def both_ways(call: Callable[[ModuleType], Any]) -> tuple[Any, Any]:
    """(result or exception type) of `call` on the compiled module and on the twin."""
    results = []
    for module in (relay._fastpath, pure) if not PURE_RUN else (pure, pure):
        try:
            results.append(call(module))
        except Exception as exc:  # the same failure counts as agreement
            results.append(type(exc))
    return results[0], results[1]


@SETTINGS
@given(
    seq=st.integers(1, 2**40) | SEQ_EDGES,
    ident=json_text,
    sender=json_text,
    text=json_text,
    stamp=json_text,
    peer=maybe_text,
    group=maybe_text,
    name=maybe_text,
    avatar=maybe_text,
    client_stamp=maybe_text,
    meta=json_meta,
    e2e=json_e2e,
    attachments=stored_attachments,
    call=st.none() | st.just(CALL_RECORD),
)
def test_delivery_frames_agree(
    compiled: ModuleType,
    seq: int,
    ident: str,
    sender: str,
    text: str,
    stamp: str,
    peer: str | None,
    group: str | None,
    name: str | None,
    avatar: str | None,
    client_stamp: str | None,
    meta: dict[str, Any] | None,
    e2e: dict[str, Any] | None,
    attachments: list[dict[str, Any]] | None,
    call: dict[str, Any] | None,
) -> None:
    message = StoredMessage(
        "c",
        seq,
        ident,
        sender,
        text,
        stamp,
        peer,
        group,
        name,
        avatar,
        client_stamp,
        meta,
        e2e,
        attachments,
        call,
    )
    fast, slow = both_ways(lambda m: m.encode_delivery(message))
    assert fast == slow
    if isinstance(fast, bytes):  # and it is the contract's frame
        body = orjson.loads(pure.FrameParser(1 << 20).feed(mask(fast))[0][1])
        assert body["seq"] == seq and body["status"] == "delivered"
        if e2e is None:
            assert body["text"] == text and "e2e" not in body
        else:  # an encrypted message: its e2e object untouched, no text
            assert body["e2e"] == e2e and "text" not in body
        assert body.get("attachments") == attachments
        assert body.get("call") == call


@SETTINGS
@given(
    ident=json_text,
    peer=maybe_text,
    group=maybe_text,
    seq=st.integers(0, 2**40) | SEQ_EDGES,
    stamp=json_text,
)
def test_sent_frames_agree(
    compiled: ModuleType, ident: str, peer: str | None, group: str | None, seq: int, stamp: str
) -> None:
    fast, slow = both_ways(lambda m: m.encode_sent_frame(ident, peer, group, seq, stamp))
    assert fast == slow


@SETTINGS
@given(
    ident=maybe_text,
    seq=st.integers(0, 2**40) | SEQ_EDGES,
    status=st.sampled_from(["delivered", "read"]) | json_text,
    user=json_text,
    stamp=json_text,
    peer=maybe_text,
    group=maybe_text,
)
def test_receipt_frames_agree_and_are_the_protocols(
    compiled: ModuleType,
    ident: str | None,
    seq: int,
    status: str,
    user: str,
    stamp: str,
    peer: str | None,
    group: str | None,
) -> None:
    fast, slow = both_ways(
        lambda m: m.encode_receipt_frame(ident, seq, status, user, stamp, peer, group)
    )
    assert fast == slow
    if isinstance(fast, bytes):  # the frame of the receipt relay.protocol encodes
        assert fast == pure.encode_frame(
            1,
            protocol.encode_receipt_status(
                message_id=ident,
                seq=seq,
                status=status,
                user_id=user,
                timestamp=stamp,
                peer_id=peer,
                group_id=group,
            ),
        )


def test_frames_with_lone_surrogates_fail_alike(compiled: ModuleType) -> None:
    message = StoredMessage("c", 1, "id", "a", "bad \ud800", "t", "b")
    fast, slow = both_ways(lambda m: m.encode_delivery(message))
    assert fast == slow == orjson.JSONEncodeError


def test_delivery_frame_of_a_large_message_has_a_64_bit_length(compiled: ModuleType) -> None:
    message = StoredMessage("c", 1, "id", "a", "x" * 70_000, "t", "b")
    fast, slow = both_ways(lambda m: m.encode_delivery(message))
    assert fast == slow
    assert fast[1] == 127


def mask(frame: bytes) -> bytes:
    """A server frame as a client would send it (masked with a zero key), for FrameParser."""
    head = frame[0:1]
    length = frame[1]
    rest = frame[2:]
    return (
        head
        + bytes([length | 0x80])
        + rest[: {126: 2, 127: 8}.get(length, 0)]
        + b"\0\0\0\0"
        + rest[{126: 2, 127: 8}.get(length, 0) :]
    )


# --- the common `message` frame -------------------------------------------------------------------


def nest(depth: int, leaf: Any = 1) -> Any:
    """`leaf` inside `depth` objects and arrays, alternating from the outside in."""
    for level in range(depth):
        leaf = {"k": leaf} if level % 2 else [leaf]
    return leaf


# values nesting around the depth limits the rules below sample
nested_value = st.builds(nest, st.integers(0, 6)) | st.builds(
    lambda d: {"a": nest(d)}, st.sampled_from([14, 15, 16, 17, 30, 31, 32, 33])
)
field_value = st.one_of(
    nested_value,
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.text(max_size=3),
    st.text(min_size=60, max_size=70),
    st.text(min_size=120, max_size=130),
    st.text(min_size=250, max_size=260),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
# the fields a `message` frame may carry besides its type
MESSAGE_FIELDS = (
    "id",
    "ref",
    "text",
    "recipientId",
    "groupId",
    "senderId",
    "senderName",
    "senderAvatar",
    "timestamp",
    "meta",
    "e2e",
)
message_dicts = st.fixed_dictionaries(
    {},
    optional={
        **dict.fromkeys(MESSAGE_FIELDS, field_value),
        "e2e": field_value | json_e2e,
        "attachments": json_attachments,
        "call": st.none() | st.just(CALL_RECORD) | field_value,
    },
)
# limits around the values drawn (and the protocol's): (message_id_max, ident_max,
# short_text_max, max_text_chars, max_meta_bytes, max_meta_depth, max_frame_depth >= 1)
message_rules = st.tuples(
    st.sampled_from([64, 0, 3, 65]),
    st.sampled_from([128, 0, 3, 65, 129]),
    st.sampled_from([256, 0, 3, 125, 257]),
    st.integers(0, 300),
    st.sampled_from([4096, 0, 2, 10, 30]),
    st.sampled_from([16, 0, 1, 2, 3, 17]),
    st.sampled_from([32, 1, 2, 3, 4, 18]),
)


@SETTINGS
@given(obj=message_dicts, rules=message_rules, ident=st.none() | field_value)
def test_message_faults_agree(
    compiled: ModuleType, obj: dict[str, Any], rules: tuple[int, ...], ident: Any
) -> None:
    for message_id in (obj.get("id"), ident):
        fast, slow = both_ways(lambda m, i=message_id: m.message_fault(obj, i, rules))
        assert fast == slow
        assert fast in range(len(pure.MESSAGE_FAULTS)) or fast is orjson.JSONEncodeError


def test_message_fault_refuses_rules_that_are_not_seven_limits(compiled: ModuleType) -> None:
    obj = {"recipientId": "b", "text": "hi"}
    for module in (compiled, pure):
        assert module.message_fault(obj, "m1", (64, 128, 256, 10, 10, 16, 32)) == 0
        with pytest.raises((TypeError, ValueError)):
            module.message_fault(obj, "m1", (64, 128, 256, 10, 10))


# The contract's example message frame, and the MessageFrame fields it reads as
CONTRACT_EXAMPLE = {
    "type": "message",
    "id": "1707116400000",
    "senderId": "user_123",
    "senderName": "John Doe",
    "senderAvatar": "JD",
    "recipientId": "user_456",
    "text": "Hello there!",
    "timestamp": "2026-02-05T10:30:15Z",
    "status": "pending",
}
CONTRACT_FIELDS = (
    "1707116400000",
    "Hello there!",
    "user_123",
    "user_456",
    None,
    "John Doe",
    "JD",
    "2026-02-05T10:30:15Z",
    None,
    "1707116400000",
)


def test_message_fault_passes_the_contract_example(compiled: ModuleType) -> None:
    rules = protocol.Limits().rules
    ident = CONTRACT_EXAMPLE["id"]
    assert compiled.message_fault(CONTRACT_EXAMPLE, ident, rules) == 0
    assert pure.message_fault(CONTRACT_EXAMPLE, ident, rules) == 0


def test_both_name_the_faults_alike(compiled: ModuleType) -> None:
    assert compiled.MESSAGE_FAULTS == pure.MESSAGE_FAULTS
    assert compiled.ROW_OPTIONAL == pure.ROW_OPTIONAL


# --- records ---------------------------------------------------------------------------------------


@SETTINGS
@given(items=st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=5)), max_size=12))
def test_records_agree(compiled: ModuleType, items: list[Any]) -> None:
    for cls in (StoredMessage, tuple, protocol.MessageFrame):
        fast = compiled.record(cls, tuple(items))
        slow = pure.record(cls, tuple(items))
        assert type(fast) is type(slow) is cls
        assert tuple(fast) == tuple(slow) == tuple(items)


def test_a_record_reads_like_its_class(compiled: ModuleType) -> None:
    fields = ("c", 17, "id", "ann", "hi", "t", "bob", *([None] * 8))
    message = compiled.record(StoredMessage, fields)
    assert message == StoredMessage(*fields)
    assert (message.seq, message.sender_id, message.recipient_id) == (17, "ann", "bob")
    assert message._replace(seq=18).seq == 18


def test_record_refuses_what_is_not_a_tuple_class(compiled: ModuleType) -> None:
    for module in (compiled, pure):
        with pytest.raises(TypeError):
            module.record(dict, ())


# --- the in-memory store's append ------------------------------------------------------------

CONVERSATIONS = {  # conversation -> (its people, its group id)
    "d:ann:bob": (("ann", "bob"), None),
    "d:ann:cy": (("ann", "cy"), None),
    "d:ann:ann": (("ann",), None),
    "g:team": (("ann", "bob", "cy"), "team"),
}


@st.composite
def new_messages(draw: st.DrawFn) -> list[NewMessage]:
    out = []
    for _ in range(draw(st.integers(0, 40))):
        conversation = draw(st.sampled_from(sorted(CONVERSATIONS)))
        people, group = CONVERSATIONS[conversation]
        sender = draw(st.sampled_from(people))
        recipient = None if group else ([p for p in people if p != sender] or [sender])[0]
        out.append(
            NewMessage(
                conversation,
                f"m{draw(st.integers(0, 12))}",  # repeated ids: duplicates
                sender,
                draw(st.text(max_size=3)),
                "2026-11-26T00:00:00.000Z",
                recipient,
                group,
                draw(st.one_of(st.none(), st.text(max_size=2))),
                None,
                draw(st.one_of(st.none(), st.just("2026-11-26T00:00:00Z"))),
                draw(st.one_of(st.none(), st.dictionaries(st.text(max_size=2), st.integers()))),
                draw(json_e2e),
                draw(stored_attachments),
                draw(st.one_of(st.none(), st.just(CALL_RECORD))),
            )
        )
    return out


def _appender(module: ModuleType) -> tuple[Any, dict[str, Any], list[NewMessage]]:
    """A MemoryAppender over a `direct` set of its own, and what it noted and owns."""
    direct: dict[str, bool] = {}
    noted: list[NewMessage] = []

    def note_direct(message: NewMessage) -> None:
        noted.append(message)
        direct[message.conversation] = True

    appender = module.MemoryAppender(direct, note_direct, StoredMessage, Appended)
    state = {
        "logs": appender.logs,
        "orders": appender.orders,
        "direct": direct,
    }
    return appender, state, noted


@SETTINGS
@given(batches=st.lists(new_messages(), max_size=4))
def test_memory_appenders_agree(compiled: ModuleType, batches: list[list[NewMessage]]) -> None:
    fast, fast_state, fast_noted = _appender(compiled)
    slow, slow_state, slow_noted = _appender(pure)
    for batch in batches:
        assert fast.take_order() == slow.take_order()  # a device registering between batches
        got, want = fast.append(batch), slow.append(batch)
        assert [type(a) for a in got] == [type(a) for a in want] == [Appended] * len(batch)
        assert [type(a.message) for a in got] == [StoredMessage] * len(batch)
        assert got == want
    assert fast_state == slow_state
    assert fast_noted == slow_noted
    for appender, state in ((fast, fast_state), (slow, slow_state)):  # the invariants, on both
        for conversation, rows in state["logs"].items():
            assert all(appender.find(row[3], row[2]) is row for row in rows)
            assert [row[1] for row in rows] == list(range(1, len(rows) + 1))
            assert all(type(row) is tuple for row in rows)
            assert len(state["orders"][conversation]) == len(rows)
        orders = sorted(o for per in state["orders"].values() for o in per)
        assert len(set(orders)) == len(orders)  # one acceptance order per message


def test_memory_appender_keeps_every_seq_past_the_small_ints(compiled: ModuleType) -> None:
    # Seqs above 256 are ints of their own (not CPython's shared small ones): a row must hold a
    # reference of its own to each, which a collection and further appends must not disturb.
    for module in (compiled, pure):
        appender, state, _ = _appender(module)
        for n in range(1, 1201):
            [appended] = appender.append(
                [NewMessage("d:ann:bob", f"m{n}", "ann", "hi", "t", "bob")]
            )
            assert appended.message.seq == n
        gc.collect()
        appender.append([NewMessage("d:ann:bob", "m1", "ann", "hi", "t", "bob")])  # duplicate
        rows = state["logs"]["d:ann:bob"]
        assert [row[1] for row in rows] == list(range(1, 1201))
        assert state["orders"]["d:ann:bob"] == list(range(1, 1201))
        assert appender.find("ann", "m1000") is rows[999]
        assert appender.find("ann", "m1201") is None and appender.find("bob", "m1") is None
        assert appender.take_order() == 1201


class _SameHash(str):
    """An id whose hash every other one shares: each (sender_id, id) then has the same
    fingerprint in the compiled index, which must still tell the rows apart by their ids."""

    def __hash__(self) -> int:
        return 7


def test_memory_appender_index_holds_every_row_through_growth_and_collisions(
    compiled: ModuleType,
) -> None:
    for module in (compiled, pure):
        appender, state, _ = _appender(module)
        ids = [f"m{n}" for n in range(5000)] + [_SameHash(f"c{n}") for n in range(40)]
        for start in range(0, len(ids), 100):  # requests of 100, from two senders in turn
            sender = "ann" if start % 200 else "bob"
            peer = "bob" if sender == "ann" else "ann"
            batch = [
                NewMessage("d:ann:bob", ident, sender, "hi", "t", peer)
                for ident in ids[start : start + 100]
            ]
            assert [a.duplicate for a in appender.append(batch)] == [False] * len(batch)
        rows = state["logs"]["d:ann:bob"]
        assert len(rows) == len(ids)
        assert all(appender.find(row[3], row[2]) is row for row in rows)
        assert appender.find("bob", "m150") is None  # ann's id, asked of bob
        assert appender.find("bob", _SameHash("c41")) is None
        assert appender.find("ann", _SameHash("c3")) is None  # bob's id, asked of ann
        again = appender.append(
            [
                NewMessage("d:ann:bob", "m4999", "ann", "resent", "t", "bob"),
                NewMessage("d:ann:bob", _SameHash("c3"), "bob", "resent", "t", "ann"),
                NewMessage("d:ann:bob", "m4999", "bob", "new: bob's own id", "t", "ann"),
            ]
        )
        assert [a.duplicate for a in again] == [True, True, False]
        assert [a.message.text for a in again[:2]] == ["hi", "hi"]
        assert [a.message.seq for a in again] == [5000, 5004, len(ids) + 1]


def test_memory_appender_owns_its_containers(compiled: ModuleType) -> None:
    for module in (compiled, pure):
        first, _, _ = _appender(module)
        second, _, _ = _appender(module)
        first.append([NewMessage("d:ann:bob", "m1", "ann", "hi", "t", "bob")])
        assert list(first.logs) == ["d:ann:bob"] and dict(second.logs) == {}
        assert first.take_order() == 2 and second.take_order() == 1
        with pytest.raises(TypeError):
            module.MemoryAppender({}, print, dict, Appended)


def test_memory_appender_refuses_what_is_not_a_new_message(compiled: ModuleType) -> None:
    for module in (compiled, pure):
        appender, _, _ = _appender(module)
        with pytest.raises((TypeError, AttributeError)):
            appender.append([("d:ann:bob", "m1")])


# --- the SQLite store's rows -------------------------------------------------------------------


def _rows_of(
    module: ModuleType, requests: list[list[NewMessage]], start: int, pos: int
) -> tuple[Any, list[NewMessage], dict[str, list[Any]]]:
    """sqlite_rows over `requests`, each conversation's counters starting at `start`."""
    asked: list[NewMessage] = []
    tips: dict[str, list[Any]] = {}

    def tip_of(message: NewMessage) -> list[Any]:
        asked.append(message)
        tips[message.conversation] = [start, 0, ""]
        return tips[message.conversation]

    out = module.sqlite_rows(requests, tip_of, pos, StoredMessage, Appended)
    return out, asked, tips


@SETTINGS
@given(
    requests=st.lists(new_messages(), max_size=4),
    start=st.sampled_from([0, 7, 255, 1 << 40]),
    pos=st.sampled_from([0, 300, 1 << 40]),
)
def test_sqlite_rows_agree(
    compiled: ModuleType, requests: list[list[NewMessage]], start: int, pos: int
) -> None:
    got = outcome(lambda: _rows_of(compiled, requests, start, pos))
    assert got == outcome(lambda: _rows_of(pure, requests, start, pos))
    if got[0] != "ok":  # a meta orjson cannot write (an int past 64 bits): refused alike
        return
    (rows, answers, last), asked, tips = got[1]
    assert [[type(a) for a in answer] for answer in answers] == [
        [Appended] * len(r) for r in requests
    ]
    # what SqliteStore relies on: pos counts on by one per message, seq per conversation, each
    # conversation asked for once (at its first message), and every row's parameters in place
    flat = [m for r in requests for m in r]
    assert last == pos + len(flat)
    first: dict[str, NewMessage] = {}
    for m in flat:
        first.setdefault(m.conversation, m)
    assert asked == list(first.values())
    stored = [a.message for answer in answers for a in answer]
    for conversation, tip in tips.items():
        seqs = [m.seq for m in stored if m.conversation == conversation]
        assert seqs == list(range(start + 1, start + 1 + len(seqs)))
        assert tip[0] == seqs[-1]
    for present, params in rows.items():
        width = 7 + present.bit_count()
        assert len(params) % width == 0
        for i in range(0, len(params), width):
            row_pos, conversation, seq, ident = params[i : i + 4]
            message = stored[row_pos - pos - 1]
            assert (conversation, seq, ident) == (message.conversation, message.seq, message.id)
            optional = [getattr(message, name) for name in compiled.ROW_OPTIONAL]
            assert present == sum(1 << b for b, v in enumerate(optional) if v is not None)
            *columns, meta, e2e, attachments, call = optional
            expected = [v for v in columns if v is not None]
            for value in (meta, e2e, attachments, call):
                if value is not None:
                    expected.append(orjson.dumps(value).decode())
            assert params[i + 7 : i + width] == expected


def test_sqlite_rows_keep_every_seq_and_pos_past_the_small_ints(compiled: ModuleType) -> None:
    requests = [[NewMessage("d:ann:bob", f"m{n}", "ann", "hi", "t", "bob")] for n in range(600)]
    for module in (compiled, pure):
        (rows, answers, last), _, tips = _rows_of(module, requests, 250, 1000)
        gc.collect()
        assert [a.message.seq for [a] in answers] == list(range(251, 851))
        assert rows[1][0::8] == list(range(1001, 1601))  # pos of each row
        assert rows[1][2::8] == list(range(251, 851))  # seq of each row
        assert (last, tips["d:ann:bob"][:2]) == (1600, [850, 1600])


def test_sqlite_rows_refuse_what_is_not_a_new_message(compiled: ModuleType) -> None:
    for module in (compiled, pure):
        with pytest.raises((TypeError, ValueError)):
            module.sqlite_rows([[("d:ann:bob", "m1")]], list, 0, StoredMessage, Appended)


# --- selection: relay.fastpath -------------------------------------------------------------


def test_selected_implementation_matches_the_environment(compiled: ModuleType) -> None:
    if PURE_RUN:
        assert relay.fastpath.IMPLEMENTATION == "python"
        assert relay.fastpath.FrameParser is pure.FrameParser
    else:
        assert relay.fastpath.IMPLEMENTATION == "cython"
        assert relay.fastpath.FrameParser is compiled.FrameParser


def run_python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    # -S: site-packages without their .pth files, so an editable install of relay (whose import
    # hook would find the built extension by name) cannot reach into the tree under test.
    paths = dict.fromkeys(
        [str(cwd), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    environ.update(env, PYTHONPATH=os.pathsep.join(paths))
    return subprocess.run(
        [sys.executable, "-S", "-W", "always::RuntimeWarning", "-c", code],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
    )


SHOW = "import relay.fastpath as f; print(f.IMPLEMENTATION, f.__file__)"


@pytest.fixture
def unbuilt_tree(tmp_path: Path) -> Path:
    """A copy of the relay package as a machine that could not compile it has it."""
    source = Path(relay.__file__).parent
    shutil.copytree(
        source, tmp_path / "relay", ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__")
    )
    (tmp_path / "relay" / "__init__.py").touch()  # a regular package: no namespace merging
    return tmp_path


def test_missing_extension_falls_back_with_a_warning(unbuilt_tree: Path) -> None:
    done = run_python(SHOW, unbuilt_tree)
    assert done.returncode == 0, done.stderr
    implementation, path = done.stdout.split()
    assert implementation == "python"
    assert Path(path).is_relative_to(unbuilt_tree)
    assert "RuntimeWarning" in done.stderr
    assert "relay._fastpath" in done.stderr


def test_missing_extension_is_an_error_when_required(unbuilt_tree: Path) -> None:
    done = run_python(SHOW, unbuilt_tree, RELAY_REQUIRE_EXT="1")
    assert done.returncode != 0
    assert "ImportError" in done.stderr
    assert "RELAY_REQUIRE_EXT=1" in done.stderr


def test_relay_pure_needs_no_extension_and_warns_nothing(unbuilt_tree: Path) -> None:
    done = run_python(SHOW, unbuilt_tree, RELAY_PURE="1", RELAY_REQUIRE_EXT="1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "python"
    assert "Warning" not in done.stderr


def test_relay_pure_wins_over_a_built_extension(compiled: ModuleType) -> None:
    tree = Path(relay.__file__).parent.parent
    done = run_python(SHOW, tree, RELAY_PURE="1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "python"
    assert run_python(SHOW, tree).stdout.split()[0] == "cython"


# --- decoding the common `message` frame ----------------------------------------------------------

MESSAGE_KEYS = ("type", *MESSAGE_FIELDS, "status", "x")  # and one the relay ignores
# values as clients send them, and the ones the compiled reader must leave to orjson
wire_value = st.one_of(
    st.none(),
    st.sampled_from(["message", "m1", "bob", "team", "", "pending", "2026-02-05T10:30:15Z"]),
    json_text,
    st.text(min_size=60, max_size=70),
    st.text(min_size=125, max_size=131),
    st.integers(-3, 3),
    st.booleans(),
    st.lists(st.integers(-5, 5), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(-5, 5), max_size=2),
    nested_value,
)


@st.composite
def message_payloads(draw: st.DrawFn) -> bytes:
    """A message-like frame's bytes: keys in any order, sometimes twice, any whitespace,
    escapes, and now and then a cut or a flipped byte."""
    items: list[tuple[str, Any]] = [
        ("type", draw(st.sampled_from(["message", "message", "receipt", None]))),
        ("id", draw(st.sampled_from(["m1", "1707116400000.42"]) | json_text)),
        ("text", draw(st.sampled_from(["hi", "Hello there!"]) | json_text)),
    ]
    to = draw(st.sampled_from(["recipientId", "groupId"]))
    items.append((to, draw(st.sampled_from(["bob", "team"]) | json_text)))
    items += draw(
        st.lists(
            st.tuples(
                st.sampled_from(["senderId", "senderName", "senderAvatar", "timestamp", "ref"]),
                st.none() | json_text,
            ),
            max_size=4,
        )
    )
    items += draw(st.lists(st.tuples(st.sampled_from(MESSAGE_KEYS), wire_value), max_size=3))
    encrypted = draw(st.sampled_from(["no", "no", "instead", "instead", "also", "string"]))
    if encrypted != "no":  # an e2e message: its object instead of the text, or beside it
        if encrypted == "instead":
            items = [item for item in items if item[0] != "text"]
        items.append(("e2e", "x" if encrypted == "string" else draw(json_e2e)))
    files = draw(st.sampled_from(["no", "no", "no", "with", "alone"]))
    if files != "no":  # files: beside the text, or in its place
        if files == "alone":
            items = [item for item in items if item[0] != "text"]
        items.append(("attachments", draw(json_attachments)))
    call = draw(st.sampled_from(["no", "no", "no", "record", "null", "string"]))
    if call != "no":  # a client's `call`, in any form, is refused alike
        items.append(("call", {"record": CALL_RECORD, "null": None, "string": "c1"}[call]))
    items = draw(st.permutations(items))
    sep = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t"), (",", ": ")]))
    pad = draw(st.sampled_from(["", " ", "\n", "\r\n\t "]))
    body = sep[0].join(
        orjson.dumps(k).decode() + sep[1] + orjson.dumps(v).decode() for k, v in items
    )
    data = (pad + "{" + pad + body + pad + "}" + pad).encode()
    damage = draw(st.sampled_from(["none"] * 6 + ["cut", "flip", "tail"]))
    if damage == "cut" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif damage == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes((draw(st.integers(0, 255)),)) + data[at + 1 :]
    elif damage == "tail":
        data += draw(st.sampled_from([b"x", b"{}", b",", b"\x00", b" null"]))
    return data


def decoded(module: ModuleType, payload: Any, max_text: int | tuple[int, ...]) -> Any:
    """What decode_message gives under the protocol's limits with `max_text` (or under the
    rules `max_text`), with its class (a MessageFrame and a tuple are not equal answers), or
    the type of what it raised."""
    rules = max_text if isinstance(max_text, tuple) else (64, 128, 256, max_text, 4096, 16, 32)
    try:
        result = module.decode_message(payload, rules, protocol.MessageFrame)
    except Exception as exc:
        return type(exc)
    return (type(result), result)


@SETTINGS
@given(payload=message_payloads(), max_text=st.sampled_from([4096, 5, 1, 0]))
def test_decode_message_agrees(compiled: ModuleType, payload: bytes, max_text: int) -> None:
    assert decoded(compiled, payload, max_text) == decoded(pure, payload, max_text)


@SETTINGS
@given(payload=message_payloads(), rules=message_rules)
def test_decode_message_agrees_under_any_rules(
    compiled: ModuleType, payload: bytes, rules: tuple[int, ...]
) -> None:
    assert decoded(compiled, payload, rules) == decoded(pure, payload, rules)


@SETTINGS
@given(payload=st.binary(max_size=60) | st.text(max_size=30))
def test_decode_message_agrees_on_anything(compiled: ModuleType, payload: bytes | str) -> None:
    assert decoded(compiled, payload, 4096) == decoded(pure, payload, 4096)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi"}',
        b' { "type" : "message" , "id" : "m1" , "recipientId" : "bob" , "text" : "hi" } ',
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi","groupId":null,"meta":null}',
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi","id":"m2"}',  # duplicate
        b'{"type":"message","id":"m1","recipientId":"bob","text":"h\\u00e9"}',  # escape
        b'{"type":"message","id":"m1","recipientId":"bob","text":"caf\xc3\xa9 \xf0\x9f\x98\x80"}',
        b'{"type":"message","id":"m1","recipientId":"bob","text":"bad \xed\xa0\x80"}',  # surrogate
        b'{"type":"message","id":"m1","recipientId":"bob","text":"\x01"}',  # control character
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi","\x80x":null}',  # bad key
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi","x":"\xed\xa0\x80"}',
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi","meta":{"a":1}}',
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi","meta":"a"}',
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi","meta":[1]}',
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi","n":1}',
        # meta, e2e and attachments read from their own spans: brackets and quotes in strings,
        # escapes, whitespace, depth at and past the limits, a cut or unmatched span
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi","meta":{"a":"}]\\"{["}}',
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi","meta": { "a" : [ 1 , {"b":null} ] } }',
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi","meta":{"a":[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]}}',
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi","meta":'
        + b"[" * 31
        + b"]" * 31
        + b"}",
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi","meta":'
        + b"[" * 32
        + b"]" * 32
        + b"}",
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi","meta":{"a":1]}',
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi","meta":{"a":"\xed\xa0\x80"}}',
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi","meta":{"a":"\\ud800"}}',
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi","meta":{"a":1',
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi","meta":{"a":"x}',
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi","meta":{},"meta":{"a":1}}',
        b'{"type":"message","id":"m1","recipientId":"bob","attachments":[{"fileId":"f1"}]}',
        b'{"type":"message","id":"m1","recipientId":"bob","attachments":[]}',
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi","attachments":{"fileId":"f"}}',
        b'{"type":"message","id":"m1","recipientId":"bob","e2e":{"v":1,"suite":"hpke-x25519-sha256'
        b'-aes256gcm","senderDevice":"d","boxes":{"a":"QUJD","b\\u00e9":"QQ=="}}}',
        b'{"type":"message","id":"m1","recipientId":"bob","e2e":{"v":1,"suite":"hpke-x25519-sha256'
        b'-aes256gcm","senderDevice":"d","boxes":{"a":"QUJD\\u003d"}}}',
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi","e2e":[1]}',
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi","attachments":"f1"}',
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi","attachments":null}',
        b'{"type":"message","id":"","recipientId":"bob","text":"hi"}',
        b'{"type":"message","id":"m1","recipientId":"bob","groupId":"g","text":"hi"}',
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi"} x',
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi",}',
        b'{"type":"message","id":"m1","recipientId":"bob","text":"hi"',
        b'{"type":"receipt","seq":3,"peerId":"bob","status":"read"}',
        b"{}",
        b"[]",
        b"",
    ],
)
def test_decode_message_edges_agree(compiled: ModuleType, payload: bytes) -> None:
    assert decoded(compiled, payload, 4096) == decoded(pure, payload, 4096)


@SETTINGS
@given(payloads=st.lists(message_payloads(), min_size=2, max_size=6))
def test_decode_message_agrees_frame_after_frame(
    compiled: ModuleType, payloads: list[bytes]
) -> None:
    # the compiled decoder hands back a field's previous str when its bytes repeat
    for payload in payloads:
        assert decoded(compiled, payload, 4096) == decoded(pure, payload, 4096)


def test_repeated_fields_are_never_taken_for_their_neighbours(compiled: ModuleType) -> None:
    """Each frame's senders, peers, names, avatars and timestamps are its own, whatever the
    frame before it held: same length, one byte apart, ASCII then not."""
    names = ["bob", "bod", "bób", "bób", "bob", "bo", "bobb", "bob"]
    for i, name in enumerate(names):
        payload = orjson.dumps(
            {
                "type": "message",
                "id": f"m{i}",
                "recipientId": name,
                "senderId": name[::-1],
                "senderName": name.upper(),
                "senderAvatar": name + "!",
                "timestamp": f"2026-11-26T00:00:0{i}.000Z",
                "text": "hi",
            }
        )
        rules = protocol.Limits().rules
        frame = compiled.decode_message(payload, rules, protocol.MessageFrame)
        assert frame == pure.decode_message(payload, rules, protocol.MessageFrame)
        assert (frame.recipient_id, frame.sender_id, frame.sender_name, frame.sender_avatar) == (
            name,
            name[::-1],
            name.upper(),
            name + "!",
        )
        assert frame.client_timestamp == f"2026-11-26T00:00:0{i}.000Z"


def test_decode_message_reads_the_contract_example(compiled: ModuleType) -> None:
    payload = orjson.dumps(CONTRACT_EXAMPLE)
    frame = compiled.decode_message(payload, protocol.Limits().rules, protocol.MessageFrame)
    assert type(frame) is protocol.MessageFrame
    assert frame == protocol.MessageFrame(*CONTRACT_FIELDS)


def test_decode_message_reads_a_message_with_meta(compiled: ModuleType) -> None:
    payload = orjson.dumps({**CONTRACT_EXAMPLE, "meta": {"k": [1]}})
    for module in (compiled, pure):
        frame = module.decode_message(payload, protocol.Limits().rules, protocol.MessageFrame)
        assert type(frame) is protocol.MessageFrame
        assert frame == protocol.MessageFrame(*CONTRACT_FIELDS[:8], {"k": [1]}, CONTRACT_FIELDS[9])


# --- the collector's view -------------------------------------------------------------------------


def test_untracked_changes_no_value_and_hides_only_what_cannot_hide_a_cycle(
    compiled: ModuleType,
) -> None:
    import gc

    for module in (compiled, pure):
        items = module.untracked([])
        items.append(("a", 1))
        assert items == [("a", 1)]
        row = module.untracked(("conv", 1, "id", None, 2.5))
        assert row == ("conv", 1, "id", None, 2.5)
        holder = module.untracked(("x", []))  # holds a tracked list: must stay tracked
        assert gc.is_tracked(holder)
        named = module.untracked(StoredMessage("c", 1, "i", "a", "t", "s"))
        assert gc.is_tracked(named) and named.seq == 1  # not an exact tuple: left as it is
    if not PURE_RUN:
        assert not gc.is_tracked(compiled.untracked([]))
        assert not gc.is_tracked(compiled.untracked(("conv", 1, "id", None)))
        # a list out of sight still keeps what it holds alive through full collections
        keep = compiled.untracked([])
        keep.append({"k": ["v"]})
        gc.collect()
        assert keep == [{"k": ["v"]}]


def test_untracked_json_changes_no_value_and_hides_every_container(compiled: ModuleType) -> None:
    import gc

    def value() -> dict[str, Any]:
        return {"k": [1, 2.5, None, True, {"deep": ["v", ("t", [])]}], "e": {}, "s": "x"}

    for module in (compiled, pure):
        got = module.untracked_json(value())
        assert got == value()
        assert module.untracked_json(None) is None and module.untracked_json("s") == "s"
        gc.collect()
        assert got == value()  # nothing in it was freed
    if not PURE_RUN:
        got = compiled.untracked_json(value())
        inner = got["k"][4]
        containers = [got, got["k"], got["e"], inner, inner["deep"]]
        assert not any(gc.is_tracked(c) for c in containers)
        # a tuple is hidden only when nothing in it is tracked; ("t", []) holds an empty list,
        # hidden first, so the tuple too
        assert not gc.is_tracked(inner["deep"][1])
        # deeper than the protocol allows (16): the containers below 64 levels stay tracked,
        # which is always safe
        deep: list[Any] = []
        top = deep
        for _ in range(80):
            nested: list[Any] = []
            deep.append(nested)
            deep = nested
        compiled.untracked_json(top)
        assert not gc.is_tracked(top) and gc.is_tracked(deep)


# --- depth: what neither may store, and what neither may read -------------------------------------


def deep_payload(depth: int, where: str) -> bytes:
    """A frame nesting `depth` objects and arrays, written by hand (orjson writes 254 at most):
    in a message's meta, in a field the relay ignores, or as the whole value."""
    inner = b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)
    if where == "meta":
        return b'{"type":"message","id":"m1","recipientId":"b","text":"hi","meta":%s}' % inner
    if where == "ignored":
        return b'{"type":"message","id":"m1","recipientId":"b","text":"hi","x":%s}' % inner
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("where", ["meta", "ignored", "whole"])
@pytest.mark.parametrize("depth", [1, 15, 16, 17, 31, 32, 33, 254, 255, 1023, 1024, 1100])
def test_decode_message_agrees_on_depth(compiled: ModuleType, where: str, depth: int) -> None:
    payload = deep_payload(depth, where)
    rules = protocol.Limits().rules
    fast, slow = decoded(compiled, payload, rules), decoded(pure, payload, rules)
    assert fast == slow
    frame_depth = depth + (where != "whole")
    if frame_depth > 1024:
        assert fast is orjson.JSONDecodeError  # orjson's own limit
    elif frame_depth > protocol.FRAME_DEPTH_MAX:
        assert fast is ValueError
    elif where == "meta" and depth > protocol.META_DEPTH_MAX:
        assert fast[0] is dict  # the dict: parse_client_frame answers meta:deep from it
    else:
        assert fast[0] is (list if where == "whole" else protocol.MessageFrame)


@pytest.mark.parametrize("depth", [1, 15, 16, 17, 200, 254, 255, 400])
def test_message_faults_agree_on_depth_and_never_raise_for_it(
    compiled: ModuleType, depth: int
) -> None:
    meta = nest(depth - 1, {})
    obj = {"recipientId": "b", "text": "hi", "meta": {"a": meta}}
    rules = protocol.Limits().rules
    fast, slow = both_ways(lambda m: m.message_fault(obj, "m1", rules))
    assert fast == slow
    deep = depth + 1 > protocol.META_DEPTH_MAX
    assert fast == (pure.MESSAGE_FAULTS.index("meta:deep") if deep else 0)
