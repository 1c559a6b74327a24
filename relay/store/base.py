"""The Store protocol: what the messaging core asks of durable state, and the values it trades.

Every implementation (memory, sqlite) passes the one shared suite in tests/store_suite.py, and
declares one append the core makes without awaiting (InlineAppend or QueuedAppend, below),
which the suite holds to append_many's answers.

Invariants every implementation keeps:
- `seq` counts from 1 within a conversation, with no gap and no reuse, in acceptance order.
- `(sender_id, id)` is an idempotency key: appending it again returns the stored message with
  `duplicate=True` and changes nothing.
- An `append_many` that returned has made its messages durable (for a durable store: committed).
  If it raises, none of the messages it did not return is stored.
- Watermarks only move forward: a mark at or below the current value changes nothing.
- `read` implies `delivered`: marking read at seq N also marks delivered at N.
- Watermarks never pass the conversation's last seq: a mark above it counts as the last seq, so a
  receipt for a seq not yet assigned cannot hide messages still to come.
- A user added to a group joins at its present: their watermarks (and device cursors) move up to
  the group's last seq; what was said before is history, not backlog and not unread. That seq is
  remembered as their join point: their watermarks speak only for the messages after it (so a
  newcomer never counts as having received or read what was said before they came).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

from attrs import frozen

from relay.search.query import SearchQuery

#: Conversation keys are opaque strings built only by these two functions.
#: 1:1 keys are length-prefixed so that no pair of user ids can collide.


def direct_conversation(a: str, b: str) -> str:
    """The key of the 1:1 conversation between users `a` and `b` (order does not matter)."""
    lo, hi = (a, b) if a <= b else (b, a)
    return f"d:{len(lo)}:{lo}:{hi}"


def direct_users(conversation: str) -> tuple[str, str] | None:
    """The two users of a 1:1 conversation key (direct_conversation's inverse), or None when
    `conversation` is not one."""
    if not conversation.startswith("d:"):
        return None
    size, sep, rest = conversation[2:].partition(":")
    if not sep or not size.isdigit():
        return None
    lo_len = int(size)
    if len(rest) < lo_len + 1 or rest[lo_len] != ":":
        return None
    return rest[:lo_len], rest[lo_len + 1 :]


def group_conversation(group_id: str) -> str:
    """The key of group `group_id`'s conversation."""
    return f"g:{group_id}"


class NewMessage(NamedTuple):
    """A message the core accepted for storing; exactly one of recipient_id/group_id is set.

    NewMessage, StoredMessage and Appended are NamedTuples, not frozen attrs classes: one of
    each is built per message on the hot path, and a frozen attrs __init__ costs several times
    a tuple's. They are immutable values all the same."""

    conversation: str
    id: str
    sender_id: str
    text: str
    server_timestamp: str
    recipient_id: str | None = None
    group_id: str | None = None
    sender_name: str | None = None
    sender_avatar: str | None = None
    client_timestamp: str | None = None
    meta: dict[str, Any] | None = None
    e2e: dict[str, Any] | None = None  # an encrypted message's e2e object; its text is ""
    #: the files it carries, each {fileId, name, size, mime, sha256} as resolved when it was
    #: accepted; its text is "" when it has none
    attachments: list[dict[str, Any]] | None = None
    #: a call record {callId, media, outcome, durationMs}: set only by the relay's calls
    #: (relay.core.calls), never from a client's frame
    call: dict[str, Any] | None = None

    def stored(self, seq: int) -> StoredMessage:
        """This message as stored with sequence number `seq` (its own copy of `meta`)."""
        return StoredMessage(
            conversation=self.conversation,
            seq=seq,
            id=self.id,
            sender_id=self.sender_id,
            text=self.text,
            server_timestamp=self.server_timestamp,
            recipient_id=self.recipient_id,
            group_id=self.group_id,
            sender_name=self.sender_name,
            sender_avatar=self.sender_avatar,
            client_timestamp=self.client_timestamp,
            meta=dict(self.meta) if self.meta is not None else None,
            e2e=self.e2e,
            attachments=self.attachments,
            call=self.call,
        )


class StoredMessage(NamedTuple):
    """A message as stored: a NewMessage plus its conversation sequence number."""

    conversation: str
    seq: int
    id: str
    sender_id: str
    text: str
    server_timestamp: str
    recipient_id: str | None = None
    group_id: str | None = None
    sender_name: str | None = None
    sender_avatar: str | None = None
    client_timestamp: str | None = None
    meta: dict[str, Any] | None = None
    e2e: dict[str, Any] | None = None  # stored and forwarded untouched; text is then ""
    attachments: list[dict[str, Any]] | None = None  # the files it carries (NewMessage's)
    call: dict[str, Any] | None = None  # a call record (NewMessage's)


class Appended(NamedTuple):
    """Result of appending one message: the stored message, and whether it was already there."""

    message: StoredMessage
    duplicate: bool


@frozen
class Group:
    group_id: str
    name: str
    members: tuple[str, ...]  # sorted, unique
    created_by: str
    created_at: str


@frozen
class ConversationSummary:
    """One row of a user's conversation list (newest first by `updated_at`)."""

    conversation: str
    peer_id: str | None  # set for 1:1
    group_id: str | None  # set for groups
    last_message: StoredMessage | None
    unread: int  # messages from others with seq > read_seq
    last_seq: int
    read_seq: int  # the user's read watermark in this conversation
    updated_at: str  # server timestamp of the last message (or creation, for an empty group)


@frozen
class Watermarks:
    """A user's watermarks in one conversation (0 = nothing yet)."""

    delivered_seq: int
    read_seq: int


class MessageRef(NamedTuple):
    """A message named by its place in a conversation and its id (what a receipt names)."""

    seq: int
    id: str


@frozen
class Coverage:
    """How far one reader's watermarks cover one sender's messages in one conversation:
    `delivered` / `read` name the sender's newest message at or below the reader's delivered /
    read watermark (and after the reader's join point); None when that covers none of them."""

    conversation: str
    group_id: str | None  # set for groups
    reader: str
    delivered: MessageRef | None
    read: MessageRef | None


@runtime_checkable
class Store(Protocol):
    """Durable state of the relay. All methods are async; none blocks the event loop."""

    async def open(self) -> None:
        """Prepare the store (create/migrate schema). Raises StoreUnavailable with a clear reason."""

    async def close(self) -> None:
        """Flush and release everything; idempotent."""

    # --- messages -------------------------------------------------------------------------------
    async def append_many(self, messages: Sequence[NewMessage]) -> list[Appended]:
        """Store messages in order, assigning seqs; idempotent on (sender_id, id). Durable on return.

        A store may also append without the caller awaiting: see InlineAppend and
        QueuedAppend below, which the core tests for once with isinstance."""

    async def history(
        self,
        conversation: str,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int = 50,
    ) -> tuple[list[StoredMessage], bool]:
        """A page of a conversation, oldest first, and whether more lie beyond it.

        `before=N`: the `limit` newest messages with seq < N (has_more: older ones exist).
        `after=N`: the `limit` oldest messages with seq > N (has_more: newer ones exist).
        Neither: the newest `limit` messages.
        """

    async def undelivered(
        self, user_id: str, device_id: str, *, limit: int = 1000
    ) -> list[StoredMessage]:
        """Messages to `user_id` from others that this device has not had delivered, oldest first
        (in acceptance order across conversations).

        A device is identified by (user_id, device_id); device_id "" is the user's anonymous device.
        A device with no cursor yet in a conversation starts at the user's delivered watermark
        there, and is owed besides every message accepted after it registered
        (`register_device`), whatever the user's other devices had delivered.
        """

    async def register_device(self, user_id: str, device_id: str) -> None:
        """The device connected: from now on it is owed every message accepted for `user_id`
        until it has them delivered itself (see `undelivered`). Idempotent: the first call
        counts. What was accepted before it is owed only as far as the user has not had it
        delivered on any device (a new device does not get the whole history)."""

    async def latest_by_sender(
        self, conversation: str, after_seq: int, upto_seq: int, exclude_sender: str
    ) -> list[StoredMessage]:
        """For each sender other than `exclude_sender` with messages in (after_seq, upto_seq]:
        that sender's newest such message. Used to address receipts to senders."""

    async def latest_by_sender_many(
        self, queries: Sequence[tuple[str, int, int, str]]
    ) -> list[list[StoredMessage]]:
        """latest_by_sender for each (conversation, after_seq, upto_seq, exclude_sender) of
        `queries`, in order, as one read."""

    async def last_seq(self, conversation: str) -> int:
        """The highest seq of the conversation, 0 when empty."""

    # --- watermarks -----------------------------------------------------------------------------
    async def mark_delivered(
        self, conversation: str, user_id: str, device_id: str, seq: int
    ) -> Watermarks:
        """Move the device cursor and the user's delivered watermark up to `seq` (forward only).
        Returns the user's watermarks before the call, so the caller can tell what moved."""

    async def mark_delivered_many(
        self, marks: Sequence[tuple[str, str, str, int]]
    ) -> list[Watermarks]:
        """mark_delivered for each (conversation, user_id, device_id, seq) of `marks`, in order,
        as one write: what calling it for each in turn returns. All are recorded or, on a
        failure, none."""

    async def mark_read(self, conversation: str, user_id: str, seq: int) -> Watermarks:
        """Move the user's read (and delivered) watermark up to `seq` (forward only).
        Returns the user's watermarks before the call."""

    async def member_watermarks(self, conversation: str) -> dict[str, Watermarks]:
        """The watermarks of every current participant of the conversation (both users of a 1:1,
        the members of a group), Watermarks(0, 0) for one without any; {} for no conversation."""

    async def coverage(self, sender_id: str, *, limit: int) -> list[Coverage]:
        """What the other participants' watermarks cover of `sender_id`'s messages.

        For each conversation of `sender_id`, most recently active first (the order of
        `conversations`), and each other current participant whose delivered watermark is past
        their join point, in user id order: a Coverage, left out when it covers no message of
        `sender_id`. At most `limit` such watermarks are examined (those covering nothing count
        too), so the work is bounded for any account; `limit` 0 examines none.
        """

    # --- conversation list ----------------------------------------------------------------------
    async def conversations(self, user_id: str, *, limit: int = 100) -> list[ConversationSummary]:
        """The user's conversations (1:1 and groups they belong to), newest first."""

    async def contacts(self, user_id: str) -> set[str]:
        """Everyone who shares a conversation with `user_id` (1:1 peers and fellow group members)."""

    # --- groups ---------------------------------------------------------------------------------
    async def create_group(self, group: Group) -> Group:
        """Create a group; raises Conflict when the id is taken."""

    async def get_group(self, group_id: str) -> Group | None: ...

    async def set_group_members(self, group_id: str, members: Sequence[str]) -> Group:
        """Replace the member list; raises NotFound for an unknown group."""

    # --- presence -------------------------------------------------------------------------------
    async def set_last_seen(self, user_id: str, timestamp: str) -> None: ...

    async def last_seen(self, user_ids: Sequence[str]) -> dict[str, str]:
        """Last-seen timestamps of the users that have one."""


#: QueuedAppend's completion callback: (results, None) once durable, or (None, error).
AppendDone = Callable[[list[Appended] | None, BaseException | None], None]


@runtime_checkable
class InlineAppend(Protocol):
    """A store whose append completes without waiting (MemoryStore): the core stores messages
    inline, in the shell's poller, as it reads them. Its other calls do not wait either, so
    the core sizes the work it hands one call to a slice of the event loop (delivery marks:
    relay.core.receipts.MARKS_PER_INLINE_WRITE)."""

    def append_now(self, messages: Sequence[NewMessage]) -> list[Appended]:
        """append_many made synchronously: the same results, the same invariants."""
        ...


@runtime_checkable
class QueuedAppend(Protocol):
    """A store whose append must wait for a commit (SqliteStore) but can be queued at once: the
    core queues a read's messages and answers them from the callback."""

    def has_room(self) -> bool:
        """Whether append_soon may be called now (the store is open and its queue has room);
        without room the core awaits append_many, which waits for room: the queue stays bounded."""
        ...

    def append_soon(self, messages: Sequence[NewMessage], on_done: AppendDone) -> None:
        """Queue an append_many; `on_done` runs in the Trio thread once it is durable or failed.
        Appends queued by one caller complete in the order they were queued."""
        ...


# --- end-to-end encryption keys (contract v2) ------------------------------------------------------


@frozen
class DeviceKeys:
    """One device's published end-to-end keys (base64 as the client sent them): its Ed25519
    identity key, its X25519 encryption key, and the identity key's signature of encKey. The
    relay stores them for others to fetch; it cannot check the signature's meaning, only its
    shape (relay.protocol), and never holds a private key."""

    user_id: str
    device_id: str
    identity_key: str
    enc_key: str
    signature: str
    updated_at: str


@runtime_checkable
class KeyStore(Protocol):
    """A store that keeps devices' end-to-end keys (keys_publish / keys_get). Optional: a relay
    over a store without it answers those frames with error `not_found`."""

    async def publish_keys(self, keys: DeviceKeys) -> None:
        """Store (or replace) the keys of (keys.user_id, keys.device_id). Durable on return."""
        ...

    async def device_keys(self, user_id: str) -> list[DeviceKeys]:
        """Every device of `user_id` that published keys, by device id."""
        ...


# --- webhooks (relay.webhooks) --------------------------------------------------------------------


class WebhookCandidate(NamedTuple):
    """A stored message the webhook scan has not decided yet, with its `position`: the store's
    acceptance order across conversations (what `undelivered` orders by), increasing."""

    position: int
    message: StoredMessage


@frozen
class OutboxEvent:
    """A webhook event waiting for its delivery. The store keeps it as it is given and never
    reads `body` (the event's JSON object, as the receiver gets it)."""

    id: str
    body: str
    created_at: float  # unix seconds: when the event was made; its age decides its expiry
    next_at: float  # unix seconds: not sent before then
    attempts: int  # deliveries tried and failed so far


@runtime_checkable
class WebhookOutbox(Protocol):
    """A store that keeps webhook events (relay.webhooks), so that a restart loses none.

    Two parts, both durable in a durable store:
    - a cursor over the stored messages in acceptance order: the scan reads the messages after
      it (`webhook_candidates`), decides which recipients must be told, and in ONE write adds
      those events and moves the cursor past them (`webhook_advance`). A message committed
      before a crash is after the cursor until that write, so the scan finds it again at the
      next start: an event is never lost between the `sent` receipt and its delivery;
    - the pending events, by id: added by `webhook_advance`, read when due (`webhook_due`),
      removed or rescheduled once an attempt ended (`webhook_settle`).

    Invariants: the cursor only moves forward; an event id is pending at most once (adding an id
    already pending keeps the pending one); at most `max_pending` events are pending after a
    `webhook_advance`, the oldest (by created_at, then id) dropped first.

    One scan and one sender per store: a store shared by several nodes must let one node at a
    time scan (e.g. a lock on the cursor row for the read-decide-advance round) and claim the
    due events it sends (e.g. FOR UPDATE SKIP LOCKED), or events are made and sent twice
    (harmless for receivers that dedupe by id, but wasteful)."""

    async def webhook_start(self) -> None:
        """Place the cursor at the newest stored message if it was never placed (turning
        webhooks on does not replay the history); otherwise nothing. Idempotent."""
        ...

    async def webhook_candidates(self, *, limit: int) -> list[WebhookCandidate]:
        """The stored messages after the cursor, in acceptance order, at most `limit`
        ([] before webhook_start)."""
        ...

    async def webhook_advance(
        self, position: int, events: Sequence[OutboxEvent], *, max_pending: int
    ) -> int:
        """One write: add `events` (ids already pending are left as they are), move the cursor
        up to `position` (never back), then drop the oldest pending events beyond
        `max_pending`. Returns how many were dropped."""
        ...

    async def webhook_due(self, now: float, *, limit: int) -> list[OutboxEvent]:
        """Pending events with next_at <= now, oldest created first, at most `limit`."""
        ...

    async def webhook_settle(
        self, removed: Sequence[str], retried: Sequence[tuple[str, float]]
    ) -> None:
        """One write after a delivery attempt: remove the `removed` ids (delivered or given
        up); for each (id, next_at) of `retried`, count a failed attempt and set its next_at.
        Ids not pending are ignored."""
        ...

    async def webhook_pending(self) -> tuple[int, float | None]:
        """How many events are pending, and the earliest next_at among them (None: none)."""


class SearchPage(NamedTuple):
    """One page of search results: the messages, newest first, each with its acceptance
    position (`positions[i]` is `messages[i]`'s), and whether more (older) ones match. A
    position is the cursor of a next page: `before=p` holds the matches accepted before p."""

    messages: list[StoredMessage]
    positions: list[int]
    has_more: bool

    @property
    def next(self) -> int | None:
        """The cursor of the next page; None when there is none."""
        return self.positions[-1] if self.has_more and self.positions else None


#: a search page and the watermarks of the conversations of the user's own messages in it,
#: (conversation -> user -> Watermarks): what relay.core.search.SearchesMarked answers
Marked = tuple[SearchPage, dict[str, dict[str, Watermarks]]]


@runtime_checkable
class Searchable(Protocol):
    """A store that answers message searches (relay.search). Every implementation normalizes
    and matches with relay.search, so all give the same answers (tests/search/store_suite.py)."""

    async def search(
        self,
        user_id: str,
        query: SearchQuery,
        *,
        conversation: str | None = None,
        before: int | None = None,
        limit: int = 20,
    ) -> SearchPage:
        """The messages answering `query`, newest first (in acceptance order), at most `limit`,
        among those `user_id` may read: the 1:1 conversations they take part in and the groups
        they are a member of now, of a group only the messages accepted after they last joined
        it; only `conversation` when given; only those accepted before the cursor `before`.
        A message without text (an encrypted one) answers no query."""
        ...
