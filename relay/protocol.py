"""Protocol v1 (sans-IO): validate client frames into typed values, encode server frames to JSON.

Client frames: `parse_client_frame(payload, limits)` returns one frozen value per frame type or
raises FrameError carrying the contract's error code:
- not JSON -> `bad_json`; JSON that is not an object, or has no string `type` -> `bad_frame`;
- a `type` the contract does not define -> `unknown_type`;
- a field of the wrong type or out of range -> `invalid`, with `field` naming it (in an
  `auth` frame: `auth_failed`, with `field`, since the connection cannot go on).
`ref` on every error echoes the frame's `ref` (or, failing that, its `id`) when it is a string.
Unknown fields are ignored.

Message frames are refused with MessageRefused (a FrameError whose `ref` is the message id) once
their `id` is valid, so the caller can answer with a `failed` receipt instead of an error; its
`code` is the receipt's `reason` (`invalid`, or `too_long` for text over `max_text_chars` and
meta over `max_meta_bytes`). A message whose `id` itself is missing or invalid gets an
`invalid` error (field `id`): there is nothing a receipt could name.

Limits on identifiers (not in RelayConfig because the contract fixes or implies them):
- message `id`: 1-64 characters (contract);
- user, device and group ids: 1-128 characters;
- a `presence` query names at most 1000 user ids; `group_add`/`group_remove` at most
  `max_group_members` user ids;
- history `limit`: 1-100, default 50; `conversations` `limit`: 1-100, default 100.

Server frames: every `encode_*` function returns the JSON bytes of one frame (orjson); the
caller wraps them in one WebSocket frame once and hands the same bytes to every recipient.
Fields whose value is absent (None) are left out, except `lastSeen` in presence answers and
`lastMessage` in conversation items, which the contract shows as `null`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import orjson
from attrs import frozen

from relay.config import RelayConfig
from relay.errors import FrameError
from relay.fastpath import decode_message
from relay.store.base import ConversationSummary, Group, StoredMessage

MESSAGE_ID_MAX = 64
IDENT_MAX = 128
PRESENCE_QUERY_MAX = 1000
HISTORY_LIMIT_DEFAULT = 50
HISTORY_LIMIT_MAX = 100
CONVERSATIONS_LIMIT_DEFAULT = 100
CONVERSATIONS_LIMIT_MAX = 100
GROUP_NAME_MAX = 256
#: free-text fields the relay stores or forwards but does not interpret
SHORT_TEXT_MAX = 256
TOKEN_MAX = 8192

USER_STATUSES = ("online", "away", "busy")
RECEIPT_STATUSES = ("delivered", "read")
TYPING_STATES = ("start", "stop")


class MessageRefused(FrameError):
    """A `message` frame with a valid `id` that the relay refuses; answered by a `failed` receipt.

    `code` is the receipt's reason; `ref` is the message id. `peer_id`/`group_id` are the frame's
    target when it named a valid one (echoed in the receipt).
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        message_id: str,
        field: str | None = None,
        peer_id: str | None = None,
        group_id: str | None = None,
    ) -> None:
        super().__init__(code, message, ref=message_id, field=field)
        self.message_id = message_id
        self.peer_id = peer_id
        self.group_id = group_id


@frozen
class Limits:
    """The configurable limits frame validation enforces."""

    max_text_chars: int = 4096
    max_meta_bytes: int = 4096
    max_group_members: int = 1000

    @classmethod
    def from_config(cls, config: RelayConfig) -> Limits:
        return cls(
            max_text_chars=config.max_text_chars,
            max_meta_bytes=config.max_meta_bytes,
            max_group_members=config.max_group_members,
        )


# --- client frames ------------------------------------------------------------------------------


@frozen
class AuthFrame:
    user_id: str
    user_name: str | None = None
    user_avatar: str | None = None
    token: str | None = None
    device_id: str | None = None  # None: the client did not name its device
    acks: bool = False
    timestamp: str | None = None
    ref: str | None = None


class MessageFrame(NamedTuple):
    """A validated `message` frame. A NamedTuple, not an attrs class: one is built per message
    on the hot path, and a tuple is immutable at a fraction of a frozen __init__'s cost."""

    id: str
    text: str
    sender_id: str | None = None  # None: the frame left it out (taken as the authenticated user)
    recipient_id: str | None = None
    group_id: str | None = None
    sender_name: str | None = None
    sender_avatar: str | None = None
    client_timestamp: str | None = None
    meta: dict[str, Any] | None = None
    ref: str | None = None


@frozen
class ReceiptFrame:
    seq: int
    status: str  # "delivered" | "read"
    peer_id: str | None = None
    group_id: str | None = None
    ref: str | None = None


@frozen
class StatusFrame:
    status: str  # "online" | "away" | "busy"
    user_id: str | None = None  # None: left out (taken as the authenticated user)
    ref: str | None = None


@frozen
class PresenceFrame:
    user_ids: tuple[str, ...]
    ref: str | None = None


@frozen
class TypingFrame:
    state: str  # "start" | "stop"
    recipient_id: str | None = None
    group_id: str | None = None
    ref: str | None = None


@frozen
class ConversationsFrame:
    limit: int = CONVERSATIONS_LIMIT_DEFAULT
    ref: str | None = None


@frozen
class HistoryFrame:
    peer_id: str | None = None
    group_id: str | None = None
    before: int | None = None
    after: int | None = None
    limit: int = HISTORY_LIMIT_DEFAULT
    ref: str | None = None


@frozen
class GroupCreateFrame:
    group_id: str
    name: str
    members: tuple[str, ...]
    ref: str | None = None


@frozen
class GroupAddFrame:
    group_id: str
    user_ids: tuple[str, ...]
    ref: str | None = None


@frozen
class GroupRemoveFrame:
    group_id: str
    user_ids: tuple[str, ...]
    ref: str | None = None


@frozen
class GroupLeaveFrame:
    group_id: str
    ref: str | None = None


@frozen
class PingFrame:
    ref: str | None = None


ClientFrame = (
    AuthFrame
    | MessageFrame
    | ReceiptFrame
    | StatusFrame
    | PresenceFrame
    | TypingFrame
    | ConversationsFrame
    | HistoryFrame
    | GroupCreateFrame
    | GroupAddFrame
    | GroupRemoveFrame
    | GroupLeaveFrame
    | PingFrame
)


# --- field readers --------------------------------------------------------------------------------


class _Fields:
    """Typed access to the fields of one client frame; every failure is `invalid` with `field`."""

    __slots__ = ("obj", "ref")

    def __init__(self, obj: Mapping[str, Any], ref: str | None) -> None:
        self.obj = obj
        self.ref = ref

    def fail(self, name: str, why: str) -> FrameError:
        return FrameError("invalid", f"{name}: {why}", ref=self.ref, field=name)

    def string(
        self, name: str, *, required: bool = False, max_len: int = IDENT_MAX, min_len: int = 1
    ) -> str | None:
        value = self.obj.get(name)
        if value is None:
            if required:
                raise self.fail(name, "is required")
            return None
        if not isinstance(value, str):
            raise self.fail(name, "must be a string")
        if not min_len <= len(value) <= max_len:
            raise self.fail(name, f"must be {min_len}-{max_len} characters")
        return value

    def required_string(self, name: str, *, max_len: int = IDENT_MAX) -> str:
        value = self.string(name, required=True, max_len=max_len)
        assert value is not None
        return value

    def integer(
        self, name: str, *, low: int, high: int | None = None, default: int | None = None
    ) -> int | None:
        value = self.obj.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, "must be an integer")
        if value < low or (high is not None and value > high):
            bound = f"{low}-{high}" if high is not None else f">= {low}"
            raise self.fail(name, f"must be {bound}")
        return value

    def choice(self, name: str, options: Sequence[str], *, default: str | None = None) -> str:
        value = self.obj.get(name, default)
        if value is None:
            raise self.fail(name, "is required")
        if value not in options:
            raise self.fail(name, f"must be one of {', '.join(options)}")
        return str(value)

    def id_list(self, name: str, *, max_items: int) -> tuple[str, ...]:
        value = self.obj.get(name)
        if not isinstance(value, list):
            raise self.fail(name, "must be a list of ids")
        if len(value) > max_items:
            raise self.fail(name, f"names at most {max_items} ids")
        ids: dict[str, None] = {}
        for item in value:
            if not isinstance(item, str) or not 1 <= len(item) <= IDENT_MAX:
                raise self.fail(name, f"must hold strings of 1-{IDENT_MAX} characters")
            ids[item] = None
        return tuple(ids)

    def one_of(self, peer_field: str) -> tuple[str | None, str | None]:
        """Exactly one of `peer_field` (peerId/recipientId) and `groupId`."""
        peer = self.string(peer_field)
        group = self.string("groupId")
        if (peer is None) == (group is None):
            raise self.fail(
                peer_field if peer is None else "groupId",
                f"exactly one of {peer_field} and groupId is required",
            )
        return peer, group


def _ref_of(obj: Mapping[str, Any]) -> str | None:
    ref = obj.get("ref")
    if isinstance(ref, str):
        return ref
    ident = obj.get("id")
    return ident if isinstance(ident, str) else None


# --- parsing --------------------------------------------------------------------------------------


def parse_client_frame(payload: bytes | str, limits: Limits) -> ClientFrame:
    """Validate one client text message; raises FrameError (see the module docstring)."""
    try:
        # the common case, compiled: a MessageFrame of a message frame whose every field is
        # right (fastpath.message_fields), read without a dict; else the decoded JSON
        obj = decode_message(payload, limits.max_text_chars, MessageFrame)
    except orjson.JSONDecodeError as exc:
        raise FrameError("bad_json", f"not JSON: {exc}") from None
    if obj.__class__ is MessageFrame:
        return obj
    if obj.__class__ is not dict:
        raise FrameError("bad_frame", "a frame must be a JSON object")
    kind = obj.get("type")
    if kind == "message":
        # message_fields refused it: find out why, field by field
        ident = obj.get("id")
        ref = obj.get("ref")
        if ref.__class__ is not str:
            ref = ident if ident.__class__ is str else None
        if ident.__class__ is not str or not 1 <= len(ident) <= MESSAGE_ID_MAX:
            raise FrameError(
                "invalid",
                f"id: must be a string of 1-{MESSAGE_ID_MAX} characters",
                ref=ref,
                field="id",
            )
        return validate_message(obj, limits, message_id=ident, ref=ref)
    ref = _ref_of(obj)
    if not isinstance(kind, str):
        raise FrameError("bad_frame", "a frame needs a string `type`", ref=ref)
    parser = _PARSERS.get(kind)
    if parser is None:
        raise FrameError("unknown_type", f"unknown frame type {kind!r}", ref=ref)
    try:
        return parser(_Fields(obj, ref), limits)
    except FrameError as exc:
        if kind == "auth" and exc.code == "invalid":
            # an auth frame the relay cannot accept is a failed authentication (close 1008)
            raise FrameError("auth_failed", exc.message, ref=ref, field=exc.field) from None
        raise


def _auth(f: _Fields, limits: Limits) -> AuthFrame:
    acks = f.obj.get("acks", False)
    if acks is None:
        acks = False
    if not isinstance(acks, bool):
        raise f.fail("acks", "must be true or false")
    return AuthFrame(
        user_id=f.required_string("userId"),
        user_name=f.string("userName", max_len=SHORT_TEXT_MAX, min_len=0),
        user_avatar=f.string("userAvatar", max_len=SHORT_TEXT_MAX, min_len=0),
        token=f.string("token", max_len=TOKEN_MAX, min_len=0),
        device_id=f.string("deviceId"),
        acks=acks,
        timestamp=f.string("timestamp", max_len=SHORT_TEXT_MAX, min_len=0),
        ref=f.ref,
    )


def _message(f: _Fields, limits: Limits) -> MessageFrame:
    ident = f.obj.get("id")
    if not isinstance(ident, str) or not 1 <= len(ident) <= MESSAGE_ID_MAX:
        raise FrameError(
            "invalid",
            f"id: must be a string of 1-{MESSAGE_ID_MAX} characters",
            ref=f.ref,
            field="id",
        )
    return validate_message(f.obj, limits, message_id=ident, ref=f.ref)


def _check_str(value: object, min_len: int, max_len: int) -> str | None:
    """Why `value` is not an optional string of min_len..max_len characters (None: it is)."""
    if value is None:
        return None
    if not isinstance(value, str):
        return "must be a string"
    if not min_len <= len(value) <= max_len:
        return f"must be {min_len}-{max_len} characters"
    return None


#: optional string fields of a message: (name, min length, max length)
_MESSAGE_STRINGS = (
    ("recipientId", 1, IDENT_MAX),
    ("groupId", 1, IDENT_MAX),
    ("senderId", 1, IDENT_MAX),
    ("senderName", 0, SHORT_TEXT_MAX),
    ("senderAvatar", 0, SHORT_TEXT_MAX),
    ("timestamp", 0, SHORT_TEXT_MAX),
)


def validate_message(
    obj: Mapping[str, Any], limits: Limits, *, message_id: str, ref: str | None = None
) -> MessageFrame:
    """The contract's checks of a message whose `id` is valid; raises MessageRefused.

    Shared by client frames and the in-process publish API so both refuse the same things.
    """
    get = obj.get
    peer = get("recipientId")
    group = get("groupId")
    sender = get("senderId")
    name = get("senderName")
    avatar = get("senderAvatar")
    stamp = get("timestamp")
    # the common case in one expression; the loop below finds the first bad field otherwise
    if not (
        (peer is None or (peer.__class__ is str and 0 < len(peer) <= IDENT_MAX))
        and (group is None or (group.__class__ is str and 0 < len(group) <= IDENT_MAX))
        and (sender is None or (sender.__class__ is str and 0 < len(sender) <= IDENT_MAX))
        and (name is None or (name.__class__ is str and len(name) <= SHORT_TEXT_MAX))
        and (avatar is None or (avatar.__class__ is str and len(avatar) <= SHORT_TEXT_MAX))
        and (stamp is None or (stamp.__class__ is str and len(stamp) <= SHORT_TEXT_MAX))
    ):
        for field_name, min_len, max_len in _MESSAGE_STRINGS:
            value = get(field_name)
            if value is not None and (
                value.__class__ is not str or not min_len <= len(value) <= max_len
            ):
                why = _check_str(value, min_len, max_len)
                raise _refused(obj, message_id, "invalid", field_name, why)
    if (peer is None) == (group is None):
        raise _refused(
            obj,
            message_id,
            "invalid",
            "recipientId",
            "exactly one of recipientId and groupId is required",
        )
    text = get("text")
    if text.__class__ is not str:
        raise _refused(obj, message_id, "invalid", "text", "must be a string")
    if not text:
        raise _refused(obj, message_id, "invalid", "text", "must not be empty")
    if len(text) > limits.max_text_chars:
        raise _refused(
            obj, message_id, "too_long", "text", f"longer than {limits.max_text_chars} characters"
        )
    meta = get("meta")
    if meta is not None:
        if not isinstance(meta, dict):
            raise _refused(obj, message_id, "invalid", "meta", "must be an object")
        if len(orjson.dumps(meta)) > limits.max_meta_bytes:
            raise _refused(
                obj,
                message_id,
                "too_long",
                "meta",
                f"larger than {limits.max_meta_bytes} bytes as JSON",
            )
    return MessageFrame(message_id, text, sender, peer, group, name, avatar, stamp, meta, ref)


def _refused(
    obj: Mapping[str, Any], message_id: str, code: str, field: str, why: str | None
) -> MessageRefused:
    peer = obj.get("recipientId")
    group = obj.get("groupId")
    valid = _check_str(peer, 1, IDENT_MAX) is None and _check_str(group, 1, IDENT_MAX) is None
    return MessageRefused(
        code,
        f"{field}: {why}",
        message_id=message_id,
        field=field,
        peer_id=peer if valid and isinstance(peer, str) else None,
        group_id=group if valid and isinstance(group, str) else None,
    )


def _receipt(f: _Fields, limits: Limits) -> ReceiptFrame:
    peer, group = f.one_of("peerId")
    seq = f.integer("seq", low=1)
    if seq is None:
        raise f.fail("seq", "is required")
    status = f.choice("status", RECEIPT_STATUSES)
    return ReceiptFrame(seq=seq, status=status, peer_id=peer, group_id=group, ref=f.ref)


def _status(f: _Fields, limits: Limits) -> StatusFrame:
    return StatusFrame(
        status=f.choice("status", USER_STATUSES), user_id=f.string("userId"), ref=f.ref
    )


def _presence(f: _Fields, limits: Limits) -> PresenceFrame:
    return PresenceFrame(user_ids=f.id_list("userIds", max_items=PRESENCE_QUERY_MAX), ref=f.ref)


def _typing(f: _Fields, limits: Limits) -> TypingFrame:
    peer, group = f.one_of("recipientId")
    return TypingFrame(
        state=f.choice("state", TYPING_STATES), recipient_id=peer, group_id=group, ref=f.ref
    )


def _conversations(f: _Fields, limits: Limits) -> ConversationsFrame:
    limit = f.integer(
        "limit", low=1, high=CONVERSATIONS_LIMIT_MAX, default=CONVERSATIONS_LIMIT_DEFAULT
    )
    assert limit is not None
    return ConversationsFrame(limit=limit, ref=f.ref)


def _history(f: _Fields, limits: Limits) -> HistoryFrame:
    peer, group = f.one_of("peerId")
    before = f.integer("before", low=1)
    after = f.integer("after", low=0)
    if before is not None and after is not None:
        raise f.fail("after", "before and after exclude each other")
    limit = f.integer("limit", low=1, high=HISTORY_LIMIT_MAX, default=HISTORY_LIMIT_DEFAULT)
    assert limit is not None
    return HistoryFrame(
        peer_id=peer, group_id=group, before=before, after=after, limit=limit, ref=f.ref
    )


def _group_create(f: _Fields, limits: Limits) -> GroupCreateFrame:
    group_id = f.required_string("groupId")
    name = f.string("name", max_len=GROUP_NAME_MAX, min_len=0)
    members = f.id_list("members", max_items=limits.max_group_members) if "members" in f.obj else ()
    return GroupCreateFrame(
        group_id=group_id, name=group_id if name is None else name, members=members, ref=f.ref
    )


def _group_add(f: _Fields, limits: Limits) -> GroupAddFrame:
    return GroupAddFrame(
        group_id=f.required_string("groupId"),
        user_ids=f.id_list("userIds", max_items=limits.max_group_members),
        ref=f.ref,
    )


def _group_remove(f: _Fields, limits: Limits) -> GroupRemoveFrame:
    return GroupRemoveFrame(
        group_id=f.required_string("groupId"),
        user_ids=f.id_list("userIds", max_items=limits.max_group_members),
        ref=f.ref,
    )


def _group_leave(f: _Fields, limits: Limits) -> GroupLeaveFrame:
    return GroupLeaveFrame(group_id=f.required_string("groupId"), ref=f.ref)


def _ping(f: _Fields, limits: Limits) -> PingFrame:
    return PingFrame(ref=f.ref)


_PARSERS: dict[str, Callable[[_Fields, Limits], ClientFrame]] = {
    "auth": _auth,
    "message": _message,
    "receipt": _receipt,
    "status": _status,
    "presence": _presence,
    "typing": _typing,
    "conversations": _conversations,
    "history": _history,
    "group_create": _group_create,
    "group_add": _group_add,
    "group_remove": _group_remove,
    "group_leave": _group_leave,
    "ping": _ping,
}

CLIENT_FRAME_TYPES = tuple(_PARSERS)


# --- server frames --------------------------------------------------------------------------------


def _dumps(obj: dict[str, Any]) -> bytes:
    return orjson.dumps({k: v for k, v in obj.items() if v is not None})


def encode_auth_ok(user_id: str, device_id: str, session_id: str, server_time: str) -> bytes:
    return _dumps(
        {
            "type": "auth_ok",
            "userId": user_id,
            "deviceId": device_id,
            "sessionId": session_id,
            "serverTime": server_time,
        }
    )


def encode_error(
    code: str, message: str, *, ref: str | None = None, field: str | None = None
) -> bytes:
    return _dumps({"type": "error", "code": code, "message": message, "ref": ref, "field": field})


def encode_frame_error(exc: FrameError) -> bytes:
    return encode_error(exc.code, exc.message, ref=exc.ref, field=exc.field)


def message_dict(message: StoredMessage, status: str = "delivered") -> dict[str, Any]:
    """A stored message in the contract's message shape (delivery, history, conversations);
    absent optional fields are left out. Built field by field: it is on the hot path."""
    body: dict[str, Any] = {"type": "message", "id": message.id, "senderId": message.sender_id}
    if message.sender_name is not None:
        body["senderName"] = message.sender_name
    if message.sender_avatar is not None:
        body["senderAvatar"] = message.sender_avatar
    if message.recipient_id is not None:
        body["recipientId"] = message.recipient_id
    if message.group_id is not None:
        body["groupId"] = message.group_id
    body["text"] = message.text
    body["timestamp"] = message.client_timestamp or message.server_timestamp
    body["status"] = status
    body["seq"] = message.seq
    body["serverTimestamp"] = message.server_timestamp
    if message.meta is not None:
        body["meta"] = message.meta
    return body


def encode_message(message: StoredMessage) -> bytes:
    """The delivery frame of a message (status `delivered`, with seq and serverTimestamp)."""
    return orjson.dumps(message_dict(message))


def encode_receipt_sent(message: StoredMessage, timestamp: str) -> bytes:
    """To the sender once the message is durable: the same for a first send and a resend."""
    return encode_sent(message.id, message.recipient_id, message.group_id, message.seq, timestamp)


def encode_sent(
    message_id: str, peer_id: str | None, group_id: str | None, seq: int, timestamp: str
) -> bytes:
    """encode_receipt_sent from the fields (the hot path: no StoredMessage needed)."""
    if group_id is None:
        body: dict[str, Any] = {"type": "receipt", "id": message_id, "peerId": peer_id}
    else:
        body = {"type": "receipt", "id": message_id, "groupId": group_id}
    body["status"] = "sent"
    body["seq"] = seq
    body["timestamp"] = timestamp
    return orjson.dumps(body)


def encode_receipt_failed(
    message_id: str,
    reason: str,
    *,
    peer_id: str | None = None,
    group_id: str | None = None,
    field: str | None = None,
    detail: str | None = None,
) -> bytes:
    """A refused message: `reason` is rate_limited, forbidden, invalid, too_long, not_found or
    internal; `field` names the offending field for invalid/too_long; `message` says why."""
    return _dumps(
        {
            "type": "receipt",
            "id": message_id,
            "peerId": peer_id,
            "groupId": group_id,
            "status": "failed",
            "reason": reason,
            "field": field,
            "message": detail,
        }
    )


def encode_receipt_status(
    *,
    message_id: str | None,
    seq: int,
    status: str,
    user_id: str,
    timestamp: str,
    peer_id: str | None = None,
    group_id: str | None = None,
) -> bytes:
    """A delivered/read watermark: to a sender (`id` of its newest covered message, `userId` the
    reader, `peerId` the reader in 1:1 or `groupId`), or to the reader's other devices (`peerId`
    the other participant, `userId` the reader itself, no `id`)."""
    return _dumps(
        {
            "type": "receipt",
            "id": message_id,
            "peerId": peer_id,
            "groupId": group_id,
            "seq": seq,
            "status": status,
            "userId": user_id,
            "timestamp": timestamp,
        }
    )


def encode_status(
    user_id: str, status: str, timestamp: str, *, last_seen: str | None = None
) -> bytes:
    """Presence change of `user_id`: online/away/busy, or offline with `lastSeen`."""
    return _dumps(
        {
            "type": "status",
            "status": status,
            "userId": user_id,
            "timestamp": timestamp,
            "lastSeen": last_seen,
        }
    )


def encode_presence(
    users: Iterable[tuple[str, str, str | None]], *, ref: str | None = None
) -> bytes:
    """Answer to a presence query: (userId, status, lastSeen-or-None) per user asked for."""
    body: dict[str, Any] = {
        "type": "presence",
        "users": [{"userId": u, "status": s, "lastSeen": seen} for u, s, seen in users],
    }
    if ref is not None:
        body["ref"] = ref
    return orjson.dumps(body)


def encode_typing(user_id: str, state: str, *, group_id: str | None = None) -> bytes:
    return _dumps({"type": "typing", "userId": user_id, "state": state, "groupId": group_id})


def conversation_item(
    summary: ConversationSummary, *, group_name: str | None = None
) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if summary.group_id is not None:
        item["groupId"] = summary.group_id
        if group_name is not None:
            item["name"] = group_name
    else:
        item["peerId"] = summary.peer_id
    item["lastMessage"] = (
        message_dict(summary.last_message) if summary.last_message is not None else None
    )
    item["unread"] = summary.unread
    item["lastSeq"] = summary.last_seq
    item["readSeq"] = summary.read_seq
    item["updatedAt"] = summary.updated_at
    return item


def encode_conversations(
    items: list[dict[str, Any]], *, ref: str | None = None, has_more: bool = False
) -> bytes:
    """The conversation list; `hasMore: true` only when the list was cut short (by size)."""
    body: dict[str, Any] = {"type": "conversations"}
    if ref is not None:
        body["ref"] = ref
    body["items"] = items
    if has_more:
        body["hasMore"] = True
    return orjson.dumps(body)


def encode_history(
    messages: Sequence[StoredMessage],
    has_more: bool,
    *,
    peer_id: str | None = None,
    group_id: str | None = None,
    ref: str | None = None,
    statuses: Sequence[str] | None = None,
) -> bytes:
    """A history page; `statuses[i]` is the status of `messages[i]` (default: `delivered`)."""
    body: dict[str, Any] = {"type": "history"}
    if ref is not None:
        body["ref"] = ref
    if group_id is not None:
        body["groupId"] = group_id
    else:
        body["peerId"] = peer_id
    if statuses is None:
        body["messages"] = [message_dict(m) for m in messages]
    else:
        body["messages"] = [message_dict(m, s) for m, s in zip(messages, statuses, strict=True)]
    body["hasMore"] = has_more
    return orjson.dumps(body)


def encode_group(group: Group, *, event: str, ref: str | None = None) -> bytes:
    """A group's state after a change; `event` is create, add, remove or leave."""
    return _dumps(
        {
            "type": "group",
            "groupId": group.group_id,
            "name": group.name,
            "members": list(group.members),
            "createdBy": group.created_by,
            "event": event,
            "ref": ref,
        }
    )


def encode_pong(server_time: str, *, ref: str | None = None) -> bytes:
    return _dumps({"type": "pong", "ref": ref, "serverTime": server_time})
