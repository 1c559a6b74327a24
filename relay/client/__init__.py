"""relay.client: a Trio client library for relay's protocol v1, and `relay chat` on top of it.

`RelayClient` (connection.py) keeps one WebSocket alive and a `ClientState` (state.py, sans-IO)
current; model.py holds the values and events they hand out.

Layout, by concern (sans-IO unless marked trio):
    model.py         values and events handed to applications
    frames.py        protocol v1 frames <-> values
    conversation.py  one conversation's messages, indexes, unread count
    outbox.py        what the client owes the relay: unconfirmed messages, delivered receipts
    state.py         ClientState: the frame-type dispatch table over the above
    backoff.py       ReconnectPolicy: attempts and delays
    lifecycle.py     the client object's phase enum and transition table
    events.py        (trio) event fan-out to subscribers, with Lagged
    outgoing.py      (trio) the writer's queue: control frames, requests matched by ref
    link.py          (trio) one WebSocket session: auth, reader, writer, resync, heartbeat
    connection.py    (trio) RelayClient: lifetime, the reconnect loop, the public methods
    chat.py          `relay chat`
"""

from relay.client.backoff import ReconnectPolicy
from relay.client.calls import (
    CallAccepted,
    CallEnded,
    CallInfo,
    CallInvited,
    CallRinging,
    CallSignalled,
)
from relay.client.connection import RelayClient
from relay.client.events import EventStream
from relay.client.files import FileInfo, FileRequestFailed
from relay.client.frames import now_iso
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
    SearchResults,
    TypingChanged,
)
from relay.client.state import ClientState
from relay.errors import ClientError, ConnectionLost

__all__ = [
    "CallAccepted",
    "CallEnded",
    "CallInfo",
    "CallInvited",
    "CallRinging",
    "CallSignalled",
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
    "FileInfo",
    "FileRequestFailed",
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
    "SearchResults",
    "TypingChanged",
    "now_iso",
]
