"""The call state machine (relay.core.call_state): every (phase, event) pair, the outcome each
ending pair records, and the answered duration."""

from __future__ import annotations

import itertools

import pytest

from relay.core.call_state import (
    _TRANSITIONS,
    CallEvent,
    CallPhase,
    CallState,
    CallStateError,
    Outcome,
)

#: the contract's table, written out: (phase, event) -> (next phase, outcome)
EXPECTED = {
    (CallPhase.NEW, CallEvent.RING): (CallPhase.RINGING, None),
    (CallPhase.NEW, CallEvent.BUSY): (CallPhase.ENDED, Outcome.BUSY),
    (CallPhase.NEW, CallEvent.UNAVAILABLE): (CallPhase.ENDED, Outcome.UNAVAILABLE),
    (CallPhase.RINGING, CallEvent.ACCEPT): (CallPhase.ANSWERED, None),
    (CallPhase.RINGING, CallEvent.REJECT): (CallPhase.ENDED, Outcome.REJECTED),
    (CallPhase.RINGING, CallEvent.HANGUP): (CallPhase.ENDED, Outcome.MISSED),
    (CallPhase.RINGING, CallEvent.TIMEOUT): (CallPhase.ENDED, Outcome.MISSED),
    (CallPhase.RINGING, CallEvent.DROP): (CallPhase.ENDED, Outcome.MISSED),
    (CallPhase.ANSWERED, CallEvent.HANGUP): (CallPhase.ENDED, Outcome.ANSWERED),
    (CallPhase.ANSWERED, CallEvent.DROP): (CallPhase.ENDED, Outcome.ANSWERED),
}

#: the shortest way to reach each phase from NEW
PATHS = {
    CallPhase.NEW: [],
    CallPhase.RINGING: [CallEvent.RING],
    CallPhase.ANSWERED: [CallEvent.RING, CallEvent.ACCEPT],
    CallPhase.ENDED: [CallEvent.RING, CallEvent.HANGUP],
}


def reach(phase: CallPhase) -> CallState:
    state = CallState()
    for event in PATHS[phase]:
        state.handle(event, 0.0)
    assert state.phase is phase
    return state


def test_the_table_is_the_contracts() -> None:
    table = {
        (phase, event): target
        for phase, events in _TRANSITIONS.items()
        for event, target in events.items()
    }
    assert table == EXPECTED
    assert set(_TRANSITIONS) == set(CallPhase)


@pytest.mark.parametrize(
    "phase,event", list(itertools.product(CallPhase, CallEvent)), ids=lambda v: v.value
)
def test_every_phase_and_event(phase: CallPhase, event: CallEvent) -> None:
    state = reach(phase)
    before = (state.outcome, state.answered_at, state.ended_at)
    if (phase, event) not in EXPECTED:
        with pytest.raises(CallStateError, match=f"{phase.value} cannot {event.value}"):
            state.handle(event, 5.0)
        assert state.phase is phase  # a refused event changes nothing
        assert (state.outcome, state.answered_at, state.ended_at) == before
        return
    target, outcome = EXPECTED[(phase, event)]
    assert state.handle(event, 5.0) is target
    assert state.phase is target
    assert state.ended is (target is CallPhase.ENDED)
    if outcome is not None:
        assert state.outcome is outcome and state.ended_at == 5.0
    else:
        assert state.outcome is None and state.ended_at is None


def test_an_answered_call_lasts_from_accept_to_its_end() -> None:
    state = CallState()
    state.handle(CallEvent.RING, 1.0)
    state.handle(CallEvent.ACCEPT, 3.0)
    assert state.duration_ms == 0  # not ended yet
    state.handle(CallEvent.HANGUP, 65.4321)
    assert state.outcome is Outcome.ANSWERED
    assert state.duration_ms == 62432


def test_a_call_never_answered_lasts_nothing() -> None:
    state = CallState()
    state.handle(CallEvent.RING, 1.0)
    state.handle(CallEvent.TIMEOUT, 31.0)
    assert state.outcome is Outcome.MISSED and state.duration_ms == 0
