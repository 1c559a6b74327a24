"""One connection's session (sans-IO): awaiting_auth -> authenticating -> active -> closing.

Also defines the `Connection` protocol the shell implements (docs/ARCHITECTURE.md) and the core
talks back through.

Device identity: a connection whose auth names a `deviceId` is that device: its delivery cursor
in the store is its own, so it gets exactly what it has not had delivered. A connection without
`deviceId` (the original clients) is the user's *anonymous device*: store device id "" — one
cursor shared by every such connection of that user. Its auth_ok carries a generated deviceId
("anon-<hex>") that names this connection only; a client that sends it back as `deviceId` on
its next auth gets a cursor of its own from then on (starting at the user's delivered watermark).

Delivery bookkeeping per session (the invariants the service keeps):
- `sent_upto[c]` is the highest seq of conversation c queued to this connection; nothing at or
  below it is queued again, so a device sees each conversation in seq order without repeats;
- `pending_marks[c]` (acks=false only) is the highest seq from others queued but not yet
  flushed to the socket; on flush it is handed to the store, on close it is dropped (those
  messages stay undelivered and come again with the next connection's backlog);
- while `backlog_active`, messages from others are not delivered live (the backlog brings them
  in seq order); own messages from other devices wait in `held` and follow the backlog (one
  whose seq the backlog already passed is not sent live: `history` has it);
- the backlog never fills more than half the outbox: a fetched batch waits in `backlog_queue`
  and is fed on each flush, so a backlog larger than the outbox reaches a reading device.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from attrs import define, field

from relay.fastpath import Outbox

ANONYMOUS_DEVICE = ""


class Connection(Protocol):
    """A WebSocket as the core sees it; implemented by the shell (server.py)."""

    id: int
    remote: str
    path: str
    outbox: Outbox
    state: Any

    def send(self, frame: bytes, droppable: bool = False) -> bool:
        """Queue an encoded server frame; False when the outbox is full."""
        ...

    def close(self, code: int, reason: str = "") -> None:
        """Queue a close frame after what is queued, then end the connection (idempotent)."""
        ...

    def flush_soon(self) -> None:
        """Have what was pushed to `outbox` directly (relay.fastpath.fanout) written at the end
        of this tick (bytes pushed after a close frame are discarded by the shell)."""
        ...


class Phase(enum.Enum):
    AWAITING_AUTH = "awaiting_auth"
    AUTHENTICATING = "authenticating"
    ACTIVE = "active"
    CLOSING = "closing"


class BacklogQueue:
    """First in, first out: the fetched backlog messages of one session not yet queued.

    Holds no list while empty (every connection has one; an empty collections.deque costs
    about 600 bytes). Invariant: `_items` is None exactly when the queue is empty, and then
    `_head` is 0; otherwise `_items[_head:]` are the queued messages in order.
    """

    __slots__ = ("_head", "_items")

    def __init__(self) -> None:
        self._items: list[Any] | None = None
        self._head = 0

    def __len__(self) -> int:
        items = self._items
        return 0 if items is None else len(items) - self._head

    def __bool__(self) -> bool:
        return self._items is not None

    def __iter__(self) -> Iterator[Any]:
        items = self._items
        return iter(()) if items is None else iter(items[self._head :])

    def append(self, item: Any) -> None:
        if self._items is None:
            self._items = [item]
        else:
            self._items.append(item)

    def extend(self, items: Iterable[Any]) -> None:
        for item in items:
            self.append(item)

    def popleft(self) -> Any:
        items = self._items
        if items is None:
            raise IndexError("pop from an empty BacklogQueue")
        head = self._head
        item = items[head]
        head += 1
        if head == len(items):
            self._items = None
            self._head = 0
        else:
            items[head - 1] = None  # not kept alive by the queue once taken
            self._head = head
        return item

    def clear(self) -> None:
        self._items = None
        self._head = 0


def new_session_id() -> str:
    return secrets.token_hex(12)


@define
class Session:
    auth_deadline: float
    session_id: str = field(factory=new_session_id)
    phase: Phase = Phase.AWAITING_AUTH
    user_id: str = ""
    user_name: str | None = None
    user_avatar: str | None = None
    device_id: str = ""  # as announced in auth_ok
    store_device: str = ANONYMOUS_DEVICE  # the device key of the store's delivery cursor
    acks: bool = False
    registered: bool = False  # counted in the router and presence
    sent_upto: dict[str, int] = field(factory=dict)
    pending_marks: dict[str, tuple[int, str | None]] = field(factory=dict)  # conv -> (seq, group)
    backlog_active: bool = False
    backlog_running: bool = False
    backlog_skipped: bool = False
    backlog_waiting: bool = False
    backlog_need: dict[str, int] = field(factory=dict)
    # the fetched batch not yet queued: fed as the outbox drains (never over half of it)
    backlog_queue: BacklogQueue = field(factory=lambda: BacklogQueue())
    backlog_full: bool = False  # the last fetch returned a whole batch: more may follow
    backlog_fresh: bool = False  # the last fetch brought messages this connection lacked
    held: list[tuple[Any, bytes]] = field(factory=list)

    @property
    def active(self) -> bool:
        return self.phase is Phase.ACTIVE

    @property
    def closing(self) -> bool:
        return self.phase is Phase.CLOSING

    def activate(
        self,
        user_id: str,
        *,
        device_id: str | None,
        acks: bool,
        user_name: str | None = None,
        user_avatar: str | None = None,
    ) -> None:
        """Authentication succeeded: the session acts as `user_id` on the named (or anonymous)
        device; the backlog starts (live messages from others wait for it)."""
        self.user_id = user_id
        self.user_name = user_name
        self.user_avatar = user_avatar
        if device_id is None:
            self.device_id = f"anon-{self.session_id[:16]}"
            self.store_device = ANONYMOUS_DEVICE
        else:
            self.device_id = device_id
            self.store_device = device_id
        self.acks = acks
        self.phase = Phase.ACTIVE
        self.backlog_active = True

    def auth_expired(self, now: float) -> bool:
        return (
            self.phase in (Phase.AWAITING_AUTH, Phase.AUTHENTICATING) and now >= self.auth_deadline
        )
