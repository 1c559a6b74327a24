"""Lifecycle: where a RelayClient stands between construction and close, as one enum.

Sans-IO. The client's link to the relay has its own public state (model.ConnectionState: online,
offline, ...); this is the client object's, which decides what its methods may still do:

    IDLE ──enter──> RUNNING ──attempts spent / auth refused──> GAVE_UP
      │               │  ^                                        │
      │               │  └─────────────── reconnect() ────────────┘
      └───────────────┴──── aclose() / leaving the context ───> CLOSING ──> CLOSED

Invariants:
- Only the moves of `_TRANSITIONS` happen; any other is a bug and raises ClientError.
- `lost` (why the client's actions raise ConnectionLost) is set on reaching GAVE_UP or CLOSED and
  cleared on reaching RUNNING; a client that gave up and is then closed keeps the reason it gave
  up for (so while it is CLOSING its actions raise already).
- The connection manager runs only in RUNNING and CLOSING (CLOSING stops it).
"""

from __future__ import annotations

import enum

from attrs import define

from relay.errors import ClientError


class Phase(enum.Enum):
    IDLE = "idle"  # constructed, not entered: actions queue, nothing is written
    RUNNING = "running"  # the connection manager is connecting, online or waiting to retry
    GAVE_UP = "gave up"  # attempts spent or authentication refused; reconnect() starts over
    CLOSING = "closing"  # aclose() or leaving the context: the socket is being closed
    CLOSED = "closed"  # final


_TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.IDLE: frozenset({Phase.RUNNING, Phase.CLOSING}),
    Phase.RUNNING: frozenset({Phase.GAVE_UP, Phase.CLOSING}),
    Phase.GAVE_UP: frozenset({Phase.RUNNING, Phase.CLOSING}),
    Phase.CLOSING: frozenset({Phase.CLOSED}),
    Phase.CLOSED: frozenset(),
}


@define
class Lifecycle:
    phase: Phase = Phase.IDLE
    lost: str | None = None  # see the module docstring

    @property
    def closing(self) -> bool:
        """CLOSING or CLOSED: the client is going away for good."""
        return self.phase is Phase.CLOSING or self.phase is Phase.CLOSED

    def move(self, to: Phase, reason: str | None = None) -> None:
        """Go to `to`; `reason` is why the client is lost (GAVE_UP and CLOSED only)."""
        if to not in _TRANSITIONS[self.phase]:
            raise ClientError(f"a client cannot go from {self.phase.value} to {to.value}")
        self.phase = to
        if to is Phase.RUNNING:
            self.lost = None
        elif to is Phase.GAVE_UP or (to is Phase.CLOSED and self.lost is None):
            self.lost = reason
