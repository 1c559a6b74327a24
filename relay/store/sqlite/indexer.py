"""The search indexer: the writer thread adds messages to the FTS5 index (migration 7) behind
the appends, never inside them.

Why not in the append's transaction: an FTS5 insert costs 10-15 us a message on the 2-core VM
(measured: 100-row transactions of 50-character texts, ~6x the message row's own insert),
which the writer would pay on every message, and the SQLite store's throughput is half the
memory store's already (shared/performance-notes.md). So the writer indexes when it has been
idle `idle` seconds (a chunk of `chunk` messages per transaction), and, while it is never idle,
only once the unindexed tail exceeds `max_lag` messages (then as many per batch as the batch
appended, so the tail stops growing). Searches stay exact meanwhile: the messages above
`search_progress.indexed_pos` are matched by a scan (sqlite/search.py).

Invariants:
- every message with pos <= indexed_pos has its row in `message_search` when its text has a
  token (a message deleted before it was indexed has none, as the trigger would have left it);
- indexed_pos only moves forward, in the transaction that indexed up to it.
"""

from __future__ import annotations

import sqlite3

from attrs import define, field

from relay.search.normalize import index_text
from relay.store.sqlite.search import conversation_token


@define
class SearchIndexer:
    """Indexes messages in chunks, each in its own transaction (writer thread only)."""

    chunk: int = 500  # ~6 ms of work on the 2-core VM: what a request arriving meanwhile waits
    max_lag: int = 100_000
    idle: float = 0.05
    # whether messages may wait to be indexed (set by every batch, cleared by a short chunk)
    _pending: bool = field(default=True, init=False)
    _lag: int = field(default=0, init=False)  # messages appended since the last short chunk

    @property
    def pending(self) -> bool:
        return self._pending

    def appended(self, count: int) -> None:
        """The writer committed a batch that appended `count` messages."""
        if count:
            self._pending = True
            self._lag += count

    def lagging(self) -> bool:
        """Whether the writer must index now even though requests wait (the tail is too long)."""
        return self._pending and self._lag > self.max_lag

    def run_chunk(self, conn: sqlite3.Connection, size: int | None = None) -> int:
        """Index up to `size` (default `chunk`) messages above indexed_pos in one transaction;
        returns how many messages it read. A short chunk means the index has caught up."""
        size = self.chunk if size is None else max(size, 1)
        conn.execute("BEGIN IMMEDIATE")
        try:
            (indexed,) = conn.execute("SELECT indexed_pos FROM search_progress").fetchone()
            rows = conn.execute(
                "SELECT pos, text, conversation FROM messages WHERE pos > ? ORDER BY pos LIMIT ?",
                (indexed, size),
            ).fetchall()
            bodies = [
                (pos, body, conversation_token(conversation))
                for pos, text, conversation in rows
                if (body := index_text(text))
            ]
            if bodies:
                conn.executemany(
                    "INSERT INTO message_search (rowid, body, conv) VALUES (?, ?, ?)", bodies
                )
            if len(rows) == size:
                upto = rows[-1][0]
            else:  # everything is indexed: up to the last pos ever given
                (upto,) = conn.execute("SELECT last_pos FROM positions").fetchone()
            if upto > indexed:
                conn.execute("UPDATE search_progress SET indexed_pos = ?", (upto,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if len(rows) < size:
            self._pending = False
            self._lag = 0
        else:
            self._lag = max(self._lag - len(rows), 0)
        return len(rows)

    def timeout(self, retention_due: float | None) -> float | None:
        """How long the writer may wait for a request before it has idle work to do."""
        if not self._pending:
            return retention_due
        return self.idle if retention_due is None else min(self.idle, retention_due)
