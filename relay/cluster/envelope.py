"""What nodes say to each other over Redis (sans-IO): envelopes, and the channel names.

Channels:
- `relay:u:<userId>`: what is for that user's devices; a node subscribes to it while it holds
  one of them. A delivery (`M`) carries the stored message, a frame (`F`) a framed server frame
  (receipts, typing, presence, group events) to send as is; a disconnect (`X`) closes the
  user's devices on every node (the HTTP API's `POST /users/{id}/disconnect`).
- `relay:nodes`: changes of the users a node holds (connected, or within the presence grace),
  at once (`P`); a group whose members changed (`G`), so every node reads it again from the
  store.

Keys: `relay:presence:<nodeId>`, the users that node holds, their devices there and the status
registers it keeps for them (JSON, as a presence note), written by it every `refresh` seconds
with an expiry of `ttl`: the key of a dead node expires.

Every envelope names its origin node, which ignores its own (it delivered locally already).
Layout: one kind byte, the origin node id, a newline, then the body.
"""

from __future__ import annotations

from typing import Final, NamedTuple

import orjson

from relay.store.base import StoredMessage

USER_PREFIX: Final = "relay:u:"
NODES_CHANNEL: Final = "relay:nodes"
PRESENCE_PREFIX: Final = "relay:presence:"

DELIVERY: Final = b"M"
FRAME: Final = b"F"
FRAME_DROPPABLE: Final = b"f"
PRESENCE: Final = b"P"
CALL: Final = b"C"  # on a user channel: call routing between nodes (relay.cluster.calls)
GROUP_CHANGED: Final = b"G"  # body: {groupId, event}; the nodes forget the cached members
DISCONNECT: Final = b"X"  # on a user channel; body: the close reason (the HTTP API's disconnect)


def user_channel(user_id: str) -> str:
    return USER_PREFIX + user_id


def channel_user(channel: bytes | str) -> str | None:
    """The user of a user channel, None for another channel."""
    text = channel.decode() if isinstance(channel, bytes) else channel
    return text[len(USER_PREFIX) :] if text.startswith(USER_PREFIX) else None


class Envelope(NamedTuple):
    kind: bytes
    node: str
    body: bytes


def envelope(kind: bytes, node: str, body: bytes) -> bytes:
    return kind + node.encode() + b"\n" + body


def open_envelope(data: bytes) -> Envelope | None:
    """The envelope in `data`, None when it is not one (another program on the channel)."""
    head, sep, body = data.partition(b"\n")
    if not sep or len(head) < 2:
        return None
    return Envelope(head[:1], head[1:].decode(errors="replace"), body)


def encode_message(message: StoredMessage) -> bytes:
    return orjson.dumps(list(message))


def decode_message(body: bytes) -> StoredMessage:
    return StoredMessage(*orjson.loads(body))


#: the statuses a register may hold (the `status` frame's)
STATUSES: Final = frozenset({"online", "away", "busy"})


class PresenceNote(NamedTuple):
    """What a node says of the users it holds: started (`up`) or stopped (`down`) holding, the
    devices of each `up` user there, `version`, the node's count of holding changes when it
    said so (a note older than one already applied is stale), and the status register it keeps
    for each `up` user that has one (relay.cluster.presence)."""

    up: list[str]
    down: list[str]
    devices: dict[str, int] | None
    version: int
    statuses: dict[str, tuple[int, str, str]]


def encode_presence(
    up: list[str],
    down: list[str],
    devices: dict[str, int] | None = None,
    version: int = 0,
    statuses: dict[str, tuple[int, str, str]] | None = None,
) -> bytes:
    value: dict[str, object] = {"up": up, "down": down, "v": version}
    if devices is not None:
        value["devices"] = devices
    if statuses:
        value["status"] = statuses
    return orjson.dumps(value)


def decode_presence(body: bytes) -> PresenceNote:
    value = orjson.loads(body)
    devices = value.get("devices")
    counts = (
        {str(u): n for u, n in devices.items() if isinstance(n, int)}
        if isinstance(devices, dict)
        else None
    )
    version = value.get("v", 0)
    statuses: dict[str, tuple[int, str, str]] = {}
    found = value.get("status")
    if isinstance(found, dict):
        for user, register in found.items():
            match register:
                case [int(stamp), str(origin), str(status)] if status in STATUSES:
                    statuses[str(user)] = (stamp, origin, status)
    return PresenceNote(
        list(value.get("up", [])),
        list(value.get("down", [])),
        counts,
        version if isinstance(version, int) else 0,
        statuses,
    )


def group_event(frame: bytes) -> tuple[str, str] | None:
    """(groupId, event) of a framed `group` event (create/add/remove/leave), None for another
    frame."""
    start = frame.find(b"{", 0, 16)
    if start < 0 or not frame.startswith(b'{"type":"group",', start):
        return None
    value = orjson.loads(frame[start:])
    group_id, event = value.get("groupId"), value.get("event")
    if not isinstance(group_id, str):
        return None
    return group_id, event if isinstance(event, str) else ""


def encode_group_changed(group_id: str, event: str) -> bytes:
    return orjson.dumps({"groupId": group_id, "event": event})


def decode_group_changed(body: bytes) -> tuple[str, str]:
    value = orjson.loads(body)
    return str(value["groupId"]), str(value.get("event", ""))
