"""One connection's session (sans-IO): its phase, its identity and its delivery bookkeeping.

Phases move only through `Session.handle(event)`, by the transition table `_TRANSITIONS` (the
way h11's `_state.py` does it); an event that has no entry for the current phase is a bug in
the core and raises `SessionError`:

    AWAITING_AUTH --AUTH_BEGIN--> AUTHENTICATING --AUTH_OK--> ACTIVE
    AUTHENTICATING --AUTH_RETRY--> AWAITING_AUTH     (the store failed: the client may retry)
    any phase --CLOSE--> CLOSING                      (CLOSING is final; CLOSE is idempotent)

Device identity: a connection whose auth names a `deviceId` is that device: its delivery cursor
in the store is its own, so it gets exactly what it has not had delivered. A connection without
`deviceId` (the original clients) is the user's *anonymous device*: store device id "" — one
cursor shared by every such connection of that user. Its auth_ok carries a generated deviceId
("anon-<hex>") that names this connection only; a client that sends it back as `deviceId` on
its next auth gets a cursor of its own from then on (starting at the user's delivered watermark).

Delivery bookkeeping (the invariants the core keeps):
- `sent_upto[c]` is the highest seq of conversation c queued to this connection; nothing at or
  below it is queued again, so a device sees each conversation in seq order without repeats;
- `pending_marks[c]` (acks=false only) is the highest seq from others queued but not yet
  flushed to the socket, with its group id (and, for a live 1:1 delivery, the message: its
  sender is told at the flush, relay.core.marks); on flush it is handed to the delivery marks,
  on close it is dropped (those messages stay undelivered and come again with the next backlog);
- `backlog` is the backlog's state (relay.core.backlog) from auth_ok until the backlog is done,
  then None: while it is set, live messages from others are not delivered (the backlog brings
  them in seq order) and own messages from other devices wait in it.
"""

from __future__ import annotations

import enum
import secrets
from typing import TYPE_CHECKING

from attrs import define, field

from relay.errors import RelayError
from relay.store.base import StoredMessage

if TYPE_CHECKING:
    from relay.core.backlog_state import BacklogState

ANONYMOUS_DEVICE = ""
#: a delivery mark: (seq, group id, the message when its sender is told at the flush)
Mark = tuple[int, str | None, StoredMessage | None]


class SessionError(RelayError):
    """The core asked a session for a transition its phase does not have (a bug, never a
    client's doing)."""


class Phase(enum.Enum):
    AWAITING_AUTH = "awaiting_auth"
    AUTHENTICATING = "authenticating"
    ACTIVE = "active"
    CLOSING = "closing"


class Event(enum.Enum):
    AUTH_BEGIN = "auth_begin"  # an auth frame arrived; the authenticator is asked
    AUTH_RETRY = "auth_retry"  # the store failed during auth; another auth may follow
    AUTH_OK = "auth_ok"  # the user is authenticated and registered
    CLOSE = "close"  # the connection ends (by either side, or the core)


_TRANSITIONS: dict[Phase, dict[Event, Phase]] = {
    Phase.AWAITING_AUTH: {Event.AUTH_BEGIN: Phase.AUTHENTICATING, Event.CLOSE: Phase.CLOSING},
    Phase.AUTHENTICATING: {
        Event.AUTH_OK: Phase.ACTIVE,
        Event.AUTH_RETRY: Phase.AWAITING_AUTH,
        Event.CLOSE: Phase.CLOSING,
    },
    Phase.ACTIVE: {Event.CLOSE: Phase.CLOSING},
    Phase.CLOSING: {Event.CLOSE: Phase.CLOSING},
}


def new_session_id() -> str:
    return secrets.token_hex(12)


@define(slots=True)
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
    pending_marks: dict[str, Mark] = field(factory=dict)  # conversation -> its mark
    backlog: BacklogState | None = None

    @property
    def active(self) -> bool:
        return self.phase is Phase.ACTIVE

    @property
    def closing(self) -> bool:
        return self.phase is Phase.CLOSING

    def handle(self, event: Event) -> Phase:
        """Move by the transition table; the new phase."""
        try:
            phase = _TRANSITIONS[self.phase][event]
        except KeyError:
            raise SessionError(f"session in {self.phase.value} cannot {event.value}") from None
        self.phase = phase
        return phase

    def close(self) -> None:
        """The connection ends: CLOSING, and what was queued but not flushed is not marked
        delivered (it comes again with the next connection's backlog)."""
        self.phase = _TRANSITIONS[self.phase][Event.CLOSE]
        self.pending_marks.clear()

    def activate(
        self,
        user_id: str,
        backlog: BacklogState,
        *,
        device_id: str | None,
        acks: bool,
        user_name: str | None = None,
        user_avatar: str | None = None,
    ) -> None:
        """Authentication succeeded: the session acts as `user_id` on the named (or anonymous)
        device; its backlog starts (live messages from others wait for it)."""
        self.handle(Event.AUTH_OK)
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
        self.registered = True
        self.backlog = backlog

    def auth_expired(self, now: float) -> bool:
        """Still no `auth` frame at the deadline. One that arrived in time is not expired while
        the relay works on it (AUTHENTICATING): auth_timeout is the client's time to send it,
        and in a reconnect storm the relay's own queue would otherwise close clients that did
        (a 20,000-device storm lost 92 of them to 1008 this way)."""
        return self.phase is Phase.AWAITING_AUTH and now >= self.auth_deadline
