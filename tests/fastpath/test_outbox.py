"""The per-connection Outbox of relay.fastpath (whichever twin is selected)."""

from __future__ import annotations

from relay.fastpath import Outbox


def frame(tag: str, size: int = 10) -> bytes:
    return tag.encode() * size


def state(outbox: Outbox) -> tuple[int, int]:
    return outbox.pending_bytes, outbox.pending_frames


def test_take_returns_everything_in_order_and_empties() -> None:
    outbox = Outbox(1000, 10)
    assert outbox.push(b"one")
    assert outbox.push(b"two")
    assert outbox.push(b"three", droppable=True)
    assert state(outbox) == (11, 3)
    assert outbox.take() == b"onetwothree"
    assert state(outbox) == (0, 0)
    assert outbox.take() == b""


def test_take_of_a_single_frame_is_that_frame() -> None:
    outbox = Outbox(1000, 10)
    outbox.push(b"only")
    assert outbox.take() == b"only"


def test_bounded_by_bytes() -> None:
    outbox = Outbox(100, 100)
    assert outbox.push(frame("a", 60))
    assert outbox.push(frame("b", 40))  # exactly full
    assert not outbox.push(b"c")
    assert state(outbox) == (100, 2)
    assert outbox.take() == frame("a", 60) + frame("b", 40)
    assert outbox.push(b"c")


def test_bounded_by_frames() -> None:
    outbox = Outbox(10_000, 3)
    assert all(outbox.push(b"x") for _ in range(3))
    assert not outbox.push(b"y")
    assert state(outbox) == (3, 3)


def test_a_frame_larger_than_the_outbox_never_fits() -> None:
    outbox = Outbox(100, 10)
    assert not outbox.push(frame("z", 101))
    assert state(outbox) == (0, 0)


def test_droppable_accepted_up_to_half_full_by_bytes() -> None:
    outbox = Outbox(100, 100)
    assert outbox.push(frame("a", 50))  # exactly half: not over
    assert outbox.push(b"t", droppable=True)  # now 51 > 50: over half full
    assert not outbox.push(b"u", droppable=True)
    assert outbox.push(b"m")  # non-droppable frames still fit
    assert outbox.take() == frame("a", 50) + b"tm"


def test_droppable_refused_when_over_half_full_by_frames() -> None:
    outbox = Outbox(10_000, 4)
    assert outbox.push(b"1") and outbox.push(b"2")  # 2 of 4: exactly half
    assert outbox.push(b"t", droppable=True)
    assert not outbox.push(b"u", droppable=True)  # 3 of 4 queued
    assert state(outbox) == (3, 3)


def test_droppable_refused_when_it_does_not_fit() -> None:
    outbox = Outbox(100, 10)
    assert not outbox.push(frame("t", 101), droppable=True)
    assert state(outbox) == (0, 0)


def test_non_droppable_drops_droppable_oldest_first_only_as_needed() -> None:
    outbox = Outbox(100, 100)
    assert outbox.push(frame("t", 20), droppable=True)
    assert outbox.push(frame("m", 20))
    assert outbox.push(frame("u", 10), droppable=True)
    assert outbox.push(frame("v", 10), droppable=True)
    assert outbox.push(frame("n", 30))
    assert state(outbox) == (90, 5)
    # 30 more bytes: 20 too many; dropping "t" (20 bytes, the oldest droppable) is enough
    assert outbox.push(frame("o", 30))
    assert state(outbox) == (100, 5)
    assert outbox.take() == frame("m", 20) + frame("u", 10) + frame("v", 10) + frame(
        "n", 30
    ) + frame("o", 30)


def test_non_droppable_drops_several_droppable_when_needed() -> None:
    outbox = Outbox(100, 100)
    for tag in "tuv":
        assert outbox.push(frame(tag, 10), droppable=True)
    assert outbox.push(frame("m", 60))
    assert outbox.push(frame("n", 25))  # 115: drop "t" and "u" (20 bytes), keep "v"
    assert outbox.take() == frame("v", 10) + frame("m", 60) + frame("n", 25)


def test_non_droppable_drops_droppable_to_respect_the_frame_bound() -> None:
    outbox = Outbox(10_000, 3)
    assert outbox.push(b"t", droppable=True)
    assert outbox.push(b"m")
    assert outbox.push(b"n")
    assert outbox.push(b"o")
    assert outbox.take() == b"mno"


def test_refused_push_leaves_the_outbox_unchanged() -> None:
    outbox = Outbox(100, 100)
    assert outbox.push(frame("t", 10), droppable=True)
    assert outbox.push(frame("m", 80))
    # 10 droppable bytes cannot make room for 40 more
    assert not outbox.push(frame("n", 40))
    assert state(outbox) == (90, 2)
    assert outbox.take() == frame("t", 10) + frame("m", 80)


def test_unsend_puts_the_tail_back_in_front() -> None:
    outbox = Outbox(1000, 10)
    outbox.push(b"first")
    outbox.push(b"second")
    data = outbox.take()
    sent = 3
    outbox.push(b"third")
    outbox.unsend(data[sent:])
    assert state(outbox) == (len(data) - sent + 5, 2)
    assert outbox.take() == data[sent:] + b"third"


def test_unsend_of_nothing_changes_nothing() -> None:
    outbox = Outbox(1000, 10)
    outbox.unsend(b"")
    assert state(outbox) == (0, 0)
    assert outbox.take() == b""


def test_unsend_ignores_the_bounds() -> None:
    outbox = Outbox(10, 1)
    outbox.unsend(frame("r", 50))
    assert state(outbox) == (50, 1)
    assert outbox.take() == frame("r", 50)


def test_unsent_tail_is_never_dropped() -> None:
    outbox = Outbox(100, 100)
    outbox.unsend(frame("r", 40))
    assert outbox.push(frame("t", 10), droppable=True)
    assert outbox.push(frame("m", 60))  # 110: only "t" may go
    assert outbox.take() == frame("r", 40) + frame("m", 60)
    outbox.unsend(frame("r", 70))
    assert not outbox.push(frame("m", 40))
    assert state(outbox) == (70, 1)


def test_the_same_bytes_pushed_to_many_outboxes_are_shared_not_copied() -> None:
    outboxes = [Outbox(1000, 10) for _ in range(4)]
    message = b"\x81\x05hello"
    assert all(o.push(message) for o in outboxes)
    assert all(o.take() is message for o in outboxes)


def test_a_push_refused_by_one_outbox_leaves_the_others_alone() -> None:
    roomy, full, roomy2, tiny = Outbox(1000, 10), Outbox(1000, 1), Outbox(1000, 10), Outbox(5, 10)
    assert full.push(b"x")
    pushed = [o.push(b"message") for o in (roomy, full, roomy2, tiny)]
    assert pushed == [True, False, True, False]
    assert roomy.take() == b"message" and roomy2.take() == b"message"
    assert full.take() == b"x" and tiny.take() == b""


def test_a_droppable_frame_is_refused_only_by_the_outbox_over_half_full() -> None:
    busy, idle = Outbox(100, 100), Outbox(100, 100)
    assert busy.push(frame("m", 60))
    assert [o.push(b"typing", True) for o in (busy, idle)] == [False, True]
    assert busy.take() == frame("m", 60)
    assert idle.take() == b"typing"


def test_frames_queued_before_the_first_droppable_one_are_never_dropped() -> None:
    outbox = Outbox(100, 100)
    assert outbox.push(frame("a", 20))
    assert outbox.push(frame("b", 20))
    assert outbox.push(frame("t", 10), droppable=True)
    assert outbox.push(frame("c", 45))  # 95
    assert outbox.push(frame("d", 15))  # 110: only "t" may go, and it is enough
    assert outbox.take() == frame("a", 20) + frame("b", 20) + frame("c", 45) + frame("d", 15)
    assert not outbox.push(frame("e", 101))


def test_droppable_frames_after_a_take_and_an_unsend_keep_their_places() -> None:
    outbox = Outbox(100, 100)
    for _ in range(3):  # the outbox is reused flush after flush
        assert outbox.push(frame("t", 10), droppable=True)
        assert outbox.push(frame("m", 10))
        assert outbox.take() == frame("t", 10) + frame("m", 10)
    outbox.unsend(frame("r", 30))
    assert outbox.push(frame("q", 10))
    assert outbox.push(frame("t", 10), droppable=True)
    assert outbox.push(frame("u", 5), droppable=True)
    assert state(outbox) == (55, 4)
    assert outbox.push(frame("n", 55))  # 110: "t" (the oldest droppable) goes, "u" stays
    assert outbox.take() == frame("r", 30) + frame("q", 10) + frame("u", 5) + frame("n", 55)
    assert state(outbox) == (0, 0) and outbox.take() == b""


def test_push_all_queues_in_order_and_stops_at_the_first_that_does_not_fit() -> None:
    outbox = Outbox(100, 100)
    assert outbox.push_all([frame("a", 40), frame("b", 40)]) == 2
    assert outbox.push_all((frame("c", 10), frame("d", 30), frame("e", 5))) == 1  # d: 120 > 100
    assert state(outbox) == (90, 3)
    assert outbox.take() == frame("a", 40) + frame("b", 40) + frame("c", 10)
    assert outbox.push_all([]) == 0
    assert state(outbox) == (0, 0)


def test_push_all_is_never_droppable_and_makes_room_like_push() -> None:
    outbox = Outbox(100, 100)
    assert outbox.push(frame("t", 30), droppable=True)
    assert outbox.push(frame("a", 40))
    # 40 more do not fit beside the 70 queued: the droppable frame gives way, as for push
    assert outbox.push_all([frame("b", 40)]) == 1
    assert outbox.dropped == 1
    assert outbox.take() == frame("a", 40) + frame("b", 40)
