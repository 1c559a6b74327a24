"""RFC 6455 server-side framing of relay.fastpath (whichever twin the environment selects)."""

from __future__ import annotations

import struct

import pytest

from relay.fastpath import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RSV1,
    FrameParser,
    encode_close,
    encode_frame,
    parse_close,
)

MASK = b"\x37\xfa\x21\x3d"
BIG = 1 << 20


def client_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    mask: bytes = MASK,
    length_form: int | None = None,
    length: int | None = None,
) -> bytes:
    """A client frame as a browser would send it. `length_form` 7/16/64 forces an encoding of
    the length (non-minimal ones included); `length` overrides the declared length."""
    n = len(payload) if length is None else length
    if length_form is None:
        length_form = 7 if n < 126 else 16 if n < 65536 else 64
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if masked else 0
    if length_form == 7:
        head = bytes((b0, mbit | n))
    elif length_form == 16:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not masked:
        return head + payload
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


def parse(data: bytes, max_message_bytes: int = BIG) -> tuple[list[tuple[int, bytes]], FrameParser]:
    parser = FrameParser(max_message_bytes)
    return parser.feed(data), parser


def assert_fails(data: bytes, code: int, max_message_bytes: int = BIG) -> FrameParser:
    events, parser = parse(data, max_message_bytes)
    assert parser.failed, events
    assert parser.close_code == code
    assert parser.close_reason
    assert parser.feed(client_frame(OP_TEXT, b"after")) == []
    return parser


# --- what a well-behaved client sends --------------------------------------------------------


def test_text_message_is_unmasked() -> None:
    events, parser = parse(client_frame(OP_TEXT, b'{"type":"ping"}'))
    assert events == [(OP_TEXT, b'{"type":"ping"}')]
    assert not parser.failed


def test_binary_message_is_an_event() -> None:
    assert parse(client_frame(OP_BINARY, b"\x00\xff\x80"))[0] == [(OP_BINARY, b"\x00\xff\x80")]


def test_ping_and_pong_carry_their_payload() -> None:
    events, _ = parse(client_frame(OP_PING, b"are you there") + client_frame(OP_PONG, b"yes"))
    assert events == [(OP_PING, b"are you there"), (OP_PONG, b"yes")]


def test_close_frame_is_returned_raw_and_ends_parsing() -> None:
    payload = b"\x03\xe8going away"
    events, parser = parse(client_frame(OP_CLOSE, payload) + client_frame(OP_TEXT, b"late"))
    assert events == [(OP_CLOSE, payload)]
    assert not parser.failed
    assert parser.feed(client_frame(OP_TEXT, b"later")) == []


def test_empty_close_frame_is_valid() -> None:
    events, parser = parse(client_frame(OP_CLOSE))
    assert events == [(OP_CLOSE, b"")]
    assert not parser.failed


def test_fragmented_text_is_reassembled() -> None:
    data = (
        client_frame(OP_TEXT, b"hel", fin=False)
        + client_frame(OP_CONT, b"lo ", fin=False)
        + client_frame(OP_CONT, b"world")
    )
    assert parse(data)[0] == [(OP_TEXT, b"hello world")]


def test_fragmented_messages_one_after_another_across_feeds() -> None:
    parser = FrameParser(BIG)
    first = client_frame(OP_TEXT, b"ab", fin=False) + client_frame(OP_CONT, b"c")
    second = client_frame(OP_TEXT, b"de", fin=False) + client_frame(OP_CONT, b"f")
    assert parser.feed(first + client_frame(OP_TEXT, b"plain")) == [
        (OP_TEXT, b"abc"),
        (OP_TEXT, b"plain"),
    ]
    assert parser.feed(second[:5]) == []
    assert parser.feed(second[5:]) == [(OP_TEXT, b"def")]
    assert parser.feed(first) == [(OP_TEXT, b"abc")]
    assert not parser.failed


def test_fragmented_binary_is_reassembled() -> None:
    data = client_frame(OP_BINARY, b"\x01", fin=False) + client_frame(OP_CONT, b"\x02")
    assert parse(data)[0] == [(OP_BINARY, b"\x01\x02")]


def test_empty_fragments_make_an_empty_message() -> None:
    data = client_frame(OP_TEXT, b"", fin=False) + client_frame(OP_CONT, b"")
    assert parse(data)[0] == [(OP_TEXT, b"")]


def test_control_frames_between_fragments_come_out_first() -> None:
    data = (
        client_frame(OP_TEXT, b"ab", fin=False)
        + client_frame(OP_PING, b"p")
        + client_frame(OP_CONT, b"cd", fin=False)
        + client_frame(OP_PONG, b"q")
        + client_frame(OP_CONT, b"ef")
    )
    assert parse(data)[0] == [(OP_PING, b"p"), (OP_PONG, b"q"), (OP_TEXT, b"abcdef")]


def test_close_between_fragments_is_returned() -> None:
    data = client_frame(OP_TEXT, b"ab", fin=False) + client_frame(OP_CLOSE, b"\x03\xe9")
    events, parser = parse(data)
    assert events == [(OP_CLOSE, b"\x03\xe9")]
    assert not parser.failed


def test_multibyte_character_split_across_fragments_is_valid() -> None:
    text = "héllo €𝄞".encode()
    data = b"".join(
        client_frame(OP_CONT if i else OP_TEXT, text[i : i + 1], fin=i == len(text) - 1)
        for i in range(len(text))
    )
    assert parse(data)[0] == [(OP_TEXT, text)]


def test_valid_utf8_text_passes() -> None:
    text = "ascii, é, €, 𝄞, \U0010ffff".encode()
    assert parse(client_frame(OP_TEXT, text))[0] == [(OP_TEXT, text)]


def test_incomplete_frame_waits_for_the_rest() -> None:
    frame = client_frame(OP_TEXT, b"x" * 300)
    parser = FrameParser(BIG)
    assert parser.feed(frame[:1]) == []
    assert parser.feed(frame[1:3]) == []
    assert parser.feed(frame[3:-1]) == []
    assert parser.feed(frame[-1:]) == [(OP_TEXT, b"x" * 300)]
    assert parser.feed(b"") == []
    assert not parser.failed


def test_events_before_a_violation_are_returned() -> None:
    data = client_frame(OP_TEXT, b"ok") + client_frame(OP_TEXT, b"bad", masked=False)
    events, parser = parse(data)
    assert events == [(OP_TEXT, b"ok")]
    assert parser.failed and parser.close_code == 1002


@pytest.mark.parametrize(
    "form, payload",
    [(16, b"short"), (64, b"short"), (64, b"y" * 300)],
    ids=["16-bit for 5", "64-bit for 5", "64-bit for 300"],
)
def test_non_minimal_length_encodings_are_tolerated(form: int, payload: bytes) -> None:
    assert parse(client_frame(OP_TEXT, payload, length_form=form))[0] == [(OP_TEXT, payload)]


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 125, 126, 65535, 65536])
def test_payload_sizes_across_length_encodings(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    frame = client_frame(OP_BINARY, payload)
    extended = 0 if size < 126 else 2 if size < 65536 else 8
    assert len(frame) == 2 + extended + 4 + size
    assert parse(frame)[0] == [(OP_BINARY, payload)]


# --- chunking ------------------------------------------------------------------------------

STREAM = (
    client_frame(OP_TEXT, b'{"type":"auth"}')
    + client_frame(OP_TEXT, "fragmé".encode()[:6], fin=False)
    + client_frame(OP_PING, b"hb")
    + client_frame(OP_CONT, "fragmé".encode()[6:])
    + client_frame(OP_BINARY, bytes(range(200)))
    + client_frame(OP_PONG)
    + client_frame(OP_TEXT, b"z" * 130, length_form=64)
    + client_frame(OP_CLOSE, b"\x03\xe8bye")
)
STREAM_EVENTS = [
    (OP_TEXT, b'{"type":"auth"}'),
    (OP_PING, b"hb"),
    (OP_TEXT, "fragmé".encode()),
    (OP_BINARY, bytes(range(200))),
    (OP_PONG, b""),
    (OP_TEXT, b"z" * 130),
    (OP_CLOSE, b"\x03\xe8bye"),
]


def test_stream_in_one_piece() -> None:
    assert parse(STREAM)[0] == STREAM_EVENTS


def test_stream_split_at_every_byte_boundary() -> None:
    for cut in range(len(STREAM) + 1):
        parser = FrameParser(BIG)
        events = parser.feed(STREAM[:cut]) + parser.feed(STREAM[cut:])
        assert events == STREAM_EVENTS, cut
        assert not parser.failed


def test_stream_fed_byte_by_byte() -> None:
    parser = FrameParser(BIG)
    events: list[tuple[int, bytes]] = []
    for i in range(len(STREAM)):
        events += parser.feed(STREAM[i : i + 1])
    assert events == STREAM_EVENTS


def test_many_frames_in_one_buffer() -> None:
    messages = [f'{{"type":"send","id":"{i}"}}'.encode() for i in range(2000)]
    events, parser = parse(b"".join(client_frame(OP_TEXT, m) for m in messages))
    assert events == [(OP_TEXT, m) for m in messages]
    assert not parser.failed


def test_feed_accepts_bytearray_and_memoryview() -> None:
    frame = client_frame(OP_TEXT, b"hello")
    parser = FrameParser(BIG)
    assert parser.feed(bytearray(frame[:4])) == []
    assert parser.feed(memoryview(frame)[4:]) == [(OP_TEXT, b"hello")]


# --- protocol violations: 1002 ---------------------------------------------------------------


@pytest.mark.parametrize("rsv", [1, 2, 4, 7], ids=["RSV3", "RSV2", "RSV1", "all"])
def test_reserved_bits_are_a_protocol_error(rsv: int) -> None:
    assert_fails(client_frame(OP_TEXT, b"x", rsv=rsv), 1002)


# --- RSV1 once permessage-deflate is negotiated (allow_rsv1) ----------------------------------


def test_rsv1_marks_a_compressed_message_when_allowed() -> None:
    parser = FrameParser(BIG)
    parser.allow_rsv1 = True
    # compressed bytes are not UTF-8: the parser hands them on unchecked, RSV1 in the opcode
    events = parser.feed(client_frame(OP_TEXT, b"\xff\xfe", rsv=4) + client_frame(OP_TEXT, b"x"))
    assert events == [(OP_TEXT | RSV1, b"\xff\xfe"), (OP_TEXT, b"x")]
    assert not parser.failed


def test_rsv1_on_the_first_frame_marks_the_whole_fragmented_message() -> None:
    parser = FrameParser(BIG)
    parser.allow_rsv1 = True
    data = (
        client_frame(OP_TEXT, b"ab", fin=False, rsv=4)
        + client_frame(OP_PING, b"p")
        + client_frame(OP_CONT, b"\xff")
    )
    assert parser.feed(data) == [(OP_PING, b"p"), (OP_TEXT | RSV1, b"ab\xff")]


@pytest.mark.parametrize(
    "data",
    [
        client_frame(OP_PING, b"p", rsv=4),
        client_frame(OP_CLOSE, b"", rsv=4),
        client_frame(OP_TEXT, b"a", fin=False) + client_frame(OP_CONT, b"b", rsv=4),
        client_frame(OP_TEXT, b"a", rsv=2),
        client_frame(OP_TEXT, b"a", rsv=6),
    ],
    ids=["ping", "close", "continuation", "RSV2", "RSV1+RSV2"],
)
def test_rsv1_is_only_for_the_first_frame_of_a_data_message(data: bytes) -> None:
    parser = FrameParser(BIG)
    parser.allow_rsv1 = True
    parser.feed(data)
    assert parser.failed and parser.close_code == 1002


def test_the_caller_can_fail_the_parser() -> None:
    parser = FrameParser(BIG)
    parser.fail(1009, "too big once inflated")
    assert (parser.failed, parser.close_code, parser.close_reason) == (
        True,
        1009,
        "too big once inflated",
    )
    assert parser.feed(client_frame(OP_TEXT, b"after")) == []


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
def test_unknown_opcode_is_a_protocol_error(opcode: int) -> None:
    assert_fails(client_frame(opcode, b"x"), 1002)


def test_unmasked_client_frame_is_a_protocol_error() -> None:
    assert_fails(client_frame(OP_TEXT, b"hello", masked=False), 1002)


@pytest.mark.parametrize("opcode", [OP_CLOSE, OP_PING, OP_PONG])
def test_fragmented_control_frame_is_a_protocol_error(opcode: int) -> None:
    assert_fails(client_frame(opcode, b"", fin=False), 1002)


@pytest.mark.parametrize("opcode", [OP_CLOSE, OP_PING, OP_PONG])
def test_control_frame_over_125_bytes_is_a_protocol_error(opcode: int) -> None:
    assert_fails(client_frame(opcode, b"\x03\xe8" + b"x" * 124), 1002)


def test_long_control_frame_is_refused_from_its_header_alone() -> None:
    header = client_frame(OP_PING, b"x" * 200)[:4]
    assert_fails(header, 1002)


def test_continuation_without_a_start_is_a_protocol_error() -> None:
    assert_fails(client_frame(OP_CONT, b"orphan"), 1002)


def test_continuation_after_a_finished_message_is_a_protocol_error() -> None:
    assert_fails(client_frame(OP_TEXT, b"done") + client_frame(OP_CONT, b"more"), 1002)


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_new_data_frame_inside_a_fragmented_message_is_a_protocol_error(opcode: int) -> None:
    data = client_frame(OP_TEXT, b"open", fin=False) + client_frame(opcode, b"new")
    assert_fails(data, 1002)


def test_64_bit_length_with_top_bit_is_a_protocol_error() -> None:
    assert_fails(client_frame(OP_BINARY, b"", length_form=64, length=1 << 63), 1002)


def test_close_payload_of_one_byte_is_a_protocol_error() -> None:
    assert_fails(client_frame(OP_CLOSE, b"\x03"), 1002)


@pytest.mark.parametrize(
    "code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
)
def test_invalid_close_code_is_a_protocol_error(code: int) -> None:
    assert_fails(client_frame(OP_CLOSE, code.to_bytes(2, "big")), 1002)


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1011, 1012, 1014, 3000, 4999])
def test_valid_close_codes_pass(code: int) -> None:
    payload = code.to_bytes(2, "big") + "fin ✓".encode()
    events, parser = parse(client_frame(OP_CLOSE, payload))
    assert events == [(OP_CLOSE, payload)]
    assert not parser.failed
    assert parse_close(payload) == (code, "fin ✓")


# --- invalid UTF-8: 1007 --------------------------------------------------------------------

BAD_UTF8 = {
    "lone continuation": b"a\x80b",
    "overlong slash": b"\xc0\xaf",
    "overlong 3-byte": b"\xe0\x80\xaf",
    "overlong 4-byte": b"\xf0\x80\x80\xaf",
    "surrogate": b"\xed\xa0\x80",
    "above U+10FFFF": b"\xf4\x90\x80\x80",
    "F5 lead": b"\xf5\x80\x80\x80",
    "truncated 2-byte": b"ok\xc3",
    "truncated 4-byte": b"\xf0\x9f\x98",
    "FF byte": b"\xff",
    "bad after 8 ascii": b"abcdefgh\xfe",
}


@pytest.mark.parametrize("payload", BAD_UTF8.values(), ids=BAD_UTF8.keys())
def test_invalid_utf8_text_is_1007(payload: bytes) -> None:
    assert_fails(client_frame(OP_TEXT, payload), 1007)


def test_invalid_utf8_across_fragments_is_1007() -> None:
    data = client_frame(OP_TEXT, b"ok \xe2\x82", fin=False) + client_frame(OP_CONT, b"!")
    assert_fails(data, 1007)


def test_invalid_utf8_in_binary_is_fine() -> None:
    assert parse(client_frame(OP_BINARY, b"\xff\xfe"))[0] == [(OP_BINARY, b"\xff\xfe")]


def test_invalid_utf8_close_reason_is_1007() -> None:
    assert_fails(client_frame(OP_CLOSE, b"\x03\xe8\xff"), 1007)


# --- too big: 1009 -------------------------------------------------------------------------


def test_message_of_exactly_the_limit_passes() -> None:
    assert parse(client_frame(OP_TEXT, b"x" * 100), 100)[0] == [(OP_TEXT, b"x" * 100)]


def test_frame_over_the_limit_is_1009_from_its_header_alone() -> None:
    header = client_frame(OP_TEXT, b"x" * 70000)[:10]
    assert_fails(header, 1009, max_message_bytes=65536)


def test_huge_declared_length_is_1009_before_any_payload() -> None:
    assert_fails(client_frame(OP_BINARY, b"", length_form=64, length=(1 << 63) - 1), 1009)


def test_fragments_summing_over_the_limit_are_1009() -> None:
    data = client_frame(OP_TEXT, b"x" * 60, fin=False) + client_frame(OP_CONT, b"y" * 41)[:2]
    assert_fails(data, 1009, max_message_bytes=100)


def test_control_frames_do_not_count_towards_the_message_limit() -> None:
    data = (
        client_frame(OP_TEXT, b"x" * 60, fin=False)
        + client_frame(OP_PING, b"p" * 100)
        + client_frame(OP_CONT, b"y" * 40)
    )
    assert parse(data, 100)[0] == [(OP_PING, b"p" * 100), (OP_TEXT, b"x" * 60 + b"y" * 40)]


# --- server frames ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, header",
    [
        (0, b"\x81\x00"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e\x00\x7e"),
        (65535, b"\x81\x7e\xff\xff"),
        (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ],
)
def test_encode_frame_header_forms(size: int, header: bytes) -> None:
    payload = b"a" * size
    frame = encode_frame(OP_TEXT, payload)
    assert type(frame) is bytes
    assert frame == header + payload


@pytest.mark.parametrize("opcode", [OP_BINARY, OP_CLOSE, OP_PING, OP_PONG])
def test_encode_frame_sets_fin_and_opcode(opcode: int) -> None:
    assert encode_frame(opcode, b"xy") == bytes((0x80 | opcode, 2)) + b"xy"


@pytest.mark.parametrize("opcode", [OP_CONT, 3, 7, 11, 15])
def test_encode_frame_refuses_opcodes_a_server_cannot_send_alone(opcode: int) -> None:
    with pytest.raises(ValueError):
        encode_frame(opcode, b"x")


def test_encode_frame_refuses_long_control_frames() -> None:
    with pytest.raises(ValueError):
        encode_frame(OP_PING, b"x" * 126)


def test_encode_close_and_parse_close_round_trip() -> None:
    frame = encode_close(1001, "shutting down ✓")
    assert frame[0] == 0x88
    assert frame[1] == len(frame) - 2
    assert parse_close(frame[2:]) == (1001, "shutting down ✓")


def test_encode_close_without_reason() -> None:
    assert encode_close(1000) == b"\x88\x02\x03\xe8"


def test_encode_close_cuts_long_reasons_at_a_character_boundary() -> None:
    frame = encode_close(1008, "€" * 60)  # 180 bytes of UTF-8
    assert len(frame) - 2 <= 125
    code, reason = parse_close(frame[2:])
    assert code == 1008
    assert reason == "€" * 41  # 123 // 3


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 2000, 5000])
def test_encode_close_refuses_codes_an_endpoint_may_not_send(code: int) -> None:
    with pytest.raises(ValueError):
        encode_close(code)


def test_parse_close_of_empty_payload() -> None:
    assert parse_close(b"") == (1005, "")


@pytest.mark.parametrize("payload", [b"\x03", b"\x03\xed", b"\x03\xe8\xc3"])
def test_parse_close_refuses_invalid_payloads(payload: bytes) -> None:
    with pytest.raises(ValueError):
        parse_close(payload)


def test_server_close_frame_parses_as_a_client_close_once_masked() -> None:
    frame = encode_close(4000, "bye")
    events, _ = parse(client_frame(OP_CLOSE, frame[2:]))
    assert events == [(OP_CLOSE, b"\x0f\xa0bye")]
