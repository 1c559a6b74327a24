"""Client frames of protocol v1 (sans-IO): validate their JSON into the typed values of
relay.protocol.frames.

`parse_client_frame(payload, limits)` returns one frozen value per frame type or raises
FrameError carrying the contract's error code:
- not JSON, or JSON nesting more than FRAME_DEPTH_MAX objects and arrays -> `bad_json`; JSON
  that is not an object, or has no string `type` -> `bad_frame`;
- a `type` the contract does not define -> `unknown_type`;
- a field of the wrong type or out of range -> `invalid`, with `field` naming it (in an
  `auth` frame: `auth_failed`, with `field`, since the connection cannot go on). Every integer
  has both bounds (at most SEQ_MAX when the contract gives none).
It raises nothing but FrameError, for any payload.
`ref` on every error echoes the frame's `ref` (or, failing that, its `id`) when it is a string.
Unknown fields are ignored.

Message frames are refused with MessageRefused (a FrameError whose `ref` is the message id) once
their `id` is valid, so the caller can answer with a `failed` receipt instead of an error; its
`code` is the receipt's `reason` (`invalid`, or `too_long` for text over `max_text_chars` and
meta over `max_meta_bytes`; a meta nesting more than META_DEPTH_MAX levels is `invalid`). A message whose `id` itself is missing or invalid gets an
`invalid` error (field `id`): there is nothing a receipt could name.

A message's checks are made in one place, relay.fastpath.message_fault, under the limits this
layer chooses (`Limits.rules`): decode_message applies them to every message frame on the way
in, and validate_message turns the first one a message fails into its error (_REFUSALS).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from relay.errors import FrameError
from relay.fastpath import (
    ATTACHMENTS_MAX,
    E2E_BOXES_MAX,
    E2E_BYTES_MAX,
    E2E_SUITE,
    E2E_VERSION,
    MESSAGE_FAULTS,
    decode_message,
    message_fault,
)
from relay.protocol.calls import (
    parse_call_accept,
    parse_call_end,
    parse_call_invite,
    parse_call_reject,
    parse_call_signal,
)
from relay.protocol.fields import Fields
from relay.protocol.frames import (
    AuthFrame,
    ClientFrame,
    ConversationsFrame,
    GroupAddFrame,
    GroupCreateFrame,
    GroupLeaveFrame,
    GroupRemoveFrame,
    HistoryFrame,
    MessageFrame,
    PingFrame,
    PresenceFrame,
    ReceiptFrame,
    SearchFrame,
    StatusFrame,
    TypingFrame,
)
from relay.protocol.keys import parse_keys_get, parse_keys_publish
from relay.protocol.limits import (
    CONVERSATIONS_LIMIT_DEFAULT,
    CONVERSATIONS_LIMIT_MAX,
    GROUP_NAME_MAX,
    HISTORY_LIMIT_DEFAULT,
    HISTORY_LIMIT_MAX,
    IDENT_MAX,
    MESSAGE_ID_MAX,
    META_DEPTH_MAX,
    PRESENCE_QUERY_MAX,
    RECEIPT_STATUSES,
    SEARCH_CURSOR_MAX,
    SEARCH_LIMIT_DEFAULT,
    SEARCH_LIMIT_MAX,
    SEARCH_QUERY_MAX,
    SEARCH_TERMS_MAX,
    SEQ_MAX,
    SHORT_TEXT_MAX,
    TOKEN_MAX,
    TYPING_STATES,
    USER_STATUSES,
    Limits,
)
from relay.search.query import parse_query


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


# --- field readers --------------------------------------------------------------------------------


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
        # the common case, compiled: a MessageFrame of a message frame message_fault passes,
        # read without a dict; else the decoded JSON
        obj = decode_message(payload, limits.rules, MessageFrame)
    except orjson.JSONDecodeError as exc:
        raise FrameError("bad_json", f"not JSON: {exc}") from None
    except ValueError as exc:  # decode_message's: nested deeper than FRAME_DEPTH_MAX
        raise FrameError("bad_json", str(exc)) from None
    if obj.__class__ is MessageFrame:
        return obj
    if obj.__class__ is not dict:
        raise FrameError("bad_frame", "a frame must be a JSON object")
    kind = obj.get("type")
    ref = _ref_of(obj)
    if not isinstance(kind, str):
        raise FrameError("bad_frame", "a frame needs a string `type`", ref=ref)
    parser = _PARSERS.get(kind)
    if parser is None:
        raise FrameError("unknown_type", f"unknown frame type {kind!r}", ref=ref)
    try:
        return parser(Fields(obj, ref), limits)
    except FrameError as exc:
        if kind == "auth" and exc.code == "invalid":
            # an auth frame the relay cannot accept is a failed authentication (close 1008)
            raise FrameError("auth_failed", exc.message, ref=ref, field=exc.field) from None
        raise


def _auth(f: Fields, limits: Limits) -> AuthFrame:
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


# --- message --------------------------------------------------------------------------------------

#: optional string fields of a message: (name, min length, max length), in message_fault's order
_MESSAGE_STRINGS = (
    ("recipientId", 1, IDENT_MAX),
    ("groupId", 1, IDENT_MAX),
    ("senderId", 1, IDENT_MAX),
    ("senderName", 0, SHORT_TEXT_MAX),
    ("senderAvatar", 0, SHORT_TEXT_MAX),
    ("timestamp", 0, SHORT_TEXT_MAX),
)
_ONE_TARGET = "exactly one of recipientId and groupId is required"

#: the answer to each of message_fault's faults, by its name: (code, field, why); `why` is
#: formatted with the Limits' max_text_chars and max_meta_bytes
_WHY: dict[str, tuple[str, str, str]] = {
    "id": ("invalid", "id", f"must be a string of 1-{MESSAGE_ID_MAX} characters"),
    **{f"{name}:type": ("invalid", name, "must be a string") for name, _, _ in _MESSAGE_STRINGS},
    **{
        f"{name}:length": ("invalid", name, f"must be {low}-{high} characters")
        for name, low, high in _MESSAGE_STRINGS
    },
    "recipientId:one_of": ("invalid", "recipientId", _ONE_TARGET),
    "text:type": ("invalid", "text", "must be a string"),
    "text:empty": ("invalid", "text", "must not be empty"),
    "text:long": ("too_long", "text", "longer than {max_text_chars} characters"),
    "meta:type": ("invalid", "meta", "must be an object"),
    "meta:deep": ("invalid", "meta", f"nests deeper than {META_DEPTH_MAX} objects and arrays"),
    "meta:long": ("too_long", "meta", "larger than {max_meta_bytes} bytes as JSON"),
    # an encrypted message (docs/PROTOCOL.md, "End-to-end encrypted messages")
    "e2e:type": ("invalid", "e2e", "must be an object of v, suite, senderDevice and boxes"),
    "e2e:text": ("invalid", "text", "an e2e message carries no text"),
    "e2e:v": ("invalid", "e2e", f"v must be {E2E_VERSION}"),
    "e2e:suite": ("invalid", "e2e", f"suite must be {E2E_SUITE!r}"),
    "e2e:senderDevice": ("invalid", "e2e", f"senderDevice must be 1-{IDENT_MAX} characters"),
    "e2e:boxes": (
        "invalid",
        "e2e",
        f"boxes must map 1-{E2E_BOXES_MAX} device ids to standard base64 strings",
    ),
    "e2e:long": ("too_long", "e2e", f"larger than {E2E_BYTES_MAX} bytes as JSON"),
    # a message carrying files (docs/PROTOCOL.md, "Attachments")
    "attachments:type": (
        "invalid",
        "attachments",
        f"must be 1-{ATTACHMENTS_MAX} objects each with a fileId string, and no e2e",
    ),
    # a call record (docs/PROTOCOL.md, "Calls") is written by the relay alone
    "call": ("invalid", "call", "only the relay writes call records; a message cannot carry one"),
}
#: _WHY of fault number k at k - 1 (a KeyError here: a fault of the fast path with no answer)
_REFUSALS = tuple(_WHY[name] for name in MESSAGE_FAULTS[1:])
_ID_FAULT = MESSAGE_FAULTS.index("id")
#: from this fault on, recipientId and groupId passed their checks: the receipt echoes them
_TARGET_CHECKED = MESSAGE_FAULTS.index("senderId:type")


def _message(f: Fields, limits: Limits) -> MessageFrame:
    return _message_frame(f.obj, f.obj.get("id"), f.ref, limits)


def validate_message(
    obj: Mapping[str, Any], limits: Limits, *, message_id: str, ref: str | None = None
) -> MessageFrame:
    """The contract's checks of a message whose `id` is valid; raises MessageRefused.

    Shared by client frames and the in-process publish API so both refuse the same things.
    """
    return _message_frame(obj, message_id, ref, limits)


def _message_frame(
    obj: Mapping[str, Any], ident: object, ref: str | None, limits: Limits
) -> MessageFrame:
    """The MessageFrame of the message `obj` with id `ident`, or the FrameError (for its id)
    or MessageRefused (for any other field) of the first check it fails."""
    fault = message_fault(obj, ident, limits.rules)
    if fault:
        raise _refusal(obj, ident, ref, fault, limits)
    assert isinstance(ident, str)  # message_fault checked it
    get = obj.get
    e2e = get("e2e")
    return MessageFrame(
        ident,
        obj["text"] if get("text") is not None else "",
        get("senderId"),
        get("recipientId"),
        get("groupId"),
        get("senderName"),
        get("senderAvatar"),
        get("timestamp"),
        get("meta"),
        ref,
        e2e,
        get("attachments"),
    )


def _refusal(
    obj: Mapping[str, Any], ident: object, ref: str | None, fault: int, limits: Limits
) -> FrameError:
    code, field, why = _REFUSALS[fault - 1]
    message = f"{field}: " + why.format(
        max_text_chars=limits.max_text_chars, max_meta_bytes=limits.max_meta_bytes
    )
    if fault == _ID_FAULT:
        return FrameError(code, message, ref=ref, field=field)
    assert isinstance(ident, str)  # it passed the first check
    echo = fault >= _TARGET_CHECKED
    return MessageRefused(
        code,
        message,
        message_id=ident,
        field=field,
        peer_id=obj.get("recipientId") if echo else None,
        group_id=obj.get("groupId") if echo else None,
    )


def _receipt(f: Fields, limits: Limits) -> ReceiptFrame:
    peer, group = f.one_of("peerId")
    seq = f.integer("seq", low=1, high=SEQ_MAX)
    if seq is None:
        raise f.fail("seq", "is required")
    status = f.choice("status", RECEIPT_STATUSES)
    return ReceiptFrame(seq=seq, status=status, peer_id=peer, group_id=group, ref=f.ref)


def _status(f: Fields, limits: Limits) -> StatusFrame:
    return StatusFrame(
        status=f.choice("status", USER_STATUSES), user_id=f.string("userId"), ref=f.ref
    )


def _presence(f: Fields, limits: Limits) -> PresenceFrame:
    return PresenceFrame(user_ids=f.id_list("userIds", max_items=PRESENCE_QUERY_MAX), ref=f.ref)


def _typing(f: Fields, limits: Limits) -> TypingFrame:
    peer, group = f.one_of("recipientId")
    return TypingFrame(
        state=f.choice("state", TYPING_STATES), recipient_id=peer, group_id=group, ref=f.ref
    )


def _conversations(f: Fields, limits: Limits) -> ConversationsFrame:
    limit = f.integer(
        "limit", low=1, high=CONVERSATIONS_LIMIT_MAX, default=CONVERSATIONS_LIMIT_DEFAULT
    )
    assert limit is not None
    return ConversationsFrame(limit=limit, ref=f.ref)


def _history(f: Fields, limits: Limits) -> HistoryFrame:
    peer, group = f.one_of("peerId")
    before = f.integer("before", low=1, high=SEQ_MAX)
    after = f.integer("after", low=0, high=SEQ_MAX)
    if before is not None and after is not None:
        raise f.fail("after", "before and after exclude each other")
    limit = f.integer("limit", low=1, high=HISTORY_LIMIT_MAX, default=HISTORY_LIMIT_DEFAULT)
    assert limit is not None
    return HistoryFrame(
        peer_id=peer, group_id=group, before=before, after=after, limit=limit, ref=f.ref
    )


def _group_create(f: Fields, limits: Limits) -> GroupCreateFrame:
    group_id = f.required_string("groupId")
    name = f.string("name", max_len=GROUP_NAME_MAX, min_len=0)
    members = f.id_list("members", max_items=limits.max_group_members) if "members" in f.obj else ()
    return GroupCreateFrame(
        group_id=group_id, name=group_id if name is None else name, members=members, ref=f.ref
    )


def _group_add(f: Fields, limits: Limits) -> GroupAddFrame:
    return GroupAddFrame(
        group_id=f.required_string("groupId"),
        user_ids=f.id_list("userIds", max_items=limits.max_group_members),
        ref=f.ref,
    )


def _group_remove(f: Fields, limits: Limits) -> GroupRemoveFrame:
    return GroupRemoveFrame(
        group_id=f.required_string("groupId"),
        user_ids=f.id_list("userIds", max_items=limits.max_group_members),
        ref=f.ref,
    )


def _group_leave(f: Fields, limits: Limits) -> GroupLeaveFrame:
    return GroupLeaveFrame(group_id=f.required_string("groupId"), ref=f.ref)


def _ping(f: Fields, limits: Limits) -> PingFrame:
    return PingFrame(ref=f.ref)


def _search(f: Fields, limits: Limits) -> SearchFrame:
    query = f.required_string("query", max_len=SEARCH_QUERY_MAX)
    terms = parse_query(query)
    if not terms.terms:
        raise f.fail("query", "has no word to search for (only spaces and punctuation)")
    if len(terms.terms) > SEARCH_TERMS_MAX:
        raise f.fail("query", f"has more than {SEARCH_TERMS_MAX} words and phrases")
    peer = f.string("peerId")
    group = f.string("groupId")
    if peer is not None and group is not None:
        raise f.fail("groupId", "peerId and groupId exclude each other")
    cursor = f.string("before", max_len=SEARCH_CURSOR_MAX)
    before = None
    if cursor is not None:
        if not (cursor.isascii() and cursor.isdigit()) or not 1 <= int(cursor) <= SEQ_MAX:
            raise f.fail("before", "must be a cursor from a search_result's `next`")
        before = int(cursor)
    limit = f.integer("limit", low=1, high=SEARCH_LIMIT_MAX, default=SEARCH_LIMIT_DEFAULT)
    assert limit is not None
    return SearchFrame(
        query=query,
        terms=terms,
        peer_id=peer,
        group_id=group,
        before=before,
        limit=limit,
        ref=f.ref,
    )


_PARSERS: dict[str, Callable[[Fields, Limits], ClientFrame]] = {
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
    # contract v2: calls (relay.protocol.calls)
    "call_invite": parse_call_invite,
    "call_accept": parse_call_accept,
    "call_reject": parse_call_reject,
    "call_end": parse_call_end,
    "call_signal": parse_call_signal,
    # contract v2: end-to-end encryption keys (relay.protocol.keys)
    "keys_publish": parse_keys_publish,
    "keys_get": parse_keys_get,
    "search": _search,
}

CLIENT_FRAME_TYPES = tuple(_PARSERS)
