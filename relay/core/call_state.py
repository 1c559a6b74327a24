"""One call's state (sans-IO): its phase, moved only by `CallState.handle(event)` through the
transition table `_TRANSITIONS` (h11's `_state.py` style). Each entry also names the call's
outcome when the event ends it, which is what the stored call record says:

    NEW --RING--> RINGING            (at least one callee device got the invite)
    NEW --BUSY--> ENDED busy         (the callee is in another call)
    NEW --UNAVAILABLE--> ENDED unavailable   (no callee device is connected)
    RINGING --ACCEPT--> ANSWERED
    RINGING --REJECT--> ENDED rejected
    RINGING --HANGUP | TIMEOUT | DROP--> ENDED missed   (caller gave up, nobody answered,
                                                          or a side's connection dropped)
    ANSWERED --HANGUP | DROP--> ENDED answered

ENDED is final: every event there, and every pair not listed, raises CallStateError (the core
checks the phase before it asks, so one is a bug in the core, never a client's doing).
`answered_at`/`ended_at` are monotonic seconds; the record's durationMs is their difference
(0 for a call never answered).
"""

from __future__ import annotations

import enum

from attrs import define

from relay.errors import RelayError


class CallStateError(RelayError):
    """A call was asked for a transition its phase does not have."""


class CallPhase(enum.Enum):
    NEW = "new"
    RINGING = "ringing"
    ANSWERED = "answered"
    ENDED = "ended"


class CallEvent(enum.Enum):
    RING = "ring"
    BUSY = "busy"
    UNAVAILABLE = "unavailable"
    ACCEPT = "accept"
    REJECT = "reject"
    HANGUP = "hangup"
    TIMEOUT = "timeout"
    DROP = "drop"


class Outcome(enum.Enum):
    """How a call ended, as its stored record says (`call.outcome`)."""

    ANSWERED = "answered"
    MISSED = "missed"
    REJECTED = "rejected"
    BUSY = "busy"
    UNAVAILABLE = "unavailable"


_P = CallPhase
_E = CallEvent
_O = Outcome

#: phase -> event -> (next phase, the outcome when the event ends the call)
_TRANSITIONS: dict[CallPhase, dict[CallEvent, tuple[CallPhase, Outcome | None]]] = {
    _P.NEW: {
        _E.RING: (_P.RINGING, None),
        _E.BUSY: (_P.ENDED, _O.BUSY),
        _E.UNAVAILABLE: (_P.ENDED, _O.UNAVAILABLE),
    },
    _P.RINGING: {
        _E.ACCEPT: (_P.ANSWERED, None),
        _E.REJECT: (_P.ENDED, _O.REJECTED),
        _E.HANGUP: (_P.ENDED, _O.MISSED),
        _E.TIMEOUT: (_P.ENDED, _O.MISSED),
        _E.DROP: (_P.ENDED, _O.MISSED),
    },
    _P.ANSWERED: {
        _E.HANGUP: (_P.ENDED, _O.ANSWERED),
        _E.DROP: (_P.ENDED, _O.ANSWERED),
    },
    _P.ENDED: {},
}


@define(slots=True)
class CallState:
    phase: CallPhase = CallPhase.NEW
    outcome: Outcome | None = None  # set exactly when phase is ENDED
    answered_at: float | None = None
    ended_at: float | None = None

    @property
    def ended(self) -> bool:
        return self.phase is CallPhase.ENDED

    def handle(self, event: CallEvent, now: float) -> CallPhase:
        """Move by the transition table at monotonic time `now`; the new phase."""
        try:
            phase, outcome = _TRANSITIONS[self.phase][event]
        except KeyError:
            raise CallStateError(f"call in {self.phase.value} cannot {event.value}") from None
        self.phase = phase
        if phase is CallPhase.ANSWERED:
            self.answered_at = now
        if outcome is not None:
            self.outcome = outcome
            self.ended_at = now
        return phase

    @property
    def duration_ms(self) -> int:
        """How long the call was answered, in whole milliseconds (0 if never)."""
        if self.answered_at is None or self.ended_at is None:
            return 0
        return max(0, round((self.ended_at - self.answered_at) * 1000))
