"""Delivery marks (relay.core.marks): what an acks=false device flushed, on its way to the
store, and whose senders are told at the flush."""

from __future__ import annotations

from relay.core.backlog_state import BacklogState
from relay.core.marks import DeliveryMarks
from relay.core.session import Event, Session
from relay.store.base import StoredMessage


def _reader(user: str = "bob") -> Session:
    session = Session(auth_deadline=10.0)
    session.handle(Event.AUTH_BEGIN)
    session.activate(user, BacklogState(), device_id="phone", acks=False)
    return session


def _message(seq: int) -> StoredMessage:
    return StoredMessage("d:ann:bob", seq, f"m{seq}", "ann", "hi", "2026-12-07T00:00:00.000Z")


def test_a_live_one_to_one_mark_tells_its_sender_once_per_tick() -> None:
    marks = DeliveryMarks()
    bob = _reader()
    bob.pending_marks["d:ann:bob"] = (1, None, _message(1))
    assert marks.note_flushed(bob) == [_message(1)]
    assert bob.pending_marks == {}
    # the same tick: the next is left to maintain()'s receipts
    bob.pending_marks["d:ann:bob"] = (2, None, _message(2))
    assert marks.note_flushed(bob) == []
    assert marks.told_upto("d:ann:bob", "bob") == 1
    marks.take()
    marks.done()
    bob.pending_marks["d:ann:bob"] = (3, None, _message(3))
    assert marks.note_flushed(bob) == [_message(3)]  # a new tick
    assert marks.told_upto("d:ann:bob", "bob") == 3


def test_a_queued_mark_does_not_keep_its_message() -> None:
    """Once told, a message is not needed by the store write: the queued mark drops it, so the
    message is freed at the flush instead of living (and being walked by the collector) until
    the next tick's write."""
    marks = DeliveryMarks()
    bob = _reader()
    bob.pending_marks["d:ann:bob"] = (4, None, _message(4))
    bob.pending_marks["g:team"] = (9, "team", None)  # a group's mark carries no message
    marks.note_flushed(bob)
    queued = marks.take()
    assert queued == {
        ("d:ann:bob", "bob", bob.store_device): (4, None, None),
        ("g:team", "bob", bob.store_device): (9, "team", None),
    }


def test_a_queued_mark_only_moves_forward() -> None:
    marks = DeliveryMarks()
    bob = _reader()
    bob.pending_marks["g:team"] = (5, "team", None)
    marks.note_flushed(bob)
    bob.pending_marks["g:team"] = (3, "team", None)  # older than what is queued
    marks.note_flushed(bob)
    assert marks.marked_upto(bob, "g:team") == 5
    bob.pending_marks["g:team"] = (7, "team", None)
    marks.note_flushed(bob)
    assert marks.marked_upto(bob, "g:team") == 7
    assert marks.unpersisted(bob)
    key = ("g:team", "bob", bob.store_device)
    taken = marks.take()
    assert taken == {key: (7, "team", None)}
    assert marks.marked_upto(bob, "g:team") == 7  # being written: the store may not know it
    del taken[key]  # written
    marks.done()
    assert not marks.unpersisted(bob) and marks.marked_upto(bob, "g:team") == 0
