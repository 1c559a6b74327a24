"""The Orderer (sans-IO): deliveries from several nodes released per conversation and user in
seq order; a gap waits, then is filled from the store, never skipped."""

from __future__ import annotations

from collections.abc import Sequence

from store_suite import msg

from relay.cluster.ordering import Orderer
from relay.ports import Connection
from relay.rounds import Rounds
from relay.store.base import StoredMessage


def stored(seq: int) -> StoredMessage:
    return msg("a", "b", id=f"m{seq}").stored(seq)


def orderer(
    sent: dict[str, int] | None = None,
) -> tuple[Orderer, list[tuple[int, tuple[str, ...]]]]:
    """An Orderer whose users' devices were sent `sent[user]` of the conversation (absent: a
    device has nothing of it yet)."""
    released: list[tuple[int, tuple[str, ...]]] = []
    known = {} if sent is None else sent

    def release(m: StoredMessage, users: Sequence[str], exclude: Connection | None) -> None:
        released.append((m.seq, tuple(users)))
        for user in users:
            known[user] = max(known.get(user, 0), m.seq)

    def position(conversation: str, user: str) -> int | None:
        return known.get(user)

    return Orderer(release, gap_wait=0.25, position=position), released


def test_in_turn_deliveries_go_at_once_and_a_late_one_releases_those_held() -> None:
    o, released = orderer()
    o.offer(stored(1), ["b"], None, 0.0)
    o.offer(stored(3), ["b"], None, 0.0)  # 2 is still on its way from another node
    o.offer(stored(4), ["b"], None, 0.0)
    assert released == [(1, ("b",))]
    o.offer(stored(2), ["b"], None, 0.1)
    assert released == [(1, ("b",)), (2, ("b",)), (3, ("b",)), (4, ("b",))]
    assert o.due(10.0) == []


def test_a_gap_is_due_after_the_wait_and_filled_from_the_store_in_order() -> None:
    o, released = orderer()
    o.offer(stored(1), ["b"], None, 0.0)
    o.offer(stored(4), ["b"], None, 1.0)
    assert o.due(1.2) == []
    [(key, upto, top)] = o.due(1.25)
    assert (upto, top) == (1, 4)
    o.fill(key, [stored(2), stored(3), stored(4)], 4, 1.3)  # what the store has after seq 1
    assert [seq for seq, _ in released] == [1, 2, 3, 4]
    o.offer(stored(5), ["b"], None, 2.0)
    assert [seq for seq, _ in released] == [1, 2, 3, 4, 5]


def test_each_user_has_an_order_of_their_own() -> None:
    o, released = orderer()
    o.offer(stored(1), ["b", "c"], None, 0.0)
    o.offer(stored(2), ["b"], None, 0.0)  # c's copy of 2 comes from another channel later
    o.offer(stored(3), ["b", "c"], None, 0.0)
    assert released == [(1, ("b", "c")), (2, ("b",)), (3, ("b",))]
    o.offer(stored(2), ["c"], None, 0.0)
    assert released[3:] == [(2, ("c",)), (3, ("c",))]


def test_a_user_who_left_is_forgotten_with_what_was_held() -> None:
    o, released = orderer()
    o.offer(stored(1), ["b"], None, 0.0)
    o.offer(stored(3), ["b"], None, 0.0)
    o.forget_user("b")
    assert o.due(10.0) == [] and o.blind() == []
    fresh: dict[str, int] = {}  # b's new device has nothing of the conversation yet
    o.position = lambda conversation, user: fresh.get(user)
    o.offer(stored(7), ["b"], None, 11.0)  # back later: what b lacks before 7 is read first
    [(key, top)] = o.blind()
    assert top == 7 and released == [(1, ("b",))]
    o.fill(key, [stored(5), stored(6)], 7, 11.0)  # b's undelivered messages up to 7
    assert released == [(1, ("b",)), (5, ("b",)), (6, ("b",)), (7, ("b",))]


def test_a_member_added_again_starts_from_the_store_not_from_a_gap_read() -> None:
    # b was sent seq 1, removed (2-8 said while out), added again: the first delivery, 9, is
    # out of turn for b's devices; what they lack is read from the store's undelivered
    # messages, which begin where b joined again (a gap read from 1 would give 2-8)
    o, released = orderer({"b": 0})
    o.offer(stored(1), ["b"], None, 0.0)
    o.forget_conversation(stored(1).conversation)  # b removed
    o.forget_conversation(stored(1).conversation)  # b added again at seq 8
    o.offer(stored(9), ["b"], None, 1.0)
    assert released == [(1, ("b",))] and o.due(10.0) == []
    [(key, top)] = o.blind()
    assert top == 9
    o.fill(key, [stored(9)], 9, 1.0)  # b's undelivered messages: nothing from while b was out
    assert released == [(1, ("b",)), (9, ("b",))]


def test_right_after_a_group_change_the_order_still_holds() -> None:
    # another member joined: c's next deliveries come from two nodes, 11 before 10. Starting
    # the key at its first delivery (as a 60-s window after changes did) sent 11, then 10 as a
    # late copy that c's device drops (it gets a conversation in seq order): 10 was lost.
    o, released = orderer({"c": 9})
    o.offer(stored(9), ["c"], None, 0.0)
    o.forget_conversation(stored(9).conversation)  # d added
    o.offer(stored(11), ["c"], None, 0.1)  # out of turn for c's devices (sent up to 9)
    o.offer(stored(10), ["c"], None, 0.1)
    [(key, top)] = o.blind()
    assert top == 11
    o.fill(key, [stored(10), stored(11)], 11, 0.1)  # c's undelivered messages
    assert [seq for seq, _ in released] == [9, 10, 11]
    o.offer(stored(12), ["c"], None, 0.2)
    assert [seq for seq, _ in released] == [9, 10, 11, 12]
    assert o.due(10.0) == [] and o.blind() == []


def test_a_group_change_keeps_what_was_held() -> None:
    # 2 was on its way when the group changed: 3 stays held, and the key's start is read from
    # the store at once (dropping 3 would lose it until c's device reconnects)
    woken: list[bool] = []
    o, released = orderer({"c": 0})
    o.on_blind = lambda: woken.append(True)
    o.offer(stored(1), ["c"], None, 0.0)
    o.offer(stored(3), ["c"], None, 0.0)
    o.forget_conversation(stored(3).conversation)
    assert woken == [True] and o.due(10.0) == []
    [(key, top)] = o.blind()
    assert top == 3
    o.fill(key, [stored(2), stored(3)], 3, 0.0)  # c's undelivered messages
    assert [seq for seq, _ in released] == [1, 2, 3]


def test_a_first_delivery_out_of_turn_waits_for_the_store_not_for_nothing() -> None:
    # three nodes, one conversation: this node's own append of seq 2 is delivered before the
    # publish of seq 1 from another node arrives. Starting the key at 2 would send 2 and then
    # have to drop 1 (a device gets a conversation in seq order): the device would miss it.
    o, released = orderer({"b": 0})
    o.offer(stored(2), ["b"], None, 0.0)
    assert released == []
    o.offer(stored(1), ["b"], None, 0.01)  # the publish from the other node
    [(key, top)] = o.blind()
    assert top == 2
    o.fill(key, [stored(1), stored(2)], 2, 0.01)  # b's undelivered messages
    assert released == [(1, ("b",)), (2, ("b",))]
    o.offer(stored(3), ["b"], None, 0.1)
    assert released[-1] == (3, ("b",))


def test_a_fill_releases_nothing_past_what_it_read() -> None:
    # a new member's first delivery (2) is out of turn: its start is read up to 2; meanwhile 4
    # is held (3 is still on its way). The fill must not release 4 ahead of 3: the device
    # would then drop 3 as out of turn.
    o, released = orderer({})
    o.offer(stored(2), ["d"], None, 0.0)
    [(key, top)] = o.blind()
    o.offer(stored(4), ["d"], None, 0.01)  # while the start is being read
    o.fill(key, [stored(2)], top, 0.02)
    assert released == [(2, ("d",))]
    o.offer(stored(3), ["d"], None, 0.03)
    assert [seq for seq, _ in released] == [2, 3, 4]
    assert o.due(10.0) == [] and o.blind() == []


def test_a_gap_left_beyond_a_fill_waits_again_then_is_read() -> None:
    o, released = orderer({})
    o.offer(stored(2), ["d"], None, 0.0)
    [(key, top)] = o.blind()
    o.offer(stored(4), ["d"], None, 0.01)
    o.fill(key, [stored(2)], top, 1.0)
    assert o.due(1.2) == []
    [(key, upto, top)] = o.due(1.25)  # 3 was lost on its way: read from the store
    assert (upto, top) == (2, 4)
    o.fill(key, [stored(3), stored(4)], top, 1.3)
    assert [seq for seq, _ in released] == [2, 3, 4]


def test_a_key_continues_where_the_devices_are() -> None:
    o, released = orderer({"b": 41})  # pruned after idle; the device was sent up to 41
    o.offer(stored(42), ["b"], None, 0.0)
    assert released == [(42, ("b",))] and o.blind() == []
    o.offer(stored(40), ["b"], None, 0.0)  # a late copy: the device has it already
    assert released[-1] == (40, ("b",))


def test_a_senders_own_message_takes_its_turn_without_a_hold() -> None:
    # b's only device here sent 3 and 5; the peer's 2 and 4 come from another node later
    o, released = orderer()
    o.offer(stored(1), ["b"], None, 0.0)
    o.passed(stored(3).conversation, 3, "b", 0.0)  # ahead of 2: noted, not held
    o.passed(stored(5).conversation, 5, "b", 0.0)
    assert o.due(10.0) == []  # nothing waits on the sender's own messages
    o.offer(stored(2), ["b"], None, 0.1)
    assert released == [(1, ("b",)), (2, ("b",))]
    o.offer(stored(4), ["b"], None, 0.2)  # 3 passed already: 4 is in turn
    o.offer(stored(6), ["b"], None, 0.3)  # and 5
    assert [seq for seq, _ in released] == [1, 2, 4, 6]
    assert o.due(10.0) == [] and o.blind() == []


def test_idle_keys_are_forgotten_a_slice_per_prune_and_all_within_a_pass() -> None:
    o, released = orderer()
    o._rounds = Rounds(100)
    users = [f"u{i}" for i in range(250)]
    o.offer(stored(1), users, None, 0.0)
    assert len(released) == 1 and len(o._used) == 250
    remaining = []
    for _ in range(3):
        o.prune(o.idle + 1.0)
        remaining.append(len(o._used))
    assert remaining == [150, 50, 0]
