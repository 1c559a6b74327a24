"""The Orderer (sans-IO): deliveries from several nodes released per conversation and user in
seq order; a gap waits, then is filled from the store, never skipped."""

from __future__ import annotations

from collections.abc import Sequence

from store_suite import msg

from relay.cluster.ordering import Orderer
from relay.ports import Connection
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
    o.fill(key, [stored(2), stored(3), stored(4)])  # what the store has after seq 1
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
    o.fill(key, [stored(5), stored(6)])  # b's undelivered messages up to 7
    assert released == [(1, ("b",)), (5, ("b",)), (6, ("b",)), (7, ("b",))]


def test_a_group_change_starts_its_keys_again_at_the_next_delivery() -> None:
    o, released = orderer()
    o.offer(stored(1), ["b"], None, 0.0)
    o.forget_conversation(stored(1).conversation, 1.0)  # b removed, later added again
    o.offer(stored(9), ["b"], None, 1.0)  # said after b came back: no gap to fill
    assert released == [(1, ("b",)), (9, ("b",))]
    assert o.due(10.0) == [] and o.blind() == []


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
    o.fill(key, [stored(1), stored(2)])  # b's undelivered messages
    assert released == [(1, ("b",)), (2, ("b",))]
    o.offer(stored(3), ["b"], None, 0.1)
    assert released[-1] == (3, ("b",))


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
