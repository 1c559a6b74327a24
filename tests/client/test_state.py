"""ClientState without sockets: frames in, state and events out."""

from __future__ import annotations

from typing import Any

import pytest

from relay.client import (
    ClientError,
    ClientState,
    ConnectionChanged,
    ConnectionState,
    ConversationChanged,
    ConversationId,
    ErrorReceived,
    MessageAdded,
    MessageStatus,
    MessageUpdated,
    OutboxFull,
    PresenceChanged,
    TypingChanged,
)

BOB = ConversationId.direct("bob")
TS = "2026-02-05T10:30:15.000Z"


def incoming(
    mid: str, seq: int, sender: str = "bob", text: str = "hi", **extra: Any
) -> dict[str, Any]:
    frame = {
        "type": "message",
        "id": mid,
        "senderId": sender,
        "recipientId": "alice",
        "text": text,
        "timestamp": TS,
        "status": "delivered",
        "seq": seq,
        "serverTimestamp": f"2026-02-05T10:30:{seq:02d}.000Z",
    }
    frame.update(extra)
    return frame


def sent(mid: str, seq: int, peer: str = "bob") -> dict[str, Any]:
    return {"type": "receipt", "id": mid, "peerId": peer, "status": "sent", "seq": seq}


def watermark(
    status: str, seq: int, mid: str = "x", peer: str = "bob", user: str = "bob"
) -> dict[str, Any]:
    return {
        "type": "receipt",
        "id": mid,
        "peerId": peer,
        "seq": seq,
        "status": status,
        "userId": user,
    }


def alice() -> ClientState:
    return ClientState("alice", "Alice", "A")


def test_outgoing_message_moves_through_every_status() -> None:
    s = alice()
    msg, events = s.compose(BOB, "hello", timestamp=TS, message_id="m1")
    assert msg.status is MessageStatus.PENDING and msg.seq is None
    assert isinstance(events[0], MessageAdded)
    assert [m.id for m in s.messages(BOB)] == ["m1"]
    assert s.conversation(BOB) is not None and s.conversation(BOB).last_message == msg  # type: ignore[union-attr]

    frames = s.take_unsent(1)
    assert frames == [
        {
            "type": "message",
            "id": "m1",
            "senderId": "alice",
            "text": "hello",
            "timestamp": TS,
            "status": "pending",
            "senderName": "Alice",
            "senderAvatar": "A",
            "recipientId": "bob",
        }
    ]
    assert s.take_unsent(1) == []  # written once per connection

    s.apply(sent("m1", 4))
    assert s.find("m1").status is MessageStatus.SENT and s.find("m1").seq == 4  # type: ignore[union-attr]
    assert s.outbox == []
    events = s.apply(watermark("delivered", 4))
    assert [type(e) for e in events] == [MessageUpdated, ConversationChanged]
    assert s.find("m1").status is MessageStatus.DELIVERED  # type: ignore[union-attr]
    s.apply(watermark("read", 4))
    assert s.find("m1").status is MessageStatus.READ  # type: ignore[union-attr]
    # stale or repeated receipts never move a status back
    assert s.apply(watermark("delivered", 4)) == []
    s.apply(sent("m1", 4))
    assert s.find("m1").status is MessageStatus.READ  # type: ignore[union-attr]
    # the relay's own copy of the message (e.g. via history) does not demote it either
    s.apply(incoming("m1", 4, sender="alice", recipientId="bob"))
    assert s.find("m1").status is MessageStatus.READ  # type: ignore[union-attr]
    assert len(s.messages(BOB)) == 1


def test_watermark_covers_only_messages_up_to_its_seq() -> None:
    s = alice()
    for i in (1, 2, 3):
        s.compose(BOB, f"m{i}", timestamp=TS, message_id=f"m{i}")
        s.apply(sent(f"m{i}", i))
    s.apply(watermark("delivered", 2, mid="m2"))
    assert [m.status for m in s.messages(BOB)] == [
        MessageStatus.DELIVERED,
        MessageStatus.DELIVERED,
        MessageStatus.SENT,
    ]


def test_outbox_is_written_again_on_a_new_connection_in_order() -> None:
    s = alice()
    for i in range(3):
        s.compose(BOB, f"t{i}", timestamp=TS, message_id=f"m{i}")
    assert [f["id"] for f in s.take_unsent(1)] == ["m0", "m1", "m2"]
    s.apply(sent("m0", 1))
    # the link dropped: what has no answer goes out again, same ids, same order
    assert [f["id"] for f in s.take_unsent(2)] == ["m1", "m2"]
    assert [m.id for m in s.outbox] == ["m1", "m2"]


def test_outbox_is_bounded() -> None:
    s = ClientState("alice", max_outbox=2)
    s.compose(BOB, "a", timestamp=TS)
    s.compose(BOB, "b", timestamp=TS)
    with pytest.raises(OutboxFull):
        s.compose(BOB, "c", timestamp=TS)
    assert [m.text for m in s.outbox] == ["a", "b"]
    assert [m.text for m in s.messages(BOB)] == ["a", "b"]


def test_message_ids_are_unique_and_a_reused_id_is_refused() -> None:
    s = alice()
    a, _ = s.compose(BOB, "a", timestamp=TS)
    b, _ = s.compose(BOB, "b", timestamp=TS)
    assert a.id != b.id and 1 <= len(a.id) <= 64
    with pytest.raises(ClientError):
        s.compose(BOB, "c", timestamp=TS, message_id=a.id)
    with pytest.raises(ClientError):  # unique per sender across conversations
        s.compose(ConversationId.direct("carol"), "c", timestamp=TS, message_id=a.id)


def test_failed_receipt_marks_the_message_failed_and_retry_requeues_it() -> None:
    s = alice()
    s.compose(BOB, "x" * 5000, timestamp=TS, message_id="big")
    s.take_unsent(1)
    s.apply({"type": "receipt", "id": "big", "status": "failed", "reason": "too_long"})
    msg = s.find("big")
    assert msg is not None and msg.status is MessageStatus.FAILED and msg.reason == "too_long"
    assert s.outbox == []
    s.retry("big")
    assert s.find("big").status is MessageStatus.PENDING  # type: ignore[union-attr]
    assert [f["id"] for f in s.take_unsent(1)] == ["big"]


def test_error_echoing_a_message_id_fails_that_message() -> None:
    s = alice()
    s.compose(BOB, "hi", timestamp=TS, message_id="m1")
    events = s.apply({"type": "error", "code": "invalid", "message": "bad", "ref": "m1"})
    assert s.find("m1").status is MessageStatus.FAILED  # type: ignore[union-attr]
    assert not any(isinstance(e, ErrorReceived) for e in events)
    events = s.apply({"type": "error", "code": "bad_json", "message": "?"})
    assert events == [ErrorReceived("bad_json", "?", None)]


def test_incoming_messages_count_unread_and_are_acknowledged_once() -> None:
    s = alice()
    events = s.apply(incoming("b1", 1))
    assert isinstance(events[0], MessageAdded) and not events[0].message.outgoing
    s.apply(incoming("b2", 2, text="second"))
    s.apply(incoming("b2", 2, text="second"))  # a redelivery adds nothing
    conv = s.conversation(BOB)
    assert conv is not None and conv.unread == 2 and conv.last_seq == 2
    assert conv.last_message is not None and conv.last_message.text == "second"
    assert s.take_acks() == [{"type": "receipt", "peerId": "bob", "seq": 2, "status": "delivered"}]
    assert s.take_acks() == []
    s.apply(incoming("b2", 2))
    assert s.take_acks() == []  # acknowledged on this connection already
    s.set_connection(ConnectionState.ONLINE)
    s.apply(incoming("b2", 2))  # the relay sends again what it had no receipt for
    assert s.take_acks() == [{"type": "receipt", "peerId": "bob", "seq": 2, "status": "delivered"}]


def test_mark_read_and_a_read_from_another_device_clear_unread() -> None:
    s = alice()
    s.apply(incoming("b1", 1))
    s.apply(incoming("b2", 2))
    frame, _ = s.mark_read(BOB)
    assert frame == {"type": "receipt", "peerId": "bob", "seq": 2, "status": "read"}
    assert s.conversation(BOB).unread == 0  # type: ignore[union-attr]
    assert s.mark_read(BOB) == (None, [])
    s.apply(incoming("b3", 3))
    assert s.conversation(BOB).unread == 1  # type: ignore[union-attr]
    # alice read it on her phone: the relay tells this device
    s.apply(watermark("read", 3, mid="b3", peer="bob", user="alice"))
    conv = s.conversation(BOB)
    assert conv is not None and conv.unread == 0 and conv.read_seq == 3


def test_conversation_list_baseline_then_live_messages() -> None:
    s = alice()
    last = incoming("b17", 17, text="latest")
    s.apply(
        {
            "type": "conversations",
            "items": [
                {
                    "peerId": "bob",
                    "unread": 3,
                    "lastSeq": 17,
                    "readSeq": 14,
                    "updatedAt": "2026-02-05T10:30:17.000Z",
                    "lastMessage": last,
                },
                {
                    "groupId": "runners",
                    "name": "Runners",
                    "unread": 0,
                    "lastSeq": 0,
                    "readSeq": 0,
                    "updatedAt": "2026-02-05T09:00:00.000Z",
                    "lastMessage": None,
                },
            ],
        }
    )
    rows = s.conversations()
    assert [str(r.id) for r in rows] == ["bob", "#runners"]
    assert rows[0].unread == 3 and rows[0].last_message is not None
    assert rows[0].last_message.text == "latest" and rows[1].name == "Runners"
    s.apply(incoming("b18", 18))
    assert s.conversation(BOB).unread == 4  # type: ignore[union-attr]
    s.apply(incoming("b17", 17))  # already counted in the baseline
    assert s.conversation(BOB).unread == 4  # type: ignore[union-attr]
    s.mark_read(BOB)
    assert s.conversation(BOB).unread == 0  # type: ignore[union-attr]
    assert s.known_conversations() == [(BOB, 18)]


def test_own_message_from_another_device_is_outgoing_and_not_unread() -> None:
    s = alice()
    s.apply(incoming("p1", 1, sender="alice", recipientId="bob"))
    conv = s.conversation(BOB)
    assert conv is not None and conv.unread == 0
    msg = s.messages(BOB)[0]
    assert msg.outgoing and msg.status is MessageStatus.SENT
    assert s.take_acks() == []


def test_a_lost_sent_receipt_is_made_good_by_a_watermark_naming_the_id() -> None:
    s = alice()
    s.compose(BOB, "hi", timestamp=TS, message_id="m1")
    s.apply(watermark("delivered", 9, mid="m1"))
    msg = s.find("m1")
    assert msg is not None and msg.seq == 9 and msg.status is MessageStatus.DELIVERED
    assert s.outbox == []


def test_messages_are_ordered_by_seq_then_pending() -> None:
    s = alice()
    s.compose(BOB, "mine", timestamp=TS, message_id="p")
    s.apply(incoming("b3", 3))
    s.apply(incoming("b1", 1))
    assert [m.id for m in s.messages(BOB)] == ["b1", "b3", "p"]
    assert s.oldest_seq(BOB) == 1


def test_group_messages_and_group_frames() -> None:
    s = alice()
    events = s.apply(
        {"type": "group", "groupId": "g1", "name": "Runners", "members": ["alice", "bob"]}
    )
    assert s.groups["g1"].members == ("alice", "bob")
    g = ConversationId.group("g1")
    assert s.conversation(g).name == "Runners"  # type: ignore[union-attr]
    assert any(isinstance(e, ConversationChanged) for e in events)
    s.apply(incoming("x", 1, recipientId=None, groupId="g1"))
    assert [m.id for m in s.messages(g)] == ["x"]
    assert s.take_acks() == [{"type": "receipt", "groupId": "g1", "seq": 1, "status": "delivered"}]
    s.compose(g, "to all", timestamp=TS, message_id="gm")
    assert s.take_unsent(1)[0]["groupId"] == "g1"
    s.apply({"type": "receipt", "id": "gm", "groupId": "g1", "status": "sent", "seq": 2})
    s.apply(
        {
            "type": "receipt",
            "id": "gm",
            "groupId": "g1",
            "seq": 2,
            "status": "read",
            "userId": "bob",
        }
    )
    assert s.find("gm").status is MessageStatus.READ  # type: ignore[union-attr]


def test_presence_and_typing() -> None:
    s = alice()
    events = s.apply({"type": "status", "status": "online", "userId": "bob", "timestamp": TS})
    assert isinstance(events[0], PresenceChanged) and s.presence["bob"].status == "online"
    s.apply({"type": "presence", "users": [{"userId": "bob", "status": "offline", "lastSeen": TS}]})
    assert s.presence["bob"].last_seen == TS

    assert s.apply({"type": "typing", "userId": "bob", "state": "start"}, now=100.0) == [
        TypingChanged(BOB, "bob", True)
    ]
    assert s.conversation(BOB).typing == ("bob",)  # type: ignore[union-attr]
    assert s.typing_users(BOB, 105.0) == ["bob"]
    assert s.expire_typing(105.0) == []
    assert s.expire_typing(113.0) == [TypingChanged(BOB, "bob", False)]
    s.apply({"type": "typing", "userId": "bob", "state": "start"}, now=200.0)
    events = s.set_connection(ConnectionState.OFFLINE, 1, "closed 1012")
    assert events[0] == ConnectionChanged(ConnectionState.OFFLINE, 1, "closed 1012")
    assert TypingChanged(BOB, "bob", False) in events


def test_typing_frames_are_throttled() -> None:
    s = alice()
    assert s.typing_frame(BOB, True, 0.0) == {
        "type": "typing",
        "recipientId": "bob",
        "state": "start",
    }
    assert s.typing_frame(BOB, True, 1.0) is None
    assert s.typing_frame(BOB, True, 3.5) is not None
    assert s.typing_frame(BOB, False, 4.0) == {
        "type": "typing",
        "recipientId": "bob",
        "state": "stop",
    }
    assert s.typing_frame(BOB, False, 4.0) is None


def test_malformed_frames_change_nothing() -> None:
    s = alice()
    for frame in (
        {"type": "receipt", "status": "bogus"},
        {"type": "message", "id": 5},
        {"type": "conversations"},
        {"type": "presence", "users": [{}]},
        {"type": "nonsense"},
    ):
        assert s.apply(frame) == []
    assert s.conversations() == []


def test_active_conversation() -> None:
    s = alice()
    assert s.active_messages() == []
    s.apply(incoming("b1", 1))
    s.apply(incoming("c1", 1, sender="carol"))
    s.active = BOB
    assert [m.id for m in s.active_messages()] == ["b1"]


def test_a_seq_learned_late_takes_the_status_the_peer_already_reached() -> None:
    s = alice()
    s.compose(BOB, "one", timestamp=TS, message_id="m1")
    s.compose(BOB, "two", timestamp=TS, message_id="m2")
    s.apply(sent("m1", 1))
    s.apply(watermark("read", 2, mid="m2"))  # names m2: its seq is learned from the receipt
    s.apply(sent("m2", 2))  # the late `sent` does not move it back
    assert [m.status for m in s.messages(BOB)] == [MessageStatus.READ, MessageStatus.READ]
    # this user's copy from another device, already covered by bob's read watermark
    s.apply(incoming("m0", 3, sender="alice", recipientId="bob"))
    s.apply(watermark("read", 3, mid="m0"))
    assert s.find("m0").status is MessageStatus.READ  # type: ignore[union-attr]


def test_history_gives_own_messages_their_status_and_never_demotes_one() -> None:
    s = alice()
    s.compose(BOB, "mine", timestamp=TS, message_id="m1")  # pending: its `sent` was lost
    page = {
        "type": "history",
        "peerId": "bob",
        "hasMore": False,
        "messages": [
            incoming("m1", 1, sender="alice", recipientId="bob", status="read"),
            incoming("m2", 2, sender="alice", recipientId="bob", status="delivered"),
            incoming("m3", 3, sender="alice", recipientId="bob", status="sent"),
            incoming("b4", 4),
        ],
    }
    events = s.apply(page)
    assert any(isinstance(e, MessageUpdated) and e.message.id == "m1" for e in events)
    assert [(m.id, m.status) for m in s.messages(BOB)] == [
        ("m1", MessageStatus.READ),
        ("m2", MessageStatus.DELIVERED),
        ("m3", MessageStatus.SENT),
        ("b4", MessageStatus.DELIVERED),
    ]
    assert s.outbox == []
    # a later page (or a live copy) with a lower status moves nothing back
    s.apply(watermark("read", 3, mid="m3"))
    assert s.apply({**page, "messages": [page["messages"][2]]}) == []
    assert s.find("m3").status is MessageStatus.READ  # type: ignore[union-attr]
    s.apply(incoming("m1", 1, sender="alice", recipientId="bob"))
    assert s.find("m1").status is MessageStatus.READ  # type: ignore[union-attr]


def test_many_messages_keep_counts_and_order_consistent() -> None:
    s = alice()
    n = 400
    for i in range(1, n + 1):
        s.apply(incoming(f"b{i}", 2 * i - 1))
        s.compose(BOB, "y", timestamp=TS, message_id=f"a{i}")
        s.apply(sent(f"a{i}", 2 * i))
        if i % 7 == 0:
            s.apply(watermark("delivered", 2 * i, mid=f"a{i}"))
    conv = s.conversation(BOB)
    assert conv is not None and conv.unread == n and conv.last_seq == 2 * n
    msgs = s.messages(BOB)
    assert [m.seq for m in msgs] == list(range(1, 2 * n + 1))
    delivered = [m.seq for m in msgs if m.outgoing and m.status is MessageStatus.DELIVERED]
    assert delivered == [2 * i for i in range(1, n + 1) if i <= (n // 7) * 7]
    s.apply({"type": "receipt", "peerId": "bob", "seq": 300, "status": "read", "userId": "alice"})
    assert s.conversation(BOB).unread == n - 150  # type: ignore[union-attr]


def test_has_unsent_follows_take_unsent() -> None:
    s = alice()
    assert not s.has_unsent(1)
    s.compose(BOB, "a", timestamp=TS, message_id="a")
    assert s.has_unsent(1)
    s.take_unsent(1)
    assert not s.has_unsent(1)
    s.compose(BOB, "b", timestamp=TS, message_id="b")
    assert s.has_unsent(1)
    s.take_unsent(1)
    assert s.has_unsent(2)  # a new connection writes everything again
    s.apply({"type": "receipt", "id": "a", "status": "failed", "reason": "invalid"})
    s.apply(sent("b", 1))
    s.retry("a")
    assert s.has_unsent(1) and [f["id"] for f in s.take_unsent(1)] == ["a"]


def test_conversations_of_one_millisecond_keep_the_relays_order() -> None:
    """The relay lists conversations by their newest message's server time, and within one
    millisecond by the order it accepted those messages, the order they reach this client in.
    The client's list agrees, whichever conversation it heard of first; a `conversations`
    answer's own order stands for the ties it lists."""
    s = alice()
    same = "2026-02-05T10:30:00.000Z"
    carol = ConversationId.direct("carol")
    early = "2026-02-05T10:29:59.000Z"
    _, _ = s.compose(carol, "first", timestamp=early, message_id="a1")  # carol is known first
    s.apply(incoming("b1", 1, serverTimestamp=same))
    s.apply({"type": "receipt", "id": "a1", "peerId": "carol", "status": "sent", "seq": 1,
             "timestamp": same})  # fmt: skip
    assert [str(r.id) for r in s.conversations()] == ["carol", "bob"]  # accepted last
    s.apply(incoming("b2", 2, serverTimestamp=same))
    assert [str(r.id) for r in s.conversations()] == ["bob", "carol"]
    listed = [
        {"peerId": peer, "lastSeq": seq, "readSeq": 0, "unread": 0, "updatedAt": same}
        for peer, seq in (("carol", 1), ("bob", 2))
    ]
    s.apply({"type": "conversations", "items": listed})
    assert [str(r.id) for r in s.conversations()] == ["carol", "bob"]
