"""relay.core.expiry.Expiries: the table, its heap's lazy deletion, and what `due` examines."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relay.core.expiry import Expiries


def test_due_takes_what_is_due_and_leaves_the_rest() -> None:
    e: Expiries[str, int] = Expiries()
    for i, key in enumerate("abcde"):
        e.put(key, float(i), i)
    assert e.due(1.5) == [("a", 0), ("b", 1)]
    assert e.examined == 2
    assert list(e) == ["c", "d", "e"] and len(e) == 3 and "a" not in e
    assert e.due(1.9) == [] and e.examined == 2
    assert (e.value("c"), e.deadline("c"), e.value("a"), e.deadline("a")) == (2, 2.0, None, None)


def test_a_renewal_keeps_the_place_and_leaves_one_stale_entry() -> None:
    e: Expiries[str, str] = Expiries()
    e.put("a", 1.0, "first")
    e.put("b", 2.0, "b")
    e.put("a", 5.0, "renewed")  # a's entry at 1.0 is now stale
    assert list(e) == ["a", "b"]
    assert e.due(2.0) == [("b", "b")]
    assert e.examined == 2  # the stale entry of a, then b
    assert e.due(5.0) == [("a", "renewed")]
    assert e.examined == 3


def test_a_renewal_to_the_same_deadline_pushes_nothing() -> None:
    e: Expiries[str, str] = Expiries()
    e.put("a", 1.0, "x")
    e.put("a", 1.0, "y")
    assert e.due(1.0) == [("a", "y")] and e.examined == 1


def test_a_removed_key_is_not_due_and_its_entry_goes_once() -> None:
    e: Expiries[str, None] = Expiries()
    e.put("a", 1.0, None)
    assert e.remove("a") and not e.remove("a")
    assert e.due(1.0) == [] and e.examined == 1
    assert e.due(9.0) == [] and e.examined == 1
    e.put("a", 2.0, None)
    e.remove("a")
    e.put("a", 2.0, None)  # back, at the deadline of its stale entry
    assert e.due(2.0) == [("a", None)]  # due once, though both of its entries were examined
    assert e.examined == 3
    assert len(e) == 0


def test_keys_are_never_compared() -> None:
    class Opaque:
        def __lt__(self, other: object) -> bool:
            raise AssertionError("compared")

    e: Expiries[Opaque, None] = Expiries()
    keys = [Opaque() for _ in range(4)]
    for key in keys:
        e.put(key, 1.0, None)
    e.remove(keys[1])
    e.put(keys[1], 1.0, None)
    assert [k for k, _ in e.due(1.0)] == [keys[0], keys[2], keys[3], keys[1]]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["put", "remove", "due"]),
            st.sampled_from("abcde"),
            st.integers(0, 6),
        ),
        max_size=80,
    )
)
def test_as_a_dict_scanned_whole(ops: list[tuple[str, str, int]]) -> None:
    """Against a dict of (deadline, value) scanned in full: the same results in the same
    order, the same table; every heap entry is examined at most once."""
    e: Expiries[str, int] = Expiries()
    ref: dict[str, tuple[float, int]] = {}
    now = 0.0
    pushes = 0
    for i, (op, key, n) in enumerate(ops):
        if op == "put":
            deadline = now + n
            if ref.get(key, (None,))[0] != deadline:
                pushes += 1
            e.put(key, deadline, i)
            ref[key] = (deadline, i)
        elif op == "remove":
            assert e.remove(key) == (ref.pop(key, None) is not None)
        else:
            now += n
            gone = [(k, v) for k, (d, v) in ref.items() if d <= now]
            for k, _ in gone:
                del ref[k]
            assert e.due(now) == gone
        assert list(e) == list(ref)
        assert e.examined <= pushes
