"""Work that `maintain()` owes to connections (a backlog's next batch, a receipt catch-up).

Invariants: a connection is owed a piece of work at most once (keyed by its id); `run` does
each owed piece once per call, for the connections whose session is still active, in the order
they became due; what one call does not reach (it was cancelled) stays owed for the next call,
as does what becomes due while it runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from relay.core.session import Session
from relay.ports import Connection


class Due:
    __slots__ = ("_conns",)

    def __init__(self) -> None:
        self._conns: dict[int, Connection] = {}

    def __bool__(self) -> bool:
        return bool(self._conns)

    def add(self, conn: Connection) -> None:
        self._conns[conn.id] = conn

    def take(self, conn: Connection) -> bool:
        """Whether `conn` was owed the work; it no longer is."""
        return self._conns.pop(conn.id, None) is not None

    async def run(
        self,
        work: Callable[[Connection, Session], Awaitable[None]],
        breathe: Callable[[], Awaitable[None]],
    ) -> None:
        owed, self._conns = self._conns, {}
        try:
            for conn_id, conn in list(owed.items()):
                await breathe()
                del owed[conn_id]
                session = conn.state
                if isinstance(session, Session) and session.active:
                    await work(conn, session)
        finally:
            self._conns = {**owed, **self._conns}
