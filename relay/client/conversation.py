"""ConversationLog: one conversation's messages as this client knows them, with its indexes.

Sans-IO; ClientState (state.py) owns one per conversation and is its only writer.

Invariants:
- `messages` maps (sender_id, id) to the one current value of each message.
- `others` holds the seqs of stored messages from other users, sorted; `mine` the (seq, key)
  of this user's stored messages, sorted by seq; `unstored` this user's messages without a seq,
  in send order. Every message is in exactly one of them, and `store` keeps them so: each
  frame costs O(log n), not O(n).
- `reached[status]` is the highest seq a peer's `delivered` / `read` watermark covered; an own
  message at or below it has at least that status (`read` implies `delivered`).
- `last_seq` is the highest seq seen (from messages or the relay's conversation list);
  `read_seq` only grows. The unread count is exact for loaded messages and, below `base_last`,
  taken from the relay's `conversations` answer.
"""

from __future__ import annotations

from bisect import bisect_right, insort

from attrs import define, evolve, field

from relay.client.model import Conversation, ConversationId, Message, MessageStatus

MessageKey = tuple[str, str]  # (sender_id, id)

#: A typing indicator not refreshed for this long is dropped locally (the relay sends `stop`
#: after its own 10 s lapse; this guards against a lost `stop`).
TYPING_LAPSE = 12.0


def _seq_of(entry: tuple[int, MessageKey]) -> int:
    return entry[0]


@define
class ConversationLog:
    cid: ConversationId
    messages: dict[MessageKey, Message] = field(factory=dict)
    last_seq: int = 0
    read_seq: int = 0
    # baseline from the relay's `conversations` answer: `unread` counted at `base_last`
    base_last: int = 0
    base_read: int = 0
    base_unread: int = 0
    updated_at: str | None = None
    # ClientState's rank counter when the relay last put this conversation ahead (its newest
    # stored message arrived, or a `conversations` answer listed it): ties of `updated_at` (one
    # millisecond) are ordered by it, as the relay orders them by its own acceptance order
    ranked: int = 0
    name: str | None = None
    members: tuple[str, ...] = ()
    typing: dict[str, float] = field(factory=dict)  # user id -> local time of the last start
    others: list[int] = field(factory=list)
    mine: list[tuple[int, MessageKey]] = field(factory=list)
    unstored: dict[MessageKey, None] = field(factory=dict)
    last_stored: Message | None = None  # the message with the highest seq
    reached: dict[MessageStatus, int] = field(factory=dict)
    _sorted: list[Message] | None = None  # `ordered()`, until the next store

    # --- reading ----------------------------------------------------------------------------------

    def ordered(self) -> list[Message]:
        """Stored messages by seq, then pending ones in send order."""
        if self._sorted is None:
            stored = sorted(
                (m for m in self.messages.values() if m.seq is not None), key=lambda m: m.seq or 0
            )
            self._sorted = stored + [self.messages[k] for k in self.unstored]
        return list(self._sorted)

    def oldest_seq(self) -> int | None:
        firsts = [self.others[0]] if self.others else []
        if self.mine:
            firsts.append(self.mine[0][0])
        return min(firsts) if firsts else None

    def typing_users(self, now: float) -> list[str]:
        return sorted(u for u, t in self.typing.items() if now - t < TYPING_LAPSE)

    def unread(self) -> int:
        others = self.others
        read = self.read_seq

        def after(seq: int) -> int:
            return len(others) - bisect_right(others, seq)

        if read >= self.base_last:
            return after(read)
        # messages up to base_last that this client never loaded are known only by the count
        read_since_base = after(self.base_read) - after(read)
        before = max(0, self.base_unread - read_since_base)
        return before + after(self.base_last)

    def snapshot(self) -> Conversation:
        last: Message | None = self.last_stored
        if self.unstored:
            last = self.messages[next(reversed(self.unstored))]
        return Conversation(
            id=self.cid,
            last_message=last,
            unread=self.unread(),
            last_seq=self.last_seq,
            read_seq=self.read_seq,
            updated_at=self.updated_at,
            name=self.name,
            members=self.members,
            typing=tuple(sorted(self.typing)),
        )

    # --- writing ----------------------------------------------------------------------------------

    def store(self, msg: Message, old: Message | None) -> Message:
        """Put `msg` in place of `old` (None: new) and keep the indexes; returns what was stored
        (an own message whose seq is already covered by a peer's receipt gets that status)."""
        key = (msg.sender_id, msg.id)
        if msg.outgoing and msg.seq is not None and msg.status.rank >= 0:
            for status in (MessageStatus.READ, MessageStatus.DELIVERED):
                if msg.seq <= self.reached.get(status, 0) and msg.status.rank < status.rank:
                    msg = evolve(msg, status=status)
                    break
        self.messages[key] = msg
        self._sorted = None
        if old is None or old.seq is None:
            if msg.seq is not None:
                self.unstored.pop(key, None)
                if msg.outgoing:
                    insort(self.mine, (msg.seq, key), key=_seq_of)
                else:
                    insort(self.others, msg.seq)
            elif msg.outgoing:
                self.unstored[key] = None
        last = self.last_stored
        if msg.seq is not None and (
            last is None or msg.seq > (last.seq or 0) or (last.sender_id, last.id) == key
        ):
            self.last_stored = msg
        return msg

    def reach(self, status: MessageStatus, seq: int) -> list[Message]:
        """A peer's `delivered` / `read` watermark up to `seq`: the own messages it moved on."""
        before = self.reached.get(status, 0)
        if seq <= before:
            return []
        self.reached[status] = seq
        if status is MessageStatus.READ:
            self.reached[MessageStatus.DELIVERED] = max(
                seq, self.reached.get(MessageStatus.DELIVERED, 0)
            )
        moved: list[Message] = []
        lo = bisect_right(self.mine, before, key=_seq_of)
        hi = bisect_right(self.mine, seq, key=_seq_of)
        for _, key in self.mine[lo:hi]:
            msg = self.messages[key]
            if 0 <= msg.status.rank < status.rank:
                moved.append(self.store(evolve(msg, status=status), msg))
        return moved

    def expire_typing(self, now: float | None) -> list[str]:
        """Forget typing indicators older than TYPING_LAPSE at `now` (None: every one); returns
        the users forgotten."""
        gone = [u for u, t in self.typing.items() if now is None or now - t >= TYPING_LAPSE]
        for user in gone:
            del self.typing[user]
        return gone
