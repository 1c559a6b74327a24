"""The core's state machines: every transition their tables allow, and refusal of the rest."""

from __future__ import annotations

import pytest

from relay.core.backlog_state import (
    _TRANSITIONS as BACKLOG_TRANSITIONS,
)
from relay.core.backlog_state import (
    BacklogError,
    BacklogEvent,
    BacklogPhase,
    BacklogState,
)
from relay.core.session import _TRANSITIONS as SESSION_TRANSITIONS
from relay.core.session import Event, Phase, Session, SessionError


def test_a_session_authenticates_then_closes() -> None:
    session = Session(auth_deadline=10.0)
    assert session.phase is Phase.AWAITING_AUTH and session.auth_expired(10.0)
    assert session.handle(Event.AUTH_BEGIN) is Phase.AUTHENTICATING
    assert not session.auth_expired(99.0)  # auth arrived in time: the relay's work is not timed
    session.activate("ann", BacklogState(), device_id=None, acks=False)
    assert session.active and session.registered and session.backlog is not None
    assert session.device_id.startswith("anon-") and session.store_device == ""
    assert not session.auth_expired(99.0)
    session.pending_marks["c"] = (1, None)
    session.close()
    assert session.closing and session.pending_marks == {}
    session.close()  # idempotent
    assert session.closing


def test_a_failed_store_during_auth_lets_the_client_retry() -> None:
    session = Session(auth_deadline=0.0)
    session.handle(Event.AUTH_BEGIN)
    assert session.handle(Event.AUTH_RETRY) is Phase.AWAITING_AUTH
    assert session.handle(Event.AUTH_BEGIN) is Phase.AUTHENTICATING


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("event", list(Event))
def test_the_session_table_is_the_only_way_to_move(phase: Phase, event: Event) -> None:
    session = Session(auth_deadline=0.0, phase=phase)
    allowed = SESSION_TRANSITIONS[phase].get(event)
    if allowed is None:
        with pytest.raises(SessionError):
            session.handle(event)
        assert session.phase is phase  # a refused event changes nothing
    else:
        assert session.handle(event) is allowed
    # CLOSE is allowed from everywhere and CLOSING is final
    assert SESSION_TRANSITIONS[phase][Event.CLOSE] is Phase.CLOSING
    assert set(SESSION_TRANSITIONS[Phase.CLOSING]) == {Event.CLOSE}


def test_activate_is_refused_before_auth_begins() -> None:
    with pytest.raises(SessionError):
        Session(auth_deadline=0.0).activate("ann", BacklogState(), device_id="d", acks=True)


@pytest.mark.parametrize("phase", list(BacklogPhase))
@pytest.mark.parametrize("event", list(BacklogEvent))
def test_the_backlog_table_is_the_only_way_to_move(
    phase: BacklogPhase, event: BacklogEvent
) -> None:
    backlog = BacklogState(phase=phase)
    allowed = BACKLOG_TRANSITIONS[phase].get(event)
    if allowed is None:
        with pytest.raises(BacklogError):
            backlog.handle(event)
        assert backlog.phase is phase
    else:
        assert backlog.handle(event) is allowed


def test_a_backlog_fetches_only_from_ready_or_waiting() -> None:
    fetching = {p for p, moves in BACKLOG_TRANSITIONS.items() if BacklogEvent.FETCH in moves}
    assert fetching == {BacklogPhase.READY, BacklogPhase.WAITING}
    # a batch that does not fit is fed as the outbox drains, then waits or goes again
    backlog = BacklogState()
    backlog.handle(BacklogEvent.FETCH)
    backlog.handle(BacklogEvent.FED_PART)
    assert backlog.handle(BacklogEvent.AGAIN) is BacklogPhase.READY
    backlog.handle(BacklogEvent.FETCH)
    assert backlog.handle(BacklogEvent.FAILED) is BacklogPhase.WAITING
