"""Values the client library hands to applications: messages, conversations, presence, events.

Every value here is immutable; the client replaces a value when it changes and announces the
replacement as an event.
"""

from __future__ import annotations

import enum
from typing import Any

from attrs import frozen

from relay.client.calls import CallEvent, CallRecord
from relay.client.files import FileInfo
from relay.errors import ClientError


class OutboxFull(ClientError):
    """The outbox holds `max_outbox` unconfirmed messages already; the new one was not queued."""


class RequestFailed(ClientError):
    """The relay answered a request with an `error` frame (`code` is the contract's error code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ConnectionState(enum.Enum):
    """Where the client's link to the relay stands.

    CONNECTING: an attempt is under way. ONLINE: authenticated, traffic flows.
    OFFLINE: the link dropped or an attempt failed; another attempt is scheduled.
    DISCONNECTED: final; the attempts are spent, authentication was refused, or the client closed.
    """

    CONNECTING = "connecting"
    ONLINE = "online"
    OFFLINE = "offline"
    DISCONNECTED = "disconnected"


class MessageStatus(enum.Enum):
    """Delivery status of a message; PENDING < SENT < DELIVERED < READ, FAILED is terminal."""

    PENDING = "pending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {
    MessageStatus.PENDING: 0,
    MessageStatus.SENT: 1,
    MessageStatus.DELIVERED: 2,
    MessageStatus.READ: 3,
    MessageStatus.FAILED: -1,
}


@frozen(order=True)
class ConversationId:
    """A conversation seen from this user: a direct one with `id` = the peer's user id, or a
    group with `id` = the group id. `str()` gives `bob` or `#runners`."""

    kind: str  # "direct" | "group"
    id: str

    @classmethod
    def direct(cls, peer_id: str) -> ConversationId:
        return cls("direct", peer_id)

    @classmethod
    def group(cls, group_id: str) -> ConversationId:
        return cls("group", group_id)

    @classmethod
    def parse(cls, text: str) -> ConversationId:
        """`#g1` is group g1; anything else is the direct conversation with that user."""
        if text.startswith("#") and len(text) > 1:
            return cls.group(text[1:])
        return cls.direct(text)

    @property
    def is_group(self) -> bool:
        return self.kind == "group"

    def target(self) -> dict[str, str]:
        """The addressing fields of a frame for this conversation."""
        return {"groupId": self.id} if self.is_group else {"peerId": self.id}

    def __str__(self) -> str:
        return f"#{self.id}" if self.is_group else self.id


@frozen
class Message:
    """One message of a conversation. `seq` is None until the relay stored it."""

    id: str
    sender_id: str
    text: str
    conversation: ConversationId
    status: MessageStatus
    outgoing: bool  # sent by this user (from this device or another one)
    seq: int | None = None
    timestamp: str | None = None  # the sender's clock
    server_timestamp: str | None = None
    sender_name: str | None = None
    sender_avatar: str | None = None
    recipient_id: str | None = None
    group_id: str | None = None
    meta: dict[str, Any] | None = None
    reason: str | None = None  # why it failed
    # an encrypted message's e2e object (open it with relay.client.e2e.open_e2e); its text is
    # then "". {} in a conversation preview, which says only that the last message is encrypted
    e2e: dict[str, Any] | None = None
    #: the files it carries (text is "" when it has none): name, size, type and SHA-256 as the
    #: relay resolved them; RelayClient.download(file_id) reads one
    attachments: tuple[FileInfo, ...] | None = None
    #: the record of a call, on the message each call leaves in the 1:1 conversation (its
    #: text is then a short line such as "Missed audio call")
    call: CallRecord | None = None


@frozen
class Conversation:
    """A row of the conversation list, as a UI shows it."""

    id: ConversationId
    last_message: Message | None
    unread: int
    last_seq: int
    read_seq: int
    updated_at: str | None
    name: str | None = None  # group name
    members: tuple[str, ...] = ()  # group members (empty for direct)
    typing: tuple[str, ...] = ()  # users typing here now


@frozen
class Presence:
    user_id: str
    status: str  # online | offline | away | busy
    last_seen: str | None = None


@frozen
class GroupInfo:
    group_id: str
    name: str
    members: tuple[str, ...]


@frozen
class HistoryPage:
    conversation: ConversationId
    messages: tuple[Message, ...]  # oldest first
    has_more: bool


@frozen
class SearchResults:
    """A page of a search: the matching messages, newest first, each with the status the
    relay gave it; `next` is the cursor of the following page (None: this was the last)."""

    messages: tuple[Message, ...]
    has_more: bool
    next: str | None


# --- events -------------------------------------------------------------------------------------


@frozen
class ConnectionChanged:
    state: ConnectionState
    attempt: int = 0  # reconnection attempt number (0 = first connection or online)
    reason: str | None = None


@frozen
class MessageAdded:
    message: Message


@frozen
class MessageUpdated:
    """A known message changed (status, seq, failure)."""

    message: Message


@frozen
class ConversationChanged:
    conversation: Conversation


@frozen
class PresenceChanged:
    presence: Presence


@frozen
class TypingChanged:
    conversation: ConversationId
    user_id: str
    typing: bool


@frozen
class GroupChanged:
    group: GroupInfo


@frozen
class ErrorReceived:
    """An `error` frame that answered no request of this client."""

    code: str
    message: str
    ref: str | None = None


@frozen
class Lagged:
    """This subscriber fell behind and `dropped` events were discarded for it; the client's state
    is still complete and current — re-read it."""

    dropped: int


Event = (
    ConnectionChanged
    | MessageAdded
    | MessageUpdated
    | ConversationChanged
    | PresenceChanged
    | TypingChanged
    | GroupChanged
    | ErrorReceived
    | Lagged
    | CallEvent
)
