"""Expiries (sans-IO): a table key -> (deadline, value) whose due entries are found without
examining the others.

The tick's expiries (a typing `start` that lapsed, a presence grace that ended) are bounded by
the users typing or leaving, but a scan of the whole table looks at every pending entry on every
tick. Here a heap of (deadline, push number, key) sits beside the table, and `due(now)` pops
only the heap entries at or before `now`: a tick costs O(k log n) for the k heap entries due,
and O(1) when none is.

Invariants:
- the table is a dict in insertion order; `put` on a present key changes its deadline and
  value but keeps its place, `remove` and `due` take the key out (iteration, membership and
  the order `due` reports in are the table's, as a plain dict of the entries would have them);
- every key in the table has a heap entry carrying its current deadline; a heap entry whose key
  is gone, or whose deadline is no longer the key's (a renewal pushed another, a removal left
  it behind), is stale and is dropped when popped (lazy deletion: `put` and `remove` never
  search the heap);
- the push number is unique, so heap entries never compare keys or values;
- every heap entry is popped exactly once, by the first `due` at or after its deadline: the
  heap holds only the pushes of the last deadline-span (a typing lapse, a presence grace), and
  each push costs O(log n) once more when it is popped;
- `due(now)` returns the entries whose deadline is <= now, in table order, and removes them;
  `examined` counts every heap entry it popped (stale ones included).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Expiries(Generic[K, V]):
    __slots__ = ("_heap", "_pushes", "_table", "examined")

    def __init__(self) -> None:
        # key -> (deadline, order, value); order: when the key entered the table
        self._table: dict[K, tuple[float, int, V]] = {}
        self._heap: list[tuple[float, int, K]] = []  # (deadline, push number, key)
        self._pushes = 0
        #: heap entries popped by `due` so far (stale ones included)
        self.examined = 0

    def __contains__(self, key: object) -> bool:
        return key in self._table

    def __iter__(self) -> Iterator[K]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def put(self, key: K, deadline: float, value: V) -> None:
        """`key` expires at `deadline` (a present key is renewed: it keeps its place)."""
        table = self._table
        entry = table.get(key)
        pushes = self._pushes = self._pushes + 1
        order = pushes if entry is None else entry[1]
        table[key] = (deadline, order, value)
        if entry is None or entry[0] != deadline:  # else its heap entry still holds
            heapq.heappush(self._heap, (deadline, pushes, key))

    def remove(self, key: K) -> bool:
        """Take `key` out; whether it was in. Its heap entry goes stale."""
        return self._table.pop(key, None) is not None

    def value(self, key: K) -> V | None:
        entry = self._table.get(key)
        return None if entry is None else entry[2]

    def deadline(self, key: K) -> float | None:
        entry = self._table.get(key)
        return None if entry is None else entry[0]

    def due(self, now: float) -> list[tuple[K, V]]:
        """The entries whose deadline is <= now, in table order; they are taken out."""
        heap = self._heap
        table = self._table
        found: list[tuple[int, K, V]] = []
        popped = 0
        while heap and heap[0][0] <= now:
            deadline, _, key = heapq.heappop(heap)
            popped += 1
            entry = table.get(key)
            if entry is not None and entry[0] == deadline:
                del table[key]
                found.append((entry[1], key, entry[2]))
        self.examined += popped
        if len(found) > 1:
            found.sort()  # orders are unique: keys and values are never compared
        return [(key, value) for _, key, value in found]
