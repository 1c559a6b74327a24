"""Protocol v1 (sans-IO): validate client frames into typed values, encode server frames to JSON.

- relay.protocol.limits: the contract's limits and the configurable ones (Limits);
- relay.protocol.frames: the client frames as typed values;
- relay.protocol.parse: parse_client_frame and validate_message (client JSON -> values);
- relay.protocol.encode: the server frames (values -> JSON).
Every public name of those modules is importable from here.
"""

from __future__ import annotations

from relay.fastpath import encode_sent, message_dict
from relay.protocol.encode import (
    conversation_item,
    encode_auth_ok,
    encode_conversations,
    encode_error,
    encode_group,
    encode_history,
    encode_pong,
    encode_presence,
    encode_receipt_failed,
    encode_receipt_status,
    encode_status,
    encode_typing,
)
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
    StatusFrame,
    TypingFrame,
)
from relay.protocol.limits import (
    CONVERSATIONS_LIMIT_DEFAULT,
    CONVERSATIONS_LIMIT_MAX,
    FRAME_DEPTH_MAX,
    GROUP_NAME_MAX,
    HISTORY_LIMIT_DEFAULT,
    HISTORY_LIMIT_MAX,
    IDENT_MAX,
    MESSAGE_ID_MAX,
    META_DEPTH_MAX,
    PRESENCE_QUERY_MAX,
    RECEIPT_STATUSES,
    SEQ_MAX,
    SHORT_TEXT_MAX,
    TOKEN_MAX,
    TYPING_STATES,
    USER_STATUSES,
    Limits,
)
from relay.protocol.parse import (
    CLIENT_FRAME_TYPES,
    MessageRefused,
    parse_client_frame,
    validate_message,
)

__all__ = [
    "CLIENT_FRAME_TYPES",
    "CONVERSATIONS_LIMIT_DEFAULT",
    "CONVERSATIONS_LIMIT_MAX",
    "FRAME_DEPTH_MAX",
    "GROUP_NAME_MAX",
    "HISTORY_LIMIT_DEFAULT",
    "HISTORY_LIMIT_MAX",
    "IDENT_MAX",
    "MESSAGE_ID_MAX",
    "META_DEPTH_MAX",
    "PRESENCE_QUERY_MAX",
    "RECEIPT_STATUSES",
    "SEQ_MAX",
    "SHORT_TEXT_MAX",
    "TOKEN_MAX",
    "TYPING_STATES",
    "USER_STATUSES",
    "AuthFrame",
    "ClientFrame",
    "ConversationsFrame",
    "GroupAddFrame",
    "GroupCreateFrame",
    "GroupLeaveFrame",
    "GroupRemoveFrame",
    "HistoryFrame",
    "Limits",
    "MessageFrame",
    "MessageRefused",
    "PingFrame",
    "PresenceFrame",
    "ReceiptFrame",
    "StatusFrame",
    "TypingFrame",
    "conversation_item",
    "encode_auth_ok",
    "encode_conversations",
    "encode_error",
    "encode_group",
    "encode_history",
    "encode_pong",
    "encode_presence",
    "encode_receipt_failed",
    "encode_receipt_status",
    "encode_sent",
    "encode_status",
    "encode_typing",
    "message_dict",
    "parse_client_frame",
    "validate_message",
]
