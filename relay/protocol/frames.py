"""The client frames of protocol v1 as typed values: one frozen value per frame type, as
relay.protocol.parse_client_frame returns them."""

from __future__ import annotations

from typing import Any, NamedTuple

from attrs import frozen

from relay.protocol.calls import CallFrame
from relay.protocol.keys import KeysFrame
from relay.protocol.limits import (
    CONVERSATIONS_LIMIT_DEFAULT,
    HISTORY_LIMIT_DEFAULT,
    SEARCH_LIMIT_DEFAULT,
)
from relay.search.query import SearchQuery


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
    e2e: dict[str, Any] | None = None  # an encrypted message (text is then "")
    #: the files it carries: as the client sent them ([{fileId}], 1-10), then resolved by the
    #: pipeline to {fileId, name, size, mime, sha256}; text is "" when it has none
    attachments: list[dict[str, Any]] | None = None


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


@frozen
class SearchFrame:
    """A search of the user's conversations (or the one named by peer_id / group_id):
    `query` as the client wrote it, `terms` its parsed words and phrases (never empty),
    `before` a cursor (a store position) from an earlier answer."""

    query: str
    terms: SearchQuery
    peer_id: str | None = None
    group_id: str | None = None
    before: int | None = None
    limit: int = SEARCH_LIMIT_DEFAULT
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
    | CallFrame
    | KeysFrame
    | SearchFrame
)
