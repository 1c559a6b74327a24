"""relay.protocol: every client frame type parsed, every error path of the contract, server
encoders (with the fast path's frames of a message)."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import FrameError
from relay.fastpath import OP_TEXT, encode_delivery, encode_frame, encode_sent_frame
from relay.protocol import (
    CLIENT_FRAME_TYPES,
    FRAME_DEPTH_MAX,
    META_DEPTH_MAX,
    SEQ_MAX,
    AuthFrame,
    ConversationsFrame,
    GroupAddFrame,
    GroupCreateFrame,
    GroupLeaveFrame,
    GroupRemoveFrame,
    HistoryFrame,
    Limits,
    MessageFrame,
    MessageRefused,
    PingFrame,
    PresenceFrame,
    ReceiptFrame,
    StatusFrame,
    TypingFrame,
    encode_error,
    encode_presence,
    message_dict,
    parse_client_frame,
)
from relay.store.base import StoredMessage

LIMITS = Limits(max_text_chars=10, max_meta_bytes=30, max_group_members=3)
LIMITS_ROOMY = Limits()  # meta of the protocol's default size: room for deep values


def parse(obj: Any) -> Any:
    return parse_client_frame(orjson.dumps(obj), LIMITS)


def error_of(obj: Any) -> FrameError:
    with pytest.raises(FrameError) as info:
        parse(obj)
    return info.value


def test_every_contract_frame_type_is_known() -> None:
    assert set(CLIENT_FRAME_TYPES) - {"search"} == {
        "auth", "message", "receipt", "status", "presence", "typing", "conversations",
        "history", "group_create", "group_add", "group_remove", "group_leave", "ping",
        # contract v2: calls
        "call_invite", "call_accept", "call_reject", "call_end", "call_signal",
        # contract v2: end-to-end encryption keys
        "keys_publish", "keys_get",
    }  # fmt: skip
    assert "search" in CLIENT_FRAME_TYPES  # contract v2, "Search"


def test_original_guide_frames_parse_unchanged() -> None:
    auth = parse(
        {"type": "auth", "userId": "user_123", "userName": "John Doe", "userAvatar": "JD",
         "timestamp": "2026-02-05T10:30:00Z"}
    )  # fmt: skip
    assert auth == AuthFrame(
        user_id="user_123", user_name="John Doe", user_avatar="JD",
        timestamp="2026-02-05T10:30:00Z", acks=False, device_id=None,
    )  # fmt: skip
    msg = parse(
        {"type": "message", "id": "1707116400000", "senderId": "user_123",
         "senderName": "John Doe", "senderAvatar": "JD", "recipientId": "user_456",
         "text": "Hello!", "timestamp": "2026-02-05T10:30:15Z", "status": "pending"}
    )  # fmt: skip
    assert isinstance(msg, MessageFrame)
    assert (msg.id, msg.sender_id, msg.recipient_id, msg.group_id) == (
        "1707116400000", "user_123", "user_456", None,
    )  # fmt: skip
    assert (msg.text, msg.client_timestamp, msg.ref) == (
        "Hello!",
        "2026-02-05T10:30:15Z",
        "1707116400000",
    )
    status = parse({"type": "status", "status": "away", "userId": "user_123", "timestamp": "x"})
    assert status == StatusFrame(status="away", user_id="user_123")


def test_each_frame_type_parses_to_its_value() -> None:
    assert parse(
        {"type": "auth", "userId": "u", "deviceId": "phone", "acks": True, "token": "t"}
    ) == AuthFrame(user_id="u", device_id="phone", acks=True, token="t")
    assert parse(
        {"type": "receipt", "peerId": "a", "seq": 3, "status": "read", "ref": "r"}
    ) == ReceiptFrame(seq=3, status="read", peer_id="a", ref="r")
    assert parse(
        {"type": "receipt", "groupId": "g", "seq": 1, "status": "delivered"}
    ) == ReceiptFrame(seq=1, status="delivered", group_id="g")
    assert parse({"type": "presence", "userIds": ["a", "b", "a"]}) == PresenceFrame(
        user_ids=("a", "b")
    )
    assert parse({"type": "typing", "recipientId": "b", "state": "start"}) == TypingFrame(
        state="start", recipient_id="b"
    )
    assert parse({"type": "typing", "groupId": "g", "state": "stop"}) == TypingFrame(
        state="stop", group_id="g"
    )
    assert parse({"type": "conversations", "ref": "c1"}) == ConversationsFrame(limit=100, ref="c1")
    assert parse({"type": "history", "peerId": "b", "before": 17, "ref": "h1"}) == HistoryFrame(
        peer_id="b", before=17, limit=50, ref="h1"
    )
    assert parse({"type": "history", "groupId": "g", "after": 0, "limit": 100}) == HistoryFrame(
        group_id="g", after=0, limit=100
    )
    assert parse(
        {"type": "group_create", "groupId": "g1", "name": "Runners", "members": ["a", "b"]}
    ) == (GroupCreateFrame(group_id="g1", name="Runners", members=("a", "b")))
    assert parse({"type": "group_create", "groupId": "g1"}) == GroupCreateFrame(
        group_id="g1", name="g1", members=()
    )
    assert parse({"type": "group_add", "groupId": "g", "userIds": ["c"]}) == GroupAddFrame(
        group_id="g", user_ids=("c",)
    )
    assert parse({"type": "group_remove", "groupId": "g", "userIds": ["c"]}) == GroupRemoveFrame(
        group_id="g", user_ids=("c",)
    )
    assert parse({"type": "group_leave", "groupId": "g"}) == GroupLeaveFrame(group_id="g")
    assert parse({"type": "ping", "ref": "p1"}) == PingFrame(ref="p1")
    group_msg = parse(
        {"type": "message", "id": "m", "groupId": "g", "text": "hi", "meta": {"k": 1}}
    )
    assert (group_msg.group_id, group_msg.recipient_id, group_msg.meta) == ("g", None, {"k": 1})


def test_unknown_fields_are_ignored() -> None:
    assert parse({"type": "ping", "ref": "p", "extra": [1, 2], "nested": {"a": None}}) == PingFrame(
        ref="p"
    )


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"not json", "bad_json"),
        (b'{"type": ', "bad_json"),
        (b"", "bad_json"),
        (b"[1, 2]", "bad_frame"),
        (b'"text"', "bad_frame"),
        (b"{}", "bad_frame"),
        (b'{"type": 5}', "bad_frame"),
        (b'{"type": "teleport"}', "unknown_type"),
    ],
)
def test_structural_errors(payload: bytes, code: str) -> None:
    with pytest.raises(FrameError) as info:
        parse_client_frame(payload, LIMITS)
    assert info.value.code == code


def test_ref_echoes_ref_then_id() -> None:
    assert error_of({"type": "teleport", "ref": "r1", "id": "i1"}).ref == "r1"
    assert error_of({"type": "teleport", "id": "i1"}).ref == "i1"
    assert error_of({"type": 7, "id": "i2"}).ref == "i2"
    assert error_of({"type": "ping", "ref": 5, "extra": 1} | {"type": "nope"}).ref is None


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ({"type": "receipt", "peerId": "a", "seq": "3", "status": "read"}, "seq"),
        ({"type": "receipt", "peerId": "a", "seq": True, "status": "read"}, "seq"),
        ({"type": "receipt", "peerId": "a", "seq": 0, "status": "read"}, "seq"),
        ({"type": "receipt", "peerId": "a", "status": "read"}, "seq"),
        ({"type": "receipt", "peerId": "a", "seq": 1, "status": "sent"}, "status"),
        ({"type": "receipt", "seq": 1, "status": "read"}, "peerId"),
        ({"type": "receipt", "peerId": "a", "groupId": "g", "seq": 1, "status": "read"}, "groupId"),
        ({"type": "receipt", "peerId": 5, "seq": 1, "status": "read"}, "peerId"),
        ({"type": "status", "status": "sleeping"}, "status"),
        ({"type": "status", "status": "away", "userId": 3}, "userId"),
        ({"type": "presence", "userIds": "a"}, "userIds"),
        ({"type": "presence", "userIds": ["a", 2]}, "userIds"),
        ({"type": "presence", "userIds": ["x"] * 1001}, "userIds"),
        ({"type": "typing", "recipientId": "b", "state": "maybe"}, "state"),
        ({"type": "typing", "state": "start"}, "recipientId"),
        ({"type": "conversations", "limit": 0}, "limit"),
        ({"type": "conversations", "limit": 101}, "limit"),
        ({"type": "history", "peerId": "b", "limit": 101}, "limit"),
        ({"type": "history", "peerId": "b", "limit": 0}, "limit"),
        ({"type": "history", "peerId": "b", "before": 0}, "before"),
        ({"type": "history", "peerId": "b", "after": -1}, "after"),
        ({"type": "history", "peerId": "b", "before": 5, "after": 1}, "after"),
        ({"type": "history", "peerId": "b", "before": 2.5}, "before"),
        ({"type": "group_create", "name": "x"}, "groupId"),
        ({"type": "group_create", "groupId": "g", "members": ["a", "b", "c", "d"]}, "members"),
        ({"type": "group_create", "groupId": "g", "members": [""]}, "members"),
        ({"type": "group_create", "groupId": "", "members": []}, "groupId"),
        ({"type": "group_create", "groupId": "g", "name": 7}, "name"),
        ({"type": "group_add", "groupId": "g"}, "userIds"),
        ({"type": "group_remove", "groupId": "g", "userIds": [None]}, "userIds"),
        ({"type": "group_leave"}, "groupId"),
        ({"type": "message", "text": "hi", "recipientId": "b"}, "id"),
        ({"type": "message", "id": "", "text": "hi", "recipientId": "b"}, "id"),
        ({"type": "message", "id": "x" * 65, "text": "hi", "recipientId": "b"}, "id"),
        ({"type": "message", "id": 12, "text": "hi", "recipientId": "b"}, "id"),
    ],
)
def test_invalid_fields_name_the_field(frame: dict[str, Any], field: str) -> None:
    exc = error_of(frame)
    assert (exc.code, exc.field) == ("invalid", field)
    assert not isinstance(exc, MessageRefused)


@pytest.mark.parametrize(
    ("frame", "code", "field"),
    [
        ({"text": "x" * 11, "recipientId": "b"}, "too_long", "text"),
        ({"text": "", "recipientId": "b"}, "invalid", "text"),
        ({"text": 5, "recipientId": "b"}, "invalid", "text"),
        ({"recipientId": "b"}, "invalid", "text"),
        ({"text": "hi"}, "invalid", "recipientId"),
        ({"text": "hi", "recipientId": "b", "groupId": "g"}, "invalid", "recipientId"),
        ({"text": "hi", "recipientId": ""}, "invalid", "recipientId"),
        ({"text": "hi", "groupId": 3}, "invalid", "groupId"),
        ({"text": "hi", "recipientId": "b", "meta": [1]}, "invalid", "meta"),
        ({"text": "hi", "recipientId": "b", "meta": {"k": "v" * 40}}, "too_long", "meta"),
        ({"text": "hi", "recipientId": "b", "senderId": 9}, "invalid", "senderId"),
        ({"text": "hi", "recipientId": "b", "senderName": ["x"]}, "invalid", "senderName"),
    ],
)
def test_refused_messages_carry_the_receipt_reason(
    frame: dict[str, Any], code: str, field: str
) -> None:
    exc = error_of({"type": "message", "id": "m1", **frame})
    assert isinstance(exc, MessageRefused)
    assert (exc.code, exc.field, exc.message_id, exc.ref) == (code, field, "m1", "m1")


def test_text_limit_counts_characters_not_bytes() -> None:
    msg = parse({"type": "message", "id": "m", "recipientId": "b", "text": "é" * 10})
    assert msg.text == "é" * 10


def test_invalid_auth_is_an_auth_failure() -> None:
    for frame, field in (
        ({"type": "auth"}, "userId"),
        ({"type": "auth", "userId": ""}, "userId"),
        ({"type": "auth", "userId": "u", "acks": "yes"}, "acks"),
        ({"type": "auth", "userId": "u", "deviceId": 4}, "deviceId"),
    ):
        exc = error_of(frame)
        assert (exc.code, exc.field) == ("auth_failed", field)


STORED = StoredMessage(
    conversation="d:1:a:b",
    seq=17,
    id="1707116400000",
    sender_id="a",
    text="Hello there!",
    server_timestamp="2026-02-05T10:30:15.004Z",
    recipient_id="b",
    sender_name="John Doe",
    client_timestamp="2026-02-05T10:30:15Z",
)


def text_payload(frame: bytes) -> bytes:
    """The payload of one unmasked server text frame under 64 KiB."""
    assert frame[0] == 0x80 | OP_TEXT and frame[1] <= 126
    payload = frame[4:] if frame[1] == 126 else frame[2:]
    assert len(payload) == (int.from_bytes(frame[2:4], "big") if frame[1] == 126 else frame[1])
    return payload


def test_message_encoding_is_the_original_shape_plus_seq() -> None:
    delivery = encode_delivery(STORED)
    assert delivery == encode_frame(OP_TEXT, orjson.dumps(message_dict(STORED)))
    body = orjson.loads(text_payload(delivery))
    assert body == {
        "type": "message", "id": "1707116400000", "senderId": "a", "senderName": "John Doe",
        "recipientId": "b", "text": "Hello there!", "timestamp": "2026-02-05T10:30:15Z",
        "status": "delivered", "seq": 17, "serverTimestamp": "2026-02-05T10:30:15.004Z",
    }  # fmt: skip


def test_server_frame_encoders() -> None:
    sent_frame = encode_sent_frame(
        STORED.id, STORED.recipient_id, STORED.group_id, STORED.seq, "2026-02-05T10:30:15.005Z"
    )
    sent = orjson.loads(text_payload(sent_frame))
    assert sent == {
        "type": "receipt", "id": "1707116400000", "peerId": "b", "status": "sent", "seq": 17,
        "timestamp": "2026-02-05T10:30:15.005Z",
    }  # fmt: skip
    assert orjson.loads(encode_error("invalid", "bad", ref="r", field="seq")) == {
        "type": "error", "code": "invalid", "message": "bad", "ref": "r", "field": "seq",
    }  # fmt: skip
    assert orjson.loads(encode_error("bad_json", "no")) == {
        "type": "error", "code": "bad_json", "message": "no",
    }  # fmt: skip
    presence = orjson.loads(encode_presence([("a", "online", None), ("b", "offline", "t")]))
    assert presence == {
        "type": "presence",
        "users": [
            {"userId": "a", "status": "online", "lastSeen": None},
            {"userId": "b", "status": "offline", "lastSeen": "t"},
        ],
    }


def test_iso_timestamps_have_milliseconds_and_z() -> None:
    from relay.clock import iso_utc

    assert iso_utc(1707129015.1239) == "2024-02-05T10:30:15.123Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", iso_utc(0.0005))


# --- depth and integer bounds: nothing a client sends escapes as anything but FrameError ----------


def nested_object(depth: int) -> bytes:
    """A JSON object `depth` levels deep ({"a": {"a": ... {}}}), written by hand: orjson
    writes at most 254 levels."""
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


def message_with_meta(depth: int) -> bytes:
    return b'{"type":"message","id":"m1","recipientId":"b","text":"hi","meta":%s}' % (
        nested_object(depth)
    )


def test_a_meta_up_to_its_depth_limit_is_read() -> None:
    frame = parse_client_frame(message_with_meta(META_DEPTH_MAX), LIMITS_ROOMY)
    assert isinstance(frame, MessageFrame)
    depth, meta = 1, frame.meta
    while meta:
        depth, meta = depth + 1, meta["a"]
    assert depth == META_DEPTH_MAX


# 17: one over; 251-254: accepted and then unwritable inside an answer before the limit
# existed; 31: the deepest meta a frame within FRAME_DEPTH_MAX can carry
@pytest.mark.parametrize("depth", [META_DEPTH_MAX + 1, FRAME_DEPTH_MAX - 1, 251, 254])
def test_a_deeper_meta_is_refused_with_a_failed_receipt(depth: int) -> None:
    payload = message_with_meta(depth)
    if depth + 1 > FRAME_DEPTH_MAX:  # the frame itself is too deep: no receipt
        with pytest.raises(FrameError) as info:
            parse_client_frame(payload, LIMITS_ROOMY)
        assert info.value.code == "bad_json"
        assert not isinstance(info.value, MessageRefused)
        return
    with pytest.raises(MessageRefused) as refused:
        parse_client_frame(payload, LIMITS_ROOMY)
    assert (refused.value.code, refused.value.field, refused.value.message_id) == (
        "invalid",
        "meta",
        "m1",
    )
    assert f"deeper than {META_DEPTH_MAX}" in refused.value.message


@pytest.mark.parametrize(
    "payload",
    [
        message_with_meta(255),  # orjson cannot write it: a TypeError escaped here
        message_with_meta(1023),
        message_with_meta(1024),  # over orjson's own limit: not JSON it reads
        b"[" * (FRAME_DEPTH_MAX + 1) + b"]" * (FRAME_DEPTH_MAX + 1),
        b'{"type":"ping","x":' + b"[" * FRAME_DEPTH_MAX + b"]" * FRAME_DEPTH_MAX + b"}",
        b'{"type":"auth","userId":"a","x":' + nested_object(FRAME_DEPTH_MAX) + b"}",
    ],
    ids=["meta-255", "meta-1023", "meta-1024", "array", "ping", "auth"],
)
def test_json_deeper_than_a_frame_may_be_is_bad_json(payload: bytes) -> None:
    with pytest.raises(FrameError) as info:
        parse_client_frame(payload, LIMITS_ROOMY)
    assert type(info.value) is FrameError
    assert info.value.code == "bad_json"


def test_a_frame_exactly_as_deep_as_allowed_is_read() -> None:
    inner = b"[" * (FRAME_DEPTH_MAX - 1) + b"]" * (FRAME_DEPTH_MAX - 1)
    assert parse_client_frame(b'{"type":"ping","ref":"p","x":%s}' % inner, LIMITS) == PingFrame(
        ref="p"
    )
    with pytest.raises(FrameError) as info:
        parse_client_frame(b"[" * FRAME_DEPTH_MAX + b"]" * FRAME_DEPTH_MAX, LIMITS)
    assert info.value.code == "bad_frame"  # as deep as allowed, but not an object


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ({"type": "receipt", "peerId": "a", "seq": SEQ_MAX + 1, "status": "read"}, "seq"),
        ({"type": "receipt", "peerId": "a", "seq": 2**64 - 1, "status": "read"}, "seq"),
        ({"type": "history", "peerId": "b", "before": SEQ_MAX + 1}, "before"),
        ({"type": "history", "peerId": "b", "before": 2**64 - 1}, "before"),
        ({"type": "history", "peerId": "b", "after": SEQ_MAX + 1}, "after"),
        ({"type": "history", "peerId": "b", "after": -(2**63) - 1}, "after"),
        ({"type": "conversations", "limit": 2**64 - 1}, "limit"),
        ({"type": "history", "peerId": "b", "limit": -(2**63)}, "limit"),
    ],
)
def test_every_integer_is_bounded(frame: dict[str, Any], field: str) -> None:
    exc = error_of_bytes(json.dumps(frame).encode())  # orjson writes no int past 64 bits
    assert (exc.code, exc.field) == ("invalid", field)


def test_integers_up_to_the_largest_seq_are_read() -> None:
    receipt = parse({"type": "receipt", "peerId": "a", "seq": SEQ_MAX, "status": "read"})
    assert receipt.seq == SEQ_MAX
    assert parse({"type": "history", "peerId": "b", "before": SEQ_MAX}).before == SEQ_MAX
    assert parse({"type": "history", "peerId": "b", "after": SEQ_MAX}).after == SEQ_MAX
    # JSON numbers past 64 bits are read as floats: not integers
    exc = error_of_bytes(b'{"type":"history","peerId":"b","before":%d}' % 2**64)
    assert (exc.code, exc.field) == ("invalid", "before")


def error_of_bytes(payload: bytes) -> FrameError:
    with pytest.raises(FrameError) as info:
        parse_client_frame(payload, LIMITS)
    return info.value


def _only_frame_errors(payload: bytes) -> None:
    try:
        frame = parse_client_frame(payload, LIMITS)
    except FrameError:
        return
    assert type(frame).__name__.endswith("Frame")


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=200))
def test_any_bytes_give_a_frame_or_a_frame_error(payload: bytes) -> None:
    _only_frame_errors(payload)


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**40]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["NaN", "Infinity", "-0", "1e999", "\u202e", "\ufeff", "\x00", "e\u0301"]),
)


@st.composite
def hostile_json(draw: st.DrawFn) -> bytes:
    """A frame of a known type whose fields hold any JSON value, as JSON text, now and then
    with a lone surrogate escape, a token that is not JSON, or deep nesting."""
    kind = draw(st.sampled_from(CLIENT_FRAME_TYPES))
    values = st.recursive(
        json_scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=8,
    )
    fields = draw(
        st.dictionaries(
            st.sampled_from(
                [
                    "id",
                    "ref",
                    "text",
                    "recipientId",
                    "groupId",
                    "peerId",
                    "userId",
                    "userIds",
                    "members",
                    "seq",
                    "before",
                    "after",
                    "limit",
                    "status",
                    "state",
                    "meta",
                    "token",
                    "acks",
                    "name",
                    "senderId",
                    "senderName",
                    "timestamp",
                ]
            ),
            values,
            max_size=6,
        )
    )
    body = ",".join(f'"{key}":{json.dumps(value)}' for key, value in fields.items()).encode()
    extra = draw(
        st.sampled_from(
            [
                b"",
                b',"x":"\\ud800"',
                b',"text":"\\udc00"',
                b',"seq":NaN',
                b',"before":1e400',
                b',"meta":' + nested_object(draw(st.integers(1, 1100))),
                b',"x":' + b"[" * 40 + b"]" * 40,
            ]
        )
    )
    comma = b"," if body else b""
    return b'{"type":"%s"%s%s%s}' % (kind.encode(), comma, body, extra)


@settings(max_examples=300, deadline=None)
@given(payload=hostile_json())
def test_hostile_fields_give_a_frame_or_a_frame_error(payload: bytes) -> None:
    _only_frame_errors(payload)
