"""What the client owes the relay: unconfirmed messages (`Outbox`) and delivered receipts (`Acks`).

Sans-IO. A connection is named by its generation (1 for the first that reached `auth_ok`, 2 for
the next, ...); the writer asks for what is not yet written on the current one.

Invariants:
- The outbox holds this device's messages without a `sent` or `failed` answer, in the order they
  were composed; `check_room` keeps their number within the owner's limit.
- Each is written once per connection, in that order, and again on every later connection with
  the same id, so the relay stores it once. Unwritten messages are therefore always a suffix
  of the outbox.
- A delivered receipt is owed per conversation for its highest seq received; one already sent
  on this connection for that seq or a higher one is not sent again. A new connection forgets
  what was sent: the relay sends again whatever it holds no receipt for.
"""

from __future__ import annotations

import secrets
import time

from attrs import define, field

from relay.client.frames import Frame, message_frame, receipt_frame
from relay.client.model import ConversationId, Message, OutboxFull


def new_message_id() -> str:
    """A fresh client-chosen id: milliseconds since the epoch and 64 random bits (30 chars)."""
    return f"{int(time.time() * 1000)}-{secrets.token_hex(8)}"


@define
class Outbox:
    _pending: dict[str, Message] = field(factory=dict)  # id -> message, in send order
    _written: dict[str, int] = field(factory=dict)  # id -> generation it was last written on

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, message_id: str) -> bool:
        return message_id in self._pending

    def messages(self) -> list[Message]:
        return list(self._pending.values())

    def check_room(self, limit: int) -> None:
        """Raise OutboxFull when `limit` messages await the relay's answer."""
        if len(self._pending) >= limit:
            raise OutboxFull(f"{len(self._pending)} messages await the relay already")

    def put(self, msg: Message) -> None:
        """Queue `msg` (a retried id goes to the end and is written again)."""
        self._pending.pop(msg.id, None)
        self._written.pop(msg.id, None)
        self._pending[msg.id] = msg

    def settle(self, message_id: str) -> Message | None:
        """The relay answered the message: it leaves the outbox. Returns it, if it was there."""
        self._written.pop(message_id, None)
        return self._pending.pop(message_id, None)

    def take_unsent(self, generation: int) -> list[Frame]:
        """Message frames not yet written on connection `generation`, in order."""
        frames: list[Frame] = []
        for mid, msg in self._pending.items():
            if self._written.get(mid) == generation:
                continue
            self._written[mid] = generation
            frames.append(message_frame(msg))
        return frames

    def has_unsent(self, generation: int) -> bool:
        """Whether `take_unsent(generation)` would return anything (unwritten is a suffix)."""
        if not self._pending:
            return False
        return self._written.get(next(reversed(self._pending))) != generation


@define
class Acks:
    _due: dict[ConversationId, int] = field(factory=dict)  # highest seq received, not yet taken
    _sent: dict[ConversationId, int] = field(factory=dict)  # highest sent on this connection

    def received(self, cid: ConversationId, seq: int) -> None:
        if seq > self._due.get(cid, 0):
            self._due[cid] = seq

    def new_connection(self) -> None:
        self._sent.clear()

    def take(self) -> list[Frame]:
        """Delivered receipts owed to the relay (one per conversation, its highest seq)."""
        frames: list[Frame] = []
        for cid, seq in self._due.items():
            if seq > self._sent.get(cid, 0):
                self._sent[cid] = seq
                frames.append(receipt_frame(cid, seq, "delivered"))
        self._due.clear()
        return frames
