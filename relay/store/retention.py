"""Retention: deleting old messages from the SQLite store, off the hot path.

Settings (RelayConfig): `retention_days` (messages whose server timestamp is older than this many
days go) and `retention_max_messages` (per conversation, only the newest this many stay). Both
None (the default) keep everything.

How it runs: the SQLite store's writer thread calls `RetentionJob.run_chunk` when no request is
waiting and the job is due (every `interval` seconds, default 60). One chunk deletes at most
`chunk` messages in its own short transaction, so appends queued meanwhile wait for one chunk at
most; while a run has more to delete, the next chunk follows as soon as the queue is idle again.

What it keeps: seq counters live in `conversations.last_seq`, so deleting messages never makes a
seq reusable; watermarks and conversations stay (a conversation whose messages are all gone shows
no last message). The idempotency key of a deleted message goes with it: a client resending that
id after the retention period stores it anew.

Age is judged along acceptance order (the `pos` rowid): the job deletes from the oldest message
forward and stops at the first one young enough. Server timestamps grow with acceptance, so this
is exact unless the server clock stepped back, in which case such a message goes a run later.
"""

from __future__ import annotations

import sqlite3
import time

from attrs import define, field

from relay.clock import WallClock, iso_utc


@define
class RetentionJob:
    """Deletes messages past the retention limits, a chunk at a time (writer thread only)."""

    days: float | None
    max_messages: int | None
    interval: float = 60.0
    chunk: int = 500
    now: WallClock = time.time
    _next_run: float = field(default=0.0, init=False)  # time.monotonic() of the next chunk
    # where the per-conversation pass resumes (inclusive); "" = from the first conversation
    _conversation_cursor: str = field(default="", init=False)

    @property
    def enabled(self) -> bool:
        return self.days is not None or self.max_messages is not None

    def seconds_until_due(self) -> float | None:
        """None when retention is off; else how long until `run_chunk` should be called."""
        if not self.enabled:
            return None
        return max(self._next_run - time.monotonic(), 0.0)

    def run_chunk(self, conn: sqlite3.Connection) -> int:
        """Delete up to `chunk` messages in one transaction; returns how many went. When less than
        a full chunk went, this run is over and the next is due `interval` seconds later."""
        deleted = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            if self.days is not None:
                deleted += self._by_age(conn, self.chunk)
            if self.max_messages is not None and deleted < self.chunk:
                deleted += self._by_count(conn, self.chunk - deleted)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._next_run = time.monotonic() + self.interval
            raise
        if deleted < self.chunk:
            self._next_run = time.monotonic() + self.interval
            self._conversation_cursor = ""
        return deleted

    def _by_age(self, conn: sqlite3.Connection, budget: int) -> int:
        assert self.days is not None
        cutoff = iso_utc(self.now() - self.days * 86400.0)
        rows = conn.execute(
            "SELECT pos, server_timestamp FROM messages ORDER BY pos LIMIT ?", (budget,)
        ).fetchall()
        old = 0
        for _, timestamp in rows:
            if timestamp >= cutoff:
                break
            old += 1
        if old:
            conn.execute("DELETE FROM messages WHERE pos <= ?", (rows[old - 1][0],))
        return old

    def _by_count(self, conn: sqlite3.Connection, budget: int) -> int:
        assert self.max_messages is not None
        deleted = 0
        # Walk conversations in key order across chunks, so every one is reached in turn.
        rows = conn.execute(
            "SELECT conversation, last_seq FROM conversations WHERE conversation >= ? "
            "AND last_seq > ? ORDER BY conversation",
            (self._conversation_cursor, self.max_messages),
        ).fetchall()
        for conversation, last_seq in rows:
            keep_from = last_seq - self.max_messages + 1
            gone = conn.execute(
                "DELETE FROM messages WHERE pos IN (SELECT pos FROM messages "
                "WHERE conversation = ? AND seq < ? ORDER BY seq LIMIT ?)",
                (conversation, keep_from, budget - deleted),
            ).rowcount
            deleted += gone
            if deleted >= budget:
                # the next chunk resumes at this conversation (it may have more to go)
                self._conversation_cursor = conversation
                return deleted
        self._conversation_cursor = ""
        return deleted
