"""A message's checks are the fast path's (relay.fastpath.message_fault), made under the limits
relay.protocol chooses; each fault has its one contract answer (code, message, field, echoed
target), whichever entry the message takes: a client frame or the publish API."""

from __future__ import annotations

import functools
from typing import Any

import orjson
import pytest

import relay._fastpath_py as pure
from relay import fastpath
from relay.errors import FrameError
from relay.protocol import (
    FRAME_DEPTH_MAX,
    IDENT_MAX,
    MESSAGE_ID_MAX,
    META_DEPTH_MAX,
    SHORT_TEXT_MAX,
    Limits,
    MessageFrame,
    MessageRefused,
    parse_client_frame,
    validate_message,
)

LIMITS = Limits(max_text_chars=10, max_meta_bytes=30)
#: a valid e2e object (the relay reads its shape only: the box is any base64)
E2E = {"v": 1, "suite": fastpath.E2E_SUITE, "senderDevice": "d1", "boxes": {"d2": "QUJD"}}

# fault name -> the message's fields (id "m1" unless given) -> (error class, code, message,
# field, echoed peerId, echoed groupId)
CASES: list[tuple[str, dict[str, Any], tuple[type[FrameError], str, str, str, Any, Any]]] = [
    (
        "id",
        {"id": "x" * 65, "recipientId": "b", "text": "hi"},
        (FrameError, "invalid", "id: must be a string of 1-64 characters", "id", None, None),
    ),
    (
        "recipientId:type",
        {"recipientId": 5, "groupId": "g", "text": "hi"},
        (MessageRefused, "invalid", "recipientId: must be a string", "recipientId", None, None),
    ),
    (
        "recipientId:length",
        {"recipientId": "", "text": "hi"},
        (
            MessageRefused,
            "invalid",
            "recipientId: must be 1-128 characters",
            "recipientId",
            None,
            None,
        ),
    ),
    (
        "groupId:type",
        {"groupId": ["g"], "text": "hi"},
        (MessageRefused, "invalid", "groupId: must be a string", "groupId", None, None),
    ),
    (
        "groupId:length",
        {"recipientId": "b", "groupId": "g" * 129, "text": "hi"},
        (MessageRefused, "invalid", "groupId: must be 1-128 characters", "groupId", None, None),
    ),
    (
        "senderId:type",
        {"recipientId": "b", "senderId": 1, "text": "hi"},
        (MessageRefused, "invalid", "senderId: must be a string", "senderId", "b", None),
    ),
    (
        "senderId:length",
        {"groupId": "g", "senderId": "", "text": "hi"},
        (MessageRefused, "invalid", "senderId: must be 1-128 characters", "senderId", None, "g"),
    ),
    (
        "senderName:type",
        {"recipientId": "b", "senderName": True, "text": "hi"},
        (MessageRefused, "invalid", "senderName: must be a string", "senderName", "b", None),
    ),
    (
        "senderName:length",
        {"recipientId": "b", "senderName": "n" * 257, "text": "hi"},
        (
            MessageRefused,
            "invalid",
            "senderName: must be 0-256 characters",
            "senderName",
            "b",
            None,
        ),
    ),
    (
        "senderAvatar:type",
        {"recipientId": "b", "senderAvatar": {}, "text": "hi"},
        (MessageRefused, "invalid", "senderAvatar: must be a string", "senderAvatar", "b", None),
    ),
    (
        "senderAvatar:length",
        {"recipientId": "b", "senderAvatar": "a" * 257, "text": "hi"},
        (
            MessageRefused,
            "invalid",
            "senderAvatar: must be 0-256 characters",
            "senderAvatar",
            "b",
            None,
        ),
    ),
    (
        "timestamp:type",
        {"recipientId": "b", "timestamp": 3, "text": "hi"},
        (MessageRefused, "invalid", "timestamp: must be a string", "timestamp", "b", None),
    ),
    (
        "timestamp:length",
        {"recipientId": "b", "timestamp": "t" * 257, "text": "hi"},
        (MessageRefused, "invalid", "timestamp: must be 0-256 characters", "timestamp", "b", None),
    ),
    (
        "recipientId:one_of",
        {"recipientId": "b", "groupId": "g", "text": "hi"},
        (
            MessageRefused,
            "invalid",
            "recipientId: exactly one of recipientId and groupId is required",
            "recipientId",
            "b",
            "g",
        ),
    ),
    (
        "text:type",
        {"recipientId": "b"},
        (MessageRefused, "invalid", "text: must be a string", "text", "b", None),
    ),
    (
        "text:empty",
        {"groupId": "g", "text": ""},
        (MessageRefused, "invalid", "text: must not be empty", "text", None, "g"),
    ),
    (
        "text:long",
        {"recipientId": "b", "text": "x" * 11},
        (MessageRefused, "too_long", "text: longer than 10 characters", "text", "b", None),
    ),
    (
        "meta:type",
        {"recipientId": "b", "text": "hi", "meta": [1]},
        (MessageRefused, "invalid", "meta: must be an object", "meta", "b", None),
    ),
    (
        "meta:deep",
        # 17 levels, and over 30 bytes as JSON too: the depth is checked first
        {
            "recipientId": "b",
            "text": "hi",
            "meta": functools.reduce(lambda v, _: {"a": v}, range(16), {}),
        },
        (
            MessageRefused,
            "invalid",
            f"meta: nests deeper than {META_DEPTH_MAX} objects and arrays",
            "meta",
            "b",
            None,
        ),
    ),
    (
        "meta:long",
        {"groupId": "g", "text": "hi", "meta": {"k": "v" * 40}},
        (MessageRefused, "too_long", "meta: larger than 30 bytes as JSON", "meta", None, "g"),
    ),
    (
        "e2e:type",
        {"groupId": "g", "e2e": {**E2E, "x": 1}},
        (
            MessageRefused,
            "invalid",
            "e2e: must be an object of v, suite, senderDevice and boxes",
            "e2e",
            None,
            "g",
        ),
    ),
    (
        "e2e:text",
        {"groupId": "g", "text": "hi", "e2e": E2E},
        (MessageRefused, "invalid", "text: an e2e message carries no text", "text", None, "g"),
    ),
    (
        "e2e:v",
        {"groupId": "g", "e2e": {**E2E, "v": 2}},
        (MessageRefused, "invalid", "e2e: v must be 1", "e2e", None, "g"),
    ),
    (
        "e2e:suite",
        {"groupId": "g", "e2e": {**E2E, "suite": "rot13"}},
        (
            MessageRefused,
            "invalid",
            f"e2e: suite must be {fastpath.E2E_SUITE!r}",
            "e2e",
            None,
            "g",
        ),
    ),
    (
        "e2e:senderDevice",
        {"groupId": "g", "e2e": {**E2E, "senderDevice": ""}},
        (
            MessageRefused,
            "invalid",
            f"e2e: senderDevice must be 1-{IDENT_MAX} characters",
            "e2e",
            None,
            "g",
        ),
    ),
    (
        "e2e:boxes",
        {"groupId": "g", "e2e": {**E2E, "boxes": {"d2": "not base64!"}}},
        (
            MessageRefused,
            "invalid",
            f"e2e: boxes must map 1-{fastpath.E2E_BOXES_MAX} device ids to standard base64 strings",
            "e2e",
            None,
            "g",
        ),
    ),
    (
        "e2e:long",
        {"groupId": "g", "e2e": {**E2E, "boxes": {"d2": "QUJD" * 40000, "d3": "QUJD" * 40000}}},
        (
            MessageRefused,
            "too_long",
            f"e2e: larger than {fastpath.E2E_BYTES_MAX} bytes as JSON",
            "e2e",
            None,
            "g",
        ),
    ),
    (
        "attachments:type",
        {"recipientId": "bob", "attachments": [{"fileId": "f"}] * 11},
        (
            MessageRefused,
            "invalid",
            f"attachments: must be 1-{fastpath.ATTACHMENTS_MAX} objects each with a fileId "
            "string, and no e2e",
            "attachments",
            "bob",
            None,
        ),
    ),
    (
        "call",
        {"recipientId": "bob", "text": "hi", "call": {"callId": "c1"}},
        (
            MessageRefused,
            "invalid",
            "call: only the relay writes call records; a message cannot carry one",
            "call",
            "bob",
            None,
        ),
    ),
]


def test_every_fault_has_a_case() -> None:
    assert [name for name, _, _ in CASES] == list(fastpath.MESSAGE_FAULTS[1:])


@pytest.mark.parametrize(("name", "fields", "answer"), CASES, ids=[c[0] for c in CASES])
def test_a_client_message_gets_its_faults_answer(
    name: str, fields: dict[str, Any], answer: tuple[Any, ...]
) -> None:
    obj = {"type": "message", "id": "m1", **fields}
    fault = fastpath.MESSAGE_FAULTS.index(name)
    assert fastpath.message_fault(obj, obj["id"], LIMITS.rules) == fault
    assert pure.message_fault(obj, obj["id"], LIMITS.rules) == fault
    with pytest.raises(FrameError) as info:
        parse_client_frame(orjson.dumps(obj), LIMITS)
    exc = info.value
    cls, code, message, field, peer, group = answer
    assert type(exc) is cls
    assert (exc.code, exc.message, exc.field) == (code, message, field)
    if isinstance(exc, MessageRefused):
        assert (exc.message_id, exc.ref, exc.peer_id, exc.group_id) == ("m1", "m1", peer, group)
    else:  # no receipt can name the message: an error echoing its ref (here its id)
        assert exc.ref == obj["id"]


@pytest.mark.parametrize(("name", "fields", "answer"), CASES[1:], ids=[c[0] for c in CASES[1:]])
def test_a_published_message_gets_the_same_answer(
    name: str, fields: dict[str, Any], answer: tuple[Any, ...]
) -> None:
    with pytest.raises(MessageRefused) as info:
        validate_message(fields, LIMITS, message_id="p1")
    exc = info.value
    _, code, message, field, peer, group = answer
    assert (exc.code, exc.message, exc.field) == (code, message, field)
    assert (exc.message_id, exc.ref, exc.peer_id, exc.group_id) == ("p1", "p1", peer, group)


def test_an_e2e_message_has_no_text_and_carries_its_object_untouched() -> None:
    for fields in ({"groupId": "g", "e2e": E2E}, {"groupId": "g", "e2e": E2E, "text": None}):
        parsed = parse_client_frame(orjson.dumps({"type": "message", "id": "m1", **fields}), LIMITS)
        assert isinstance(parsed, MessageFrame)
        assert (parsed.text, parsed.e2e) == ("", E2E)
        assert validate_message(fields, LIMITS, message_id="m1") == parsed._replace(ref=None)


def test_a_valid_message_reads_the_same_from_both_entries() -> None:
    fields = {"groupId": "g", "text": "hi", "senderName": "", "meta": {"k": 1}}
    parsed = parse_client_frame(orjson.dumps({"type": "message", "id": "m1", **fields}), LIMITS)
    assert parsed == validate_message(fields, LIMITS, message_id="m1", ref="m1")
    assert parsed == MessageFrame("m1", "hi", None, None, "g", "", None, None, {"k": 1}, "m1")


def test_the_rules_are_the_protocols_limits() -> None:
    limits = Limits(max_text_chars=7, max_meta_bytes=9)
    assert limits.rules == (
        MESSAGE_ID_MAX,
        IDENT_MAX,
        SHORT_TEXT_MAX,
        7,
        9,
        META_DEPTH_MAX,
        FRAME_DEPTH_MAX,
    )
    assert limits.rules is limits.rules  # made once: the fast path reads one tuple per Limits
    assert limits == Limits(max_text_chars=7, max_meta_bytes=9)


@pytest.mark.parametrize("size", [IDENT_MAX, IDENT_MAX + 1])
def test_the_limits_are_applied_where_they_are_defined(size: int) -> None:
    obj = {"type": "message", "id": "m" * MESSAGE_ID_MAX, "recipientId": "b" * size, "text": "x"}
    if size <= IDENT_MAX:
        assert isinstance(parse_client_frame(orjson.dumps(obj), LIMITS), MessageFrame)
    else:
        with pytest.raises(MessageRefused):
            parse_client_frame(orjson.dumps(obj), LIMITS)


def test_a_published_meta_is_held_to_the_same_depth() -> None:
    """A meta from the publish API nests in lists and tuples too (orjson writes both as arrays);
    a cycle is refused for its depth, never followed."""
    deep: Any = {"k": [1]}  # 2 levels, then 2 more per wrapping: META_DEPTH_MAX in all
    for _ in range((META_DEPTH_MAX - 2) // 2):
        deep = {"k": (deep,)}
    assert (
        validate_message(
            {"recipientId": "b", "text": "hi", "meta": deep}, Limits(), message_id="p1"
        ).meta
        is deep
    )
    cyclic: dict[str, Any] = {}
    cyclic["self"] = [cyclic]
    for meta in ({"k": (deep,)}, cyclic):
        with pytest.raises(MessageRefused) as info:
            validate_message(
                {"recipientId": "b", "text": "hi", "meta": meta}, Limits(), message_id="p1"
            )
        assert (info.value.code, info.value.field) == ("invalid", "meta")


@pytest.mark.parametrize(
    "attachments",
    [[], [{"fileId": "f"}] * 11, [{"fileId": ""}], [{"fileId": 3}], [{}], ["f"], {"fileId": "f"}],
)
def test_an_attachment_list_out_of_shape_is_refused(attachments: Any) -> None:
    obj = {"type": "message", "id": "m1", "recipientId": "bob", "attachments": attachments}
    with pytest.raises(MessageRefused) as info:
        parse_client_frame(orjson.dumps(obj), LIMITS)
    assert (info.value.code, info.value.field) == ("invalid", "attachments")


def test_attachments_make_the_text_optional_and_exclude_e2e() -> None:
    files = [{"fileId": "f1"}, {"fileId": "f2"}] * 5
    for fields, text in (({}, ""), ({"text": "look"}, "look")):
        obj = {"type": "message", "id": "m1", "recipientId": "bob", "attachments": files, **fields}
        parsed = parse_client_frame(orjson.dumps(obj), LIMITS)
        assert isinstance(parsed, MessageFrame)
        assert (parsed.text, parsed.attachments) == (text, files)
    obj = {"type": "message", "id": "m1", "recipientId": "bob", "attachments": files, "e2e": E2E}
    with pytest.raises(MessageRefused) as info:
        parse_client_frame(orjson.dumps(obj), LIMITS)
    assert info.value.field == "attachments"
    obj = {"type": "message", "id": "m1", "recipientId": "bob", "attachments": files, "text": ""}
    with pytest.raises(MessageRefused) as info:  # a text, when present, is still not empty
        parse_client_frame(orjson.dumps(obj), LIMITS)
    assert info.value.field == "text"
