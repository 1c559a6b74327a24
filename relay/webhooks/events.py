"""The `message.undelivered` event (sans-IO): who is owed one for a stored message, and its JSON.

A recipient of a message is owed an event when, `webhook_delay` after the message was stored
(its server timestamp), they have no connected device and their delivered watermark in the
conversation is below the message's seq. So a user who connects within the delay (and gets the
message from the backlog, or is still connected) costs no event, and a user whose device
acknowledged it on another node (the watermark is in the store) neither.

Recipients: the other user of a 1:1 (none for a note to self); every current member of a group
but the sender (one event each). A member who joined after the message has a watermark at or
above it (the store moves a newcomer's watermarks to the group's present) and gets none.

Invariants: an event's id is a function of (conversation, seq, user): a scan that runs again
over the same message after a crash makes the same ids, which the store and receivers dedupe;
the JSON is built once, when the event is made, and sent as it is on every attempt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from datetime import datetime

import orjson
from attrs import frozen

from relay.store.base import StoredMessage, Watermarks

#: the event type of the contract
UNDELIVERED = "message.undelivered"
#: characters of a message's text in its event's `preview`
PREVIEW_CHARS = 100


def event_id(message: StoredMessage, user_id: str) -> str:
    """The id of `user_id`'s event for `message`: the same on every scan of the message."""
    key = f"{message.conversation}\0{message.seq}\0{user_id}".encode()
    return "evt_" + hashlib.sha256(key).hexdigest()[:32]


def preview(message: StoredMessage) -> str:
    """The start of the message's text ("" for a message without one, as an encrypted one)."""
    return message.text[:PREVIEW_CHARS]


def stored_at(message: StoredMessage) -> float:
    """The message's server timestamp as unix seconds."""
    return datetime.fromisoformat(message.server_timestamp).timestamp()


@frozen
class UndeliveredEvent:
    """One `message.undelivered` event, as the contract names its fields."""

    id: str
    created_at: str  # ISO-8601 UTC, when the event was made
    user_id: str  # who did not get the message
    message_id: str
    sender_id: str
    peer_id: str | None  # 1:1: the conversation's other user as user_id sees it (the sender)
    group_id: str | None  # groups
    seq: int
    preview: str

    def to_json(self) -> str:
        obj: dict[str, object] = {
            "id": self.id,
            "type": UNDELIVERED,
            "createdAt": self.created_at,
            "userId": self.user_id,
            "messageId": self.message_id,
            "senderId": self.sender_id,
        }
        if self.group_id is not None:
            obj["groupId"] = self.group_id
        else:
            obj["peerId"] = self.peer_id
        obj["seq"] = self.seq
        obj["preview"] = self.preview
        return orjson.dumps(obj).decode()


def recipients(message: StoredMessage, members: Mapping[str, Watermarks]) -> list[str]:
    """Who a message is for but its sender: the 1:1 peer, or `members` (a group's current
    members, as Store.member_watermarks gives them), in user id order."""
    sender = message.sender_id
    if message.group_id is None:
        peer = message.recipient_id
        return [] if peer is None or peer == sender else [peer]
    return sorted(user for user in members if user != sender)


def undelivered_events(
    message: StoredMessage,
    members: Mapping[str, Watermarks],
    connected: Callable[[str], bool],
    created_at: str,
) -> list[UndeliveredEvent]:
    """The events owed for `message` now (see the module docstring): `members` the
    conversation's participants' watermarks, `connected(user)` whether a device of the user is
    connected."""
    events = []
    for user in recipients(message, members):
        marks = members.get(user)
        if connected(user) or (marks is not None and marks.delivered_seq >= message.seq):
            continue
        events.append(
            UndeliveredEvent(
                id=event_id(message, user),
                created_at=created_at,
                user_id=user,
                message_id=message.id,
                sender_id=message.sender_id,
                peer_id=message.sender_id if message.group_id is None else None,
                group_id=message.group_id,
                seq=message.seq,
                preview=preview(message),
            )
        )
    return events
