"""ClientState: everything a chat UI shows, updated by relay frames and by the user's actions.

Sans-IO: no trio, no sockets. The connection feeds every decoded relay frame to `apply`, which
returns the events it caused; frames the client owes the relay (delivered receipts, unconfirmed
messages) are taken with `take_acks` and `take_unsent`.

Invariants:
- A message is identified by (sender_id, id); it appears once however often it arrives
  (live, backlog, history, another device's copy).
- A status only moves forward (pending -> sent -> delivered -> read); `failed` is terminal and is
  only reached from pending.
- The outbox holds this device's messages that have no `sent` or `failed` answer yet, in the
  order they were written, at most `max_outbox` of them; it is written again on every new
  connection with the same ids, so the relay stores each message once.
- `last_seq` of a conversation is the highest seq this client has seen in it; after a
  reconnect the gap above it is filled with `history after=last_seq`.
"""

from __future__ import annotations

import secrets
import time
from bisect import bisect_right, insort
from typing import Any

from attrs import define, evolve, field

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
    OutboxFull,
    Presence,
    PresenceChanged,
    TypingChanged,
)
from relay.errors import ClientError

Frame = dict[str, Any]
MessageKey = tuple[str, str]  # (sender_id, id)

#: A typing indicator not refreshed for this long is dropped locally (the relay sends `stop`
#: after its own 10 s lapse; this guards against a lost `stop`).
TYPING_LAPSE = 12.0
#: A `start` is sent again at most this often while the user keeps typing.
TYPING_REFRESH = 3.0


def new_message_id() -> str:
    """A fresh client-chosen id: milliseconds since the epoch and 64 random bits (30 chars)."""
    return f"{int(time.time() * 1000)}-{secrets.token_hex(8)}"


@define
class _Conv:
    cid: ConversationId
    messages: dict[MessageKey, Message] = field(factory=dict)
    last_seq: int = 0
    read_seq: int = 0
    # baseline from the relay's `conversations` answer: `unread` counted at `base_last`
    base_last: int = 0
    base_read: int = 0
    base_unread: int = 0
    updated_at: str | None = None
    # ClientState._ranks when the relay last put this conversation ahead (its newest stored
    # message arrived, or a `conversations` answer listed it): ties of `updated_at` (one
    # millisecond) are ordered by it, as the relay orders them by its own acceptance order
    ranked: int = 0
    name: str | None = None
    members: tuple[str, ...] = ()
    typing: dict[str, float] = field(factory=dict)  # user id -> local time of the last start
    # indexes kept by _store, so that each frame costs O(log n), not O(n)
    others: list[int] = field(factory=list)  # sorted seqs of messages from others
    mine: list[tuple[int, MessageKey]] = field(factory=list)  # (seq, key) of own, sorted
    unstored: dict[MessageKey, None] = field(factory=dict)  # own messages without seq, in order
    last_stored: Message | None = None  # the message with the highest seq
    # furthest status the peers' receipts gave this user's messages: status -> up to seq
    reached: dict[MessageStatus, int] = field(factory=dict)
    sorted_cache: list[Message] | None = None


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
    _convs: dict[ConversationId, _Conv] = field(factory=dict)
    _where: dict[MessageKey, ConversationId] = field(factory=dict)
    _outbox: dict[str, Message] = field(factory=dict)  # id -> message, insertion order = send order
    _written: dict[str, int] = field(factory=dict)  # outbox id -> generation it was last written in
    _acks_due: dict[ConversationId, int] = field(factory=dict)
    _acked: dict[ConversationId, int] = field(
        factory=dict
    )  # delivered receipts sent this connection
    _typing_sent: dict[ConversationId, float] = field(factory=dict)
    _ranks: int = 0  # the last _Conv.ranked given

    # --- reading ----------------------------------------------------------------------------------

    def conversations(self) -> list[Conversation]:
        """Every known conversation, newest first."""
        convs = sorted(
            self._convs.values(), key=lambda c: (c.updated_at or "", c.ranked), reverse=True
        )
        return [self._snapshot(c) for c in convs]

    def conversation(self, cid: ConversationId) -> Conversation | None:
        conv = self._convs.get(cid)
        return None if conv is None else self._snapshot(conv)

    def messages(self, cid: ConversationId) -> list[Message]:
        """The conversation's known messages: stored ones by seq, then pending ones in send order."""
        conv = self._convs.get(cid)
        if conv is None:
            return []
        if conv.sorted_cache is None:
            stored = sorted(
                (m for m in conv.messages.values() if m.seq is not None), key=lambda m: m.seq or 0
            )
            conv.sorted_cache = stored + [conv.messages[k] for k in conv.unstored]
        return list(conv.sorted_cache)

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
        return list(self._outbox.values())

    def known_conversations(self) -> list[tuple[ConversationId, int]]:
        """(conversation, last seen seq) for every conversation with stored messages."""
        return [(c.cid, c.last_seq) for c in self._convs.values() if c.last_seq > 0]

    def oldest_seq(self, cid: ConversationId) -> int | None:
        conv = self._convs.get(cid)
        if conv is None:
            return None
        firsts = [conv.others[0]] if conv.others else []
        if conv.mine:
            firsts.append(conv.mine[0][0])
        return min(firsts) if firsts else None

    def typing_users(self, cid: ConversationId, now: float) -> list[str]:
        conv = self._convs.get(cid)
        if conv is None:
            return []
        return sorted(u for u, t in conv.typing.items() if now - t < TYPING_LAPSE)

    # --- the user's actions -----------------------------------------------------------------------

    def compose(
        self,
        cid: ConversationId,
        text: str,
        *,
        timestamp: str,
        message_id: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> tuple[Message, list[Event]]:
        """Add an outgoing message as `pending` and queue it in the outbox.

        Raises OutboxFull when `max_outbox` messages await confirmation, ClientError when the id
        is taken. Content checks are the relay's: it answers `failed` with the reason.
        """
        if len(self._outbox) >= self.max_outbox:
            raise OutboxFull(f"{len(self._outbox)} messages await the relay already")
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
        )
        if (self.user_id, mid) in self._where:  # ids are unique per sender, not per conversation
            raise ClientError(f"message id {mid!r} is already used")
        conv = self._conv(cid)
        self._outbox[mid] = msg
        events = self._put(conv, msg, touch=timestamp)
        return msg, events

    def retry(self, message_id: str) -> tuple[Message, list[Event]]:
        """Queue a failed message again with the same id (e.g. after `rate_limited`)."""
        msg = self.find(message_id)
        if msg is None or msg.status is not MessageStatus.FAILED:
            raise ClientError(f"no failed message {message_id!r}")
        if len(self._outbox) >= self.max_outbox:
            raise OutboxFull(f"{len(self._outbox)} messages await the relay already")
        again = evolve(msg, status=MessageStatus.PENDING, reason=None)
        self._outbox[message_id] = again
        self._written.pop(message_id, None)
        return again, self._put(self._conv(msg.conversation), again, replace=True)

    def mark_read(self, cid: ConversationId) -> tuple[Frame | None, list[Event]]:
        """Mark everything seen in the conversation read; the receipt to send, if any moved."""
        conv = self._convs.get(cid)
        if conv is None or conv.last_seq <= conv.read_seq:
            return None, []
        conv.read_seq = conv.last_seq
        frame: Frame = {"type": "receipt", **cid.target(), "seq": conv.last_seq, "status": "read"}
        return frame, [ConversationChanged(self._snapshot(conv))]

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
        target = {"groupId": cid.id} if cid.is_group else {"recipientId": cid.id}
        return {"type": "typing", **target, "state": "start" if active else "stop"}

    # --- the connection ---------------------------------------------------------------------------

    def set_connection(
        self, state: ConnectionState, attempt: int = 0, reason: str | None = None
    ) -> list[Event]:
        events: list[Event] = []
        if state is ConnectionState.ONLINE:
            self._acked.clear()  # the relay sends again what it has no receipt for
        if state is not ConnectionState.ONLINE:
            self._typing_sent.clear()
            for conv in self._convs.values():
                for user in list(conv.typing):
                    del conv.typing[user]
                    events.append(TypingChanged(conv.cid, user, False))
        if state is not self.connection or attempt or reason:
            self.connection = state
            events.insert(0, ConnectionChanged(state, attempt, reason))
        return events

    def take_unsent(self, generation: int) -> list[Frame]:
        """Message frames of the outbox not yet written on connection `generation`, in order."""
        frames: list[Frame] = []
        for mid, msg in self._outbox.items():
            if self._written.get(mid) == generation:
                continue
            self._written[mid] = generation
            frames.append(_message_frame(msg))
        return frames

    def has_unsent(self, generation: int) -> bool:
        """Whether `take_unsent(generation)` would return anything. (Unwritten messages are
        always a suffix of the outbox: new ones are appended, all are written in order.)"""
        if not self._outbox:
            return False
        return self._written.get(next(reversed(self._outbox))) != generation

    def take_acks(self) -> list[Frame]:
        """Delivered receipts owed to the relay (one per conversation, its highest seq)."""
        frames: list[Frame] = []
        for cid, seq in self._acks_due.items():
            if seq > self._acked.get(cid, 0):
                self._acked[cid] = seq
                frames.append(
                    {"type": "receipt", **cid.target(), "seq": seq, "status": "delivered"}
                )
        self._acks_due.clear()
        return frames

    def expire_typing(self, now: float) -> list[Event]:
        events: list[Event] = []
        for conv in self._convs.values():
            for user, t in list(conv.typing.items()):
                if now - t >= TYPING_LAPSE:
                    del conv.typing[user]
                    events.append(TypingChanged(conv.cid, user, False))
        return events

    # --- relay frames -----------------------------------------------------------------------------

    def apply(self, frame: Frame, now: float = 0.0) -> list[Event]:
        """Update the state from one relay frame; returns the events it caused.

        Frames of unknown type and frames missing required fields change nothing.
        """
        kind = frame.get("type")
        try:
            if kind == "message":
                return self._on_message(frame)
            if kind == "receipt":
                return self._on_receipt(frame)
            if kind == "conversations":
                return self._on_conversations(frame)
            if kind == "history":
                return self._on_history(frame)
            if kind == "status":
                return self._on_status(frame)
            if kind == "presence":
                return self._on_presence(frame)
            if kind == "typing":
                return self._on_typing(frame, now)
            if kind == "group":
                return self._on_group(frame)
            if kind == "error":
                return self._on_error(frame)
        except (KeyError, TypeError, ValueError):
            return []
        return []

    def _on_message(self, frame: Frame) -> list[Event]:
        msg = self._parse_message(frame)
        if msg is None:
            return []
        conv = self._conv(msg.conversation)
        if not msg.outgoing and msg.seq is not None:
            due = self._acks_due.get(conv.cid, 0)
            if msg.seq > due:
                self._acks_due[conv.cid] = msg.seq
        return self._put(conv, msg, touch=msg.server_timestamp)

    def _on_receipt(self, frame: Frame) -> list[Event]:
        status = MessageStatus(frame["status"])
        mid = frame.get("id")
        if status in (MessageStatus.SENT, MessageStatus.FAILED):
            if not isinstance(mid, str):
                return []
            msg = self.find(mid)
            if msg is None:
                return []
            self._outbox.pop(mid, None)
            self._written.pop(mid, None)
            if status is MessageStatus.FAILED:
                if msg.status is not MessageStatus.PENDING:
                    return []
                new = evolve(msg, status=status, reason=str(frame.get("reason") or "failed"))
            else:
                seq = int(frame["seq"])
                new = evolve(
                    msg,
                    seq=seq,
                    status=msg.status if msg.status.rank >= 1 else MessageStatus.SENT,
                    server_timestamp=msg.server_timestamp or frame.get("timestamp"),
                    reason=None,
                )
            return self._put(self._conv(msg.conversation), new, replace=True)
        # delivered / read watermarks
        cid = _frame_cid(frame)
        if cid is None:
            return []
        seq = int(frame["seq"])
        conv = self._conv(cid)
        reader = frame.get("userId")
        if reader == self.user_id:
            # this user read the conversation on another device
            if status is MessageStatus.READ and seq > conv.read_seq:
                conv.read_seq = seq
                return [ConversationChanged(self._snapshot(conv))]
            return []
        events: list[Event] = []
        if isinstance(mid, str):
            named = conv.messages.get((self.user_id, mid))
            if named is not None and named.seq is None:
                self._outbox.pop(mid, None)
                events += self._put(conv, evolve(named, seq=seq), replace=True)
        before = conv.reached.get(status, 0)
        if seq > before:
            conv.reached[status] = seq
            if status is MessageStatus.READ:
                conv.reached[MessageStatus.DELIVERED] = max(
                    seq, conv.reached.get(MessageStatus.DELIVERED, 0)
                )
            lo = bisect_right(conv.mine, before, key=lambda t: t[0])
            hi = bisect_right(conv.mine, seq, key=lambda t: t[0])
            for _, key in conv.mine[lo:hi]:
                msg = conv.messages[key]
                if 0 <= msg.status.rank < status.rank:
                    self._store(conv, evolve(msg, status=status), msg)
                    events.append(MessageUpdated(conv.messages[key]))
        if events:
            events.append(ConversationChanged(self._snapshot(conv)))
        return events

    def _on_conversations(self, frame: Frame) -> list[Event]:
        events: list[Event] = []
        items = frame["items"]
        top = self._ranks + len(items)  # the relay lists newest first
        self._ranks = top
        for index, item in enumerate(items):
            cid = _frame_cid(item)
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
                msg = self._parse_message(lm)
                if msg is not None and msg.conversation == cid:
                    events += [e for e in self._put(conv, msg) if isinstance(e, MessageAdded)]
            events.append(ConversationChanged(self._snapshot(conv)))
        return events

    def _on_history(self, frame: Frame) -> list[Event]:
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
        return [MessageUpdated(new), ConversationChanged(self._snapshot(conv))]

    def _on_status(self, frame: Frame) -> list[Event]:
        user = str(frame["userId"])
        p = Presence(user, str(frame["status"]), frame.get("lastSeen"))
        self.presence[user] = p
        return [PresenceChanged(p)]

    def _on_presence(self, frame: Frame) -> list[Event]:
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

    def _on_group(self, frame: Frame) -> list[Event]:
        gid = str(frame["groupId"])
        info = GroupInfo(
            gid, str(frame.get("name") or gid), tuple(str(m) for m in frame["members"])
        )
        self.groups[gid] = info
        conv = self._conv(ConversationId.group(gid))
        conv.name = info.name
        conv.members = info.members
        return [GroupChanged(info), ConversationChanged(self._snapshot(conv))]

    def _on_error(self, frame: Frame) -> list[Event]:
        ref = frame.get("ref")
        code = str(frame.get("code") or "error")
        if isinstance(ref, str) and ref in self._outbox:
            msg = self._outbox.pop(ref)
            self._written.pop(ref, None)
            failed = evolve(msg, status=MessageStatus.FAILED, reason=code)
            return self._put(self._conv(msg.conversation), failed, replace=True)
        return [
            ErrorReceived(
                code, str(frame.get("message") or ""), ref if isinstance(ref, str) else None
            )
        ]

    # --- internals --------------------------------------------------------------------------------

    def _conv(self, cid: ConversationId) -> _Conv:
        conv = self._convs.get(cid)
        if conv is None:
            conv = self._convs[cid] = _Conv(cid)
        return conv

    def _parse_message(self, frame: Frame) -> Message | None:
        sender = frame.get("senderId")
        mid = frame.get("id")
        text = frame.get("text")
        if not isinstance(sender, str) or not isinstance(mid, str) or not isinstance(text, str):
            return None
        gid = frame.get("groupId")
        rid = frame.get("recipientId")
        if isinstance(gid, str):
            cid = ConversationId.group(gid)
        elif sender == self.user_id and isinstance(rid, str):
            cid = ConversationId.direct(rid)
        else:
            cid = ConversationId.direct(sender)
        outgoing = sender == self.user_id
        seq = frame.get("seq")
        return Message(
            id=mid,
            sender_id=sender,
            text=text,
            conversation=cid,
            status=MessageStatus.SENT if outgoing else MessageStatus.DELIVERED,
            outgoing=outgoing,
            seq=int(seq) if isinstance(seq, int) else None,
            timestamp=frame.get("timestamp"),
            server_timestamp=frame.get("serverTimestamp"),
            sender_name=frame.get("senderName"),
            sender_avatar=frame.get("senderAvatar"),
            recipient_id=rid if isinstance(rid, str) else None,
            group_id=gid if isinstance(gid, str) else None,
            meta=frame.get("meta") if isinstance(frame.get("meta"), dict) else None,
        )

    def _put(
        self, conv: _Conv, msg: Message, *, touch: str | None = None, replace: bool = False
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
                    self._outbox.pop(msg.id, None)
                    self._written.pop(msg.id, None)
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
        events.append(ConversationChanged(self._snapshot(conv)))
        return events

    def _store(self, conv: _Conv, msg: Message, old: Message | None) -> Message:
        """Put `msg` in place of `old` (None: new) and keep the indexes; returns what was stored
        (an own message whose seq is already covered by a peer's receipt gets that status)."""
        key = (msg.sender_id, msg.id)
        if msg.outgoing and msg.seq is not None and msg.status.rank >= 0:
            for status in (MessageStatus.READ, MessageStatus.DELIVERED):
                if msg.seq <= conv.reached.get(status, 0) and msg.status.rank < status.rank:
                    msg = evolve(msg, status=status)
                    break
        conv.messages[key] = msg
        self._where[key] = conv.cid
        conv.sorted_cache = None
        if old is None or old.seq is None:
            if msg.seq is not None:
                conv.unstored.pop(key, None)
                if msg.outgoing:
                    insort(conv.mine, (msg.seq, key), key=lambda t: t[0])
                else:
                    insort(conv.others, msg.seq)
            elif msg.outgoing:
                conv.unstored[key] = None
        last = conv.last_stored
        if msg.seq is not None and (
            last is None or msg.seq > (last.seq or 0) or (last.sender_id, last.id) == key
        ):
            conv.last_stored = msg
        return msg

    def _unread(self, conv: _Conv) -> int:
        others = conv.others
        read = conv.read_seq

        def after(seq: int) -> int:
            return len(others) - bisect_right(others, seq)

        if read >= conv.base_last:
            return after(read)
        # messages up to base_last that this client never loaded are known only by the count
        read_since_base = after(conv.base_read) - after(read)
        before = max(0, conv.base_unread - read_since_base)
        return before + after(conv.base_last)

    def _snapshot(self, conv: _Conv) -> Conversation:
        last: Message | None = conv.last_stored
        if conv.unstored:
            last = conv.messages[next(reversed(conv.unstored))]
        return Conversation(
            id=conv.cid,
            last_message=last,
            unread=self._unread(conv),
            last_seq=conv.last_seq,
            read_seq=conv.read_seq,
            updated_at=conv.updated_at,
            name=conv.name,
            members=conv.members,
            typing=tuple(sorted(conv.typing)),
        )


def _frame_cid(frame: Frame) -> ConversationId | None:
    gid = frame.get("groupId")
    if isinstance(gid, str):
        return ConversationId.group(gid)
    pid = frame.get("peerId")
    if isinstance(pid, str):
        return ConversationId.direct(pid)
    return None


def _message_frame(msg: Message) -> Frame:
    frame: Frame = {
        "type": "message",
        "id": msg.id,
        "senderId": msg.sender_id,
        "text": msg.text,
        "timestamp": msg.timestamp,
        "status": "pending",
    }
    if msg.sender_name is not None:
        frame["senderName"] = msg.sender_name
    if msg.sender_avatar is not None:
        frame["senderAvatar"] = msg.sender_avatar
    if msg.group_id is not None:
        frame["groupId"] = msg.group_id
    else:
        frame["recipientId"] = msg.recipient_id
    if msg.meta is not None:
        frame["meta"] = msg.meta
    return frame
