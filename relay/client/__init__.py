"""relay.client: a Trio client library for relay's protocol v1, and `relay chat` on top of it.

`RelayClient` (connection.py) keeps one WebSocket alive and a `ClientState` (state.py, sans-IO)
current; model.py holds the values and events they hand out.
"""

from relay.client.backoff import ReconnectPolicy
from relay.client.connection import EventStream, RelayClient, now_iso
from relay.client.model import (
    ConnectionChanged,
    ConnectionState,
    Conversation,
    ConversationChanged,
    ConversationId,
    ErrorReceived,
    Event,
    GroupChanged,
    GroupInfo,
    HistoryPage,
    Lagged,
    Message,
    MessageAdded,
    MessageStatus,
    MessageUpdated,
    OutboxFull,
    Presence,
    PresenceChanged,
    RequestFailed,
    TypingChanged,
)
from relay.client.state import ClientState
from relay.errors import ClientError, ConnectionLost

__all__ = [
    "ClientError",
    "ClientState",
    "ConnectionChanged",
    "ConnectionLost",
    "ConnectionState",
    "Conversation",
    "ConversationChanged",
    "ConversationId",
    "ErrorReceived",
    "Event",
    "EventStream",
    "GroupChanged",
    "GroupInfo",
    "HistoryPage",
    "Lagged",
    "Message",
    "MessageAdded",
    "MessageStatus",
    "MessageUpdated",
    "OutboxFull",
    "Presence",
    "PresenceChanged",
    "ReconnectPolicy",
    "RelayClient",
    "RequestFailed",
    "TypingChanged",
    "now_iso",
]
