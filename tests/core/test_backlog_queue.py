"""The session's backlog queue: first in, first out, and empty means empty (falsy, len 0)."""

from __future__ import annotations

import pytest

from relay.core.backlog_state import BacklogQueue, BacklogState


def test_backlog_queue_is_fifo_across_extends_and_pops() -> None:
    q = BacklogQueue()
    assert not q and len(q) == 0 and list(q) == []
    q.extend(["a", "b", "c"])
    assert q and len(q) == 3
    assert q.popleft() == "a"
    q.extend(["d"])
    q.append("e")
    assert list(q) == ["b", "c", "d", "e"] and len(q) == 4
    assert [q.popleft() for _ in range(4)] == ["b", "c", "d", "e"]
    assert not q and len(q) == 0
    with pytest.raises(IndexError):
        q.popleft()


def test_backlog_queue_clear_and_empty_extend() -> None:
    q = BacklogQueue()
    q.extend([])
    assert not q
    q.extend(iter([1, 2]))
    q.clear()
    assert not q and list(q) == []
    q.append(3)
    assert q.popleft() == 3 and not q


def test_every_backlog_gets_its_own_queue() -> None:
    a, b = BacklogState(), BacklogState()
    a.queue.append("m")
    assert not b.queue and len(a.queue) == 1
