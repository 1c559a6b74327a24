"""Close deadlines of ws:// connections: one task (`CloseDeadlines.run`) ends each
RawConnection whose closing outlasted its deadline (RawConnection.expire), so a connection
needs no cancel scope of its own (relay.transport.connection).

Invariants:
- The heap holds (deadline, connection id, connection); the id breaks ties, so connections
  are never compared.
- The task sleeps until the earliest deadline, or until `at` pushes an earlier one (it then
  sets the event the task waits on). Deadlines are on trio's clock, so tests run them on
  MockClock.
"""

from __future__ import annotations

import heapq
import math

import trio
from attrs import define, field

from relay.transport.connection import RawConnection


@define(eq=False)
class CloseDeadlines:
    """The close deadlines of a server's ws:// connections, and the task that keeps them."""

    _heap: list[tuple[float, int, RawConnection]] = field(factory=list)
    _changed: trio.Event = field(factory=trio.Event)

    def at(self, conn: RawConnection, deadline: float) -> None:
        """End `conn` (RawConnection.expire) once trio.current_time() reaches `deadline`."""
        heap = self._heap
        heapq.heappush(heap, (deadline, conn.id, conn))
        if heap[0][2] is conn:
            self._changed.set()

    async def run(self) -> None:
        heap = self._heap
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                heapq.heappop(heap)[2].expire()
            changed = self._changed = trio.Event()
            with trio.move_on_at(heap[0][0] if heap else math.inf):
                await changed.wait()
