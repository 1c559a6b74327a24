"""Retention on PostgreSQL: the SQLite store's rules (relay/store/retention.py) — messages older
than `days` go, and only the newest `max_messages` of each conversation stay — run by each
node's writer thread between batches, a chunk per short transaction.

Several nodes may run it at once: each chunk's DELETE removes what is still there, so two nodes
never delete more than the rules say; seq counters live in `conversations.last_seq`, so deleting
never makes a seq reusable.
"""

from __future__ import annotations

import time

from attrs import define, field

from relay.clock import WallClock, iso_utc
from relay.store.postgres.rows import Conn


@define
class PostgresRetention:
    """Deletes messages past the retention limits, a chunk at a time (writer thread only)."""

    days: float | None
    max_messages: int | None
    interval: float = 60.0
    chunk: int = 500
    now: WallClock = time.time
    _next_run: float = field(default=0.0, init=False)
    _conversation_cursor: str = field(default="", init=False)

    @property
    def enabled(self) -> bool:
        return self.days is not None or self.max_messages is not None

    def seconds_until_due(self) -> float | None:
        """None when retention is off; else how long until `run_chunk` should be called."""
        if not self.enabled:
            return None
        return max(self._next_run - time.monotonic(), 0.0)

    def run_chunk(self, conn: Conn) -> int:
        """Delete up to `chunk` messages in one transaction; returns how many went."""
        deleted = 0
        try:
            with conn.transaction():
                if self.days is not None:
                    deleted += self._by_age(conn, self.chunk)
                if self.max_messages is not None and deleted < self.chunk:
                    deleted += self._by_count(conn, self.chunk - deleted)
        except BaseException:
            self._next_run = time.monotonic() + self.interval
            raise
        if deleted < self.chunk:
            self._next_run = time.monotonic() + self.interval
            self._conversation_cursor = ""
        return deleted

    def _by_age(self, conn: Conn, budget: int) -> int:
        assert self.days is not None
        cutoff = iso_utc(self.now() - self.days * 86400.0)
        rows = conn.execute(
            "SELECT pos, server_timestamp FROM messages ORDER BY pos LIMIT %s", (budget,)
        ).fetchall()
        old = 0
        for _, timestamp in rows:
            if timestamp >= cutoff:
                break
            old += 1
        if old:
            conn.execute("DELETE FROM messages WHERE pos <= %s", (rows[old - 1][0],))
        return old

    def _by_count(self, conn: Conn, budget: int) -> int:
        assert self.max_messages is not None
        deleted = 0
        rows = conn.execute(
            "SELECT conversation, last_seq FROM conversations WHERE conversation >= %s "
            "AND last_seq > %s ORDER BY conversation",
            (self._conversation_cursor, self.max_messages),
        ).fetchall()
        for conversation, last_seq in rows:
            keep_from = int(last_seq) - self.max_messages + 1
            gone = conn.execute(
                "DELETE FROM messages WHERE pos IN (SELECT pos FROM messages "
                "WHERE conversation = %s AND seq < %s ORDER BY seq LIMIT %s)",
                (conversation, keep_from, budget - deleted),
            ).rowcount
            deleted += gone
            if deleted >= budget:
                self._conversation_cursor = conversation
                return deleted
        self._conversation_cursor = ""
        return deleted
