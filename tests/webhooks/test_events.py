"""Who is owed a `message.undelivered` event, and its JSON (relay.webhooks.events)."""

from __future__ import annotations

import orjson

from relay.store.base import StoredMessage, Watermarks, direct_conversation, group_conversation
from relay.webhooks.events import PREVIEW_CHARS, event_id, undelivered_events

NOBODY = frozenset[str]()
STAMP = "2026-02-05T10:30:00.000Z"


def direct(sender: str, peer: str, seq: int = 3, text: str = "hello") -> StoredMessage:
    return StoredMessage(direct_conversation(sender, peer), seq, "m1", sender, text, STAMP, peer)


def in_group(sender: str, seq: int = 3) -> StoredMessage:
    return StoredMessage(group_conversation("g"), seq, "g1", sender, "hi all", STAMP, None, "g")


def marks(**delivered: int) -> dict[str, Watermarks]:
    return {user: Watermarks(seq, 0) for user, seq in delivered.items()}


def test_an_offline_peer_below_the_message_gets_one_event() -> None:
    message = direct("ann", "bob")
    [event] = undelivered_events(message, marks(ann=3, bob=2), NOBODY.__contains__, "T")
    assert orjson.loads(event.to_json()) == {
        "id": event_id(message, "bob"),
        "type": "message.undelivered",
        "createdAt": "T",
        "userId": "bob",
        "messageId": "m1",
        "senderId": "ann",
        "peerId": "ann",
        "seq": 3,
        "preview": "hello",
    }


def test_a_connected_peer_or_one_who_has_it_gets_none() -> None:
    message = direct("ann", "bob")
    assert undelivered_events(message, marks(bob=0), {"bob"}.__contains__, "T") == []
    assert undelivered_events(message, marks(bob=3), NOBODY.__contains__, "T") == []
    assert undelivered_events(message, marks(bob=9), NOBODY.__contains__, "T") == []


def test_a_note_to_self_gets_none() -> None:
    assert undelivered_events(direct("ann", "ann"), marks(ann=0), NOBODY.__contains__, "T") == []


def test_a_group_message_makes_one_event_per_offline_member_but_the_sender() -> None:
    message = in_group("ann")
    members = marks(ann=0, bob=0, cid=1, dan=0, eve=5)
    events = undelivered_events(message, members, {"dan"}.__contains__, "T")
    assert [(e.user_id, e.group_id, e.peer_id) for e in events] == [
        ("bob", "g", None),
        ("cid", "g", None),
    ]
    body = orjson.loads(events[0].to_json())
    assert body["groupId"] == "g" and "peerId" not in body


def test_ids_are_the_same_on_every_scan_and_differ_per_user_and_message() -> None:
    message = direct("ann", "bob")
    assert event_id(message, "bob") == event_id(direct("ann", "bob"), "bob")
    others = {event_id(message, "cid"), event_id(direct("ann", "bob", seq=4), "bob")}
    assert event_id(message, "bob") not in others and len(others) == 2


def test_the_preview_is_the_start_of_the_text_and_empty_without_one() -> None:
    long = direct("ann", "bob", text="é" * (PREVIEW_CHARS + 50))
    [event] = undelivered_events(long, marks(bob=0), NOBODY.__contains__, "T")
    assert event.preview == "é" * PREVIEW_CHARS
    [event] = undelivered_events(direct("ann", "bob", text=""), marks(), NOBODY.__contains__, "T")
    assert event.preview == ""
