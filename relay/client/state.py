"""ClientState: everything a chat UI shows, updated by relay frames and by the user's actions.

Sans-IO: no trio, no sockets. The connection feeds every decoded relay frame to `apply`, which
dispatches on its type (`_HANDLERS`) and returns the events it caused; frames the client owes the
relay (delivered receipts, unconfirmed messages) are taken with `take_acks` and `take_unsent`.
Each conversation is a ConversationLog (conversation.py); what is owed is in outbox.py; frames
are read and written by frames.py.

Invariants:
- A message is identified by (sender_id, id); it appears once however often it arrives
  (live, backlog, history, another device's copy), and `_where` names its conversation.
- A status only moves forward (pending -> sent -> delivered -> read); `failed` is terminal and is
  only reached from pending.
- The outbox holds this device's messages that have no `sent` or `failed` answer yet, in the
  order they were written, at most `max_outbox` of them; it is written again on every new
  connection with the same ids, so the relay stores each message once.
- `last_seq` of a conversation is the highest seq this client has seen in it; after a
  reconnect the gap above it is filled with `history after=last_seq`.
- Typing indicators live only while ONLINE: any other connection state clears them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import define, evolve, field

from relay.client.calls import CALL_FRAME_TYPES, CallBook
from relay.client.conversation import ConversationLog, MessageKey
from relay.client.files import FileInfo
from relay.client.frames import (
    Frame,
    frame_cid,
    parse_message,
    receipt_frame,
    typing_frame,
)
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
    Message,
    MessageAdded,
    MessageStatus,
    MessageUpdated,
    Presence,
    PresenceChanged,
    TypingChanged,
)
from relay.client.outbox import Acks, Outbox, new_message_id
from relay.errors import ClientError

#: A `start` is sent again at most this often while the user keeps typing.
TYPING_REFRESH = 3.0


@define
class ClientState:
    """The client's view of its user's conversations. See the module docstring for invariants."""

    user_id: str
    user_name: str | None = None
    user_avatar: str | None = None
    max_outbox: int = 1000
    connection: ConnectionState = ConnectionState.DISCONNECTED
    active: ConversationId | None = None  # the conversation the UI shows
    presence: dict[str, Presence] = field(factory=dict)
    groups: dict[str, GroupInfo] = field(factory=dict)
    _convs: dict[ConversationId, ConversationLog] = field(factory=dict)
    _where: dict[MessageKey, ConversationId] = field(factory=dict)
    _outbox: Outbox = field(factory=Outbox)
    _acks: Acks = field(factory=Acks)
    _typing_sent: dict[ConversationId, float] = field(factory=dict)
    _ranks: int = 0  # the last ConversationLog.ranked given
    calls: CallBook = field(factory=CallBook)  # this device's calls (relay.client.calls)

    # --- reading ----------------------------------------------------------------------------------

    def conversations(self) -> list[Conversation]:
        """Every known conversation, newest first."""
        convs = sorted(
            self._convs.values(), key=lambda c: (c.updated_at or "", c.ranked), reverse=True
        )
        return [c.snapshot() for c in convs]

    def conversation(self, cid: ConversationId) -> Conversation | None:
        conv = self._convs.get(cid)
        return None if conv is None else conv.snapshot()

    def messages(self, cid: ConversationId) -> list[Message]:
        """The conversation's known messages: stored ones by seq, then pending ones in send order."""
        conv = self._convs.get(cid)
        return [] if conv is None else conv.ordered()

    def active_messages(self) -> list[Message]:
        """The messages of the active conversation (see `messages`); [] when none is open."""
        return [] if self.active is None else self.messages(self.active)

    def find(self, message_id: str, sender_id: str | None = None) -> Message | None:
        """A known message by id (this user's own by default)."""
        key = (sender_id or self.user_id, message_id)
        cid = self._where.get(key)
        return None if cid is None else self._convs[cid].messages.get(key)

    @property
    def outbox(self) -> list[Message]:
        """This device's messages still waiting for the relay's `sent`, in send order."""
        return self._outbox.messages()

    def known_conversations(self) -> list[tuple[ConversationId, int]]:
        """(conversation, last seen seq) for every conversation with stored messages."""
        return [(c.cid, c.last_seq) for c in self._convs.values() if c.last_seq > 0]

    def oldest_seq(self, cid: ConversationId) -> int | None:
        conv = self._convs.get(cid)
        return None if conv is None else conv.oldest_seq()

    def typing_users(self, cid: ConversationId, now: float) -> list[str]:
        conv = self._convs.get(cid)
        return [] if conv is None else conv.typing_users(now)

    # --- the user's actions -----------------------------------------------------------------------

    def compose(
        self,
        cid: ConversationId,
        text: str,
        *,
        timestamp: str,
        message_id: str | None = None,
        meta: dict[str, Any] | None = None,
        attachments: tuple[FileInfo, ...] | None = None,
    ) -> tuple[Message, list[Event]]:
        """Add an outgoing message as `pending` and queue it in the outbox.

        Raises OutboxFull when `max_outbox` messages await confirmation, ClientError when the id
        is taken. Content checks are the relay's: it answers `failed` with the reason.
        """
        self._outbox.check_room(self.max_outbox)
        mid = message_id if message_id is not None else new_message_id()
        msg = Message(
            id=mid,
            sender_id=self.user_id,
            text=text,
            conversation=cid,
            status=MessageStatus.PENDING,
            outgoing=True,
            timestamp=timestamp,
            sender_name=self.user_name,
            sender_avatar=self.user_avatar,
            recipient_id=None if cid.is_group else cid.id,
            group_id=cid.id if cid.is_group else None,
            meta=meta,
            attachments=attachments,
        )
        if (self.user_id, mid) in self._where:  # ids are unique per sender, not per conversation
            raise ClientError(f"message id {mid!r} is already used")
        conv = self._conv(cid)
        self._outbox.put(msg)
        events = self._put(conv, msg, touch=timestamp)
        return msg, events

    def retry(self, message_id: str) -> tuple[Message, list[Event]]:
        """Queue a failed message again with the same id (e.g. after `rate_limited`)."""
        msg = self.find(message_id)
        if msg is None or msg.status is not MessageStatus.FAILED:
            raise ClientError(f"no failed message {message_id!r}")
        self._outbox.check_room(self.max_outbox)
        again = evolve(msg, status=MessageStatus.PENDING, reason=None)
        self._outbox.put(again)
        return again, self._put(self._conv(msg.conversation), again, replace=True)

    def mark_read(self, cid: ConversationId) -> tuple[Frame | None, list[Event]]:
        """Mark everything seen in the conversation read; the receipt to send, if any moved."""
        conv = self._convs.get(cid)
        if conv is None or conv.last_seq <= conv.read_seq:
            return None, []
        conv.read_seq = conv.last_seq
        return receipt_frame(cid, conv.last_seq, "read"), [ConversationChanged(conv.snapshot())]

    def typing_frame(self, cid: ConversationId, active: bool, now: float) -> Frame | None:
        """The typing frame to send now, or None when a `start` went out less than
        TYPING_REFRESH ago (or a `stop` when none is due)."""
        last = self._typing_sent.get(cid)
        if active:
            if last is not None and now - last < TYPING_REFRESH:
                return None
            self._typing_sent[cid] = now
        else:
            if last is None:
                return None
            del self._typing_sent[cid]
        return typing_frame(cid, active)

    # --- the connection ---------------------------------------------------------------------------

    def set_connection(
        self, state: ConnectionState, attempt: int = 0, reason: str | None = None
    ) -> list[Event]:
        events: list[Event] = []
        if state is ConnectionState.ONLINE:
            self._acks.new_connection()
        else:
            self._typing_sent.clear()
            events += self._expire_typing(None)
            events += self.calls.connection_lost()  # the relay ended them with the connection
        if state is not self.connection or attempt or reason:
            self.connection = state
            events.insert(0, ConnectionChanged(state, attempt, reason))
        return events

    def take_unsent(self, generation: int) -> list[Frame]:
        """Message frames of the outbox not yet written on connection `generation`, in order."""
        return self._outbox.take_unsent(generation)

    def has_unsent(self, generation: int) -> bool:
        """Whether `take_unsent(generation)` would return anything."""
        return self._outbox.has_unsent(generation)

    def take_acks(self) -> list[Frame]:
        """Delivered receipts owed to the relay (one per conversation, its highest seq)."""
        return self._acks.take()

    def expire_typing(self, now: float) -> list[Event]:
        return self._expire_typing(now)

    def _expire_typing(self, now: float | None) -> list[Event]:
        return [
            TypingChanged(conv.cid, user, False)
            for conv in self._convs.values()
            for user in conv.expire_typing(now)
        ]

    # --- relay frames -----------------------------------------------------------------------------

    def apply(self, frame: Frame, now: float = 0.0) -> list[Event]:
        """Update the state from one relay frame; returns the events it caused.

        Frames of unknown type and frames missing required fields change nothing.
        """
        try:
            handler = _HANDLERS.get(frame.get("type", ""))
            return [] if handler is None else handler(self, frame, now)
        except (KeyError, TypeError, ValueError):
            return []

    def _on_message(self, frame: Frame, now: float = 0.0) -> list[Event]:
        msg = parse_message(frame, self.user_id)
        if msg is None:
            return []
        conv = self._conv(msg.conversation)
        if not msg.outgoing and msg.seq is not None:
            self._acks.received(conv.cid, msg.seq)
        return self._put(conv, msg, touch=msg.server_timestamp)

    def _on_receipt(self, frame: Frame, now: float) -> list[Event]:
        status = MessageStatus(frame["status"])
        mid = frame.get("id")
        if status in (MessageStatus.SENT, MessageStatus.FAILED):
            return self._on_answer(frame, status, mid)
        # delivered / read watermarks
        cid = frame_cid(frame)
        if cid is None:
            return []
        seq = int(frame["seq"])
        conv = self._conv(cid)
        if frame.get("userId") == self.user_id:
            # this user read the conversation on another device
            if status is MessageStatus.READ and seq > conv.read_seq:
                conv.read_seq = seq
                return [ConversationChanged(conv.snapshot())]
            return []
        events: list[Event] = []
        if isinstance(mid, str):
            named = conv.messages.get((self.user_id, mid))
            if named is not None and named.seq is None:
                self._outbox.settle(mid)
                events += self._put(conv, evolve(named, seq=seq), replace=True)
        events += [MessageUpdated(m) for m in conv.reach(status, seq)]
        if events:
            events.append(ConversationChanged(conv.snapshot()))
        return events

    def _on_answer(self, frame: Frame, status: MessageStatus, mid: object) -> list[Event]:
        """The relay's `sent` or `failed` answer to one of this device's messages."""
        if not isinstance(mid, str):
            return []
        msg = self.find(mid)
        if msg is None:
            return []
        self._outbox.settle(mid)
        if status is MessageStatus.FAILED:
            if msg.status is not MessageStatus.PENDING:
                return []
            new = evolve(msg, status=status, reason=str(frame.get("reason") or "failed"))
        else:
            new = evolve(
                msg,
                seq=int(frame["seq"]),
                status=msg.status if msg.status.rank >= 1 else MessageStatus.SENT,
                server_timestamp=msg.server_timestamp or frame.get("timestamp"),
                reason=None,
            )
        return self._put(self._conv(msg.conversation), new, replace=True)

    def _on_conversations(self, frame: Frame, now: float) -> list[Event]:
        events: list[Event] = []
        items = frame["items"]
        top = self._ranks + len(items)  # the relay lists newest first
        self._ranks = top
        for index, item in enumerate(items):
            cid = frame_cid(item)
            if cid is None:
                continue
            conv = self._conv(cid)
            conv.ranked = top - index
            last = int(item.get("lastSeq") or 0)
            conv.base_last = last
            conv.base_read = int(item.get("readSeq") or 0)
            conv.base_unread = int(item.get("unread") or 0)
            conv.read_seq = max(conv.read_seq, conv.base_read)
            conv.last_seq = max(conv.last_seq, last)
            if item.get("updatedAt"):
                conv.updated_at = max(conv.updated_at or "", str(item["updatedAt"]))
            if isinstance(item.get("name"), str):
                conv.name = item["name"]
            if isinstance(item.get("members"), list):
                conv.members = tuple(str(m) for m in item["members"])
            lm = item.get("lastMessage")
            if isinstance(lm, dict):
                msg = parse_message(lm, self.user_id)
                if msg is not None and msg.conversation == cid:
                    events += [e for e in self._put(conv, msg) if isinstance(e, MessageAdded)]
            events.append(ConversationChanged(conv.snapshot()))
        return events

    def _on_history(self, frame: Frame, now: float) -> list[Event]:
        events: list[Event] = []
        for item in frame["messages"]:
            if isinstance(item, dict):
                events += self._on_message(item)
                events += self._history_status(item)
        return events

    def _history_status(self, item: Frame) -> list[Event]:
        """A history page gives this user's own messages the status the readers' watermarks
        have reached (only there: a live copy of an own message always says `delivered`)."""
        if item.get("senderId") != self.user_id or item.get("status") not in ("delivered", "read"):
            return []
        msg = self.find(str(item["id"]))
        status = MessageStatus(item["status"])
        if msg is None or msg.seq is None or not 0 <= msg.status.rank < status.rank:
            return []
        conv = self._convs[msg.conversation]
        new = self._store(conv, evolve(msg, status=status), msg)
        return [MessageUpdated(new), ConversationChanged(conv.snapshot())]

    def _on_status(self, frame: Frame, now: float) -> list[Event]:
        user = str(frame["userId"])
        p = Presence(user, str(frame["status"]), frame.get("lastSeen"))
        self.presence[user] = p
        return [PresenceChanged(p)]

    def _on_presence(self, frame: Frame, now: float) -> list[Event]:
        events: list[Event] = []
        for item in frame["users"]:
            p = Presence(str(item["userId"]), str(item["status"]), item.get("lastSeen"))
            if self.presence.get(p.user_id) != p:
                self.presence[p.user_id] = p
                events.append(PresenceChanged(p))
        return events

    def _on_typing(self, frame: Frame, now: float) -> list[Event]:
        user = str(frame["userId"])
        if user == self.user_id:
            return []
        gid = frame.get("groupId")
        cid = ConversationId.group(str(gid)) if gid else ConversationId.direct(user)
        conv = self._conv(cid)
        active = frame.get("state") == "start"
        was = user in conv.typing
        if active:
            conv.typing[user] = now
        else:
            conv.typing.pop(user, None)
        return [TypingChanged(cid, user, active)] if active != was else []

    def _on_group(self, frame: Frame, now: float) -> list[Event]:
        gid = str(frame["groupId"])
        info = GroupInfo(
            gid, str(frame.get("name") or gid), tuple(str(m) for m in frame["members"])
        )
        self.groups[gid] = info
        conv = self._conv(ConversationId.group(gid))
        conv.name = info.name
        conv.members = info.members
        return [GroupChanged(info), ConversationChanged(conv.snapshot())]

    def _on_error(self, frame: Frame, now: float) -> list[Event]:
        ref = frame.get("ref")
        code = str(frame.get("code") or "error")
        if isinstance(ref, str):
            msg = self._outbox.settle(ref)
            if msg is not None:
                failed = evolve(msg, status=MessageStatus.FAILED, reason=code)
                return self._put(self._conv(msg.conversation), failed, replace=True)
        return [
            ErrorReceived(
                code, str(frame.get("message") or ""), ref if isinstance(ref, str) else None
            )
        ]

    # --- internals --------------------------------------------------------------------------------

    def _conv(self, cid: ConversationId) -> ConversationLog:
        conv = self._convs.get(cid)
        if conv is None:
            conv = self._convs[cid] = ConversationLog(cid)
        return conv

    def _put(
        self,
        conv: ConversationLog,
        msg: Message,
        *,
        touch: str | None = None,
        replace: bool = False,
    ) -> list[Event]:
        """Insert or merge a message; returns MessageAdded/Updated and ConversationChanged."""
        key = (msg.sender_id, msg.id)
        old = conv.messages.get(key)
        if old is not None and not replace:
            # the same message again: keep the furthest status, learn a seq we lacked
            merged = old
            if old.seq is None and msg.seq is not None:
                merged = evolve(merged, seq=msg.seq, server_timestamp=msg.server_timestamp)
                if old.status is MessageStatus.PENDING:
                    merged = evolve(merged, status=MessageStatus.SENT)
                    self._outbox.settle(msg.id)
            if merged == old:
                return []
            msg = merged
        msg = self._store(conv, msg, old)
        stamp = msg.server_timestamp or touch
        if stamp and (conv.updated_at is None or stamp > conv.updated_at):
            conv.updated_at = stamp
        if msg.seq is not None and msg.seq > conv.last_seq:
            conv.last_seq = msg.seq
            self._ranks += 1
            conv.ranked = self._ranks
        events: list[Event] = [MessageUpdated(msg) if old is not None else MessageAdded(msg)]
        events.append(ConversationChanged(conv.snapshot()))
        return events

    def _store(self, conv: ConversationLog, msg: Message, old: Message | None) -> Message:
        stored = conv.store(msg, old)
        self._where[(stored.sender_id, stored.id)] = conv.cid
        return stored


#: Relay frame type -> the handler that applies it; other types change nothing.
_HANDLERS: dict[str, Callable[[ClientState, Frame, float], list[Event]]] = {
    "message": ClientState._on_message,
    "receipt": ClientState._on_receipt,
    "conversations": ClientState._on_conversations,
    "history": ClientState._on_history,
    "status": ClientState._on_status,
    "presence": ClientState._on_presence,
    "typing": ClientState._on_typing,
    "group": ClientState._on_group,
    "error": ClientState._on_error,
    **dict.fromkeys(CALL_FRAME_TYPES, lambda state, frame, now: state.calls.apply(frame)),
}
