"""The durable Store on the standard library's sqlite3 (WAL, synchronous=NORMAL).

One concern per module:
- store.py: SqliteStore, the Trio side: the bounded write queue, the read pool, open/close;
- writer.py: the writer thread, which owns the write connection and commits in groups
  (results handed back only after COMMIT), with retention between batches;
- appends.py: the appends inside the writer's transaction: one by one, and fused (multi-row
  INSERTs whose per-message work is the compiled `relay.fastpath.sqlite_rows`);
- writes.py: the other writes (watermarks, device cursors, groups, devices, presence);
- reads.py: the read queries, each in one read transaction on a read-only connection;
- checkpointer.py: the checkpointer thread (PASSIVE checkpoints off the writer's path);
- connect.py: opening the connections (WAL, migration, pragmas);
- rows.py: rows as StoredMessages, sqlite3 errors as reasons.

Threads: the Trio thread (SqliteStore), ONE writer thread, the checkpointer thread, and up to
`readers` Trio worker threads for reads. Each connection is used by one thread at a time.
"""

from relay.store.sqlite.store import SqliteStore

__all__ = ["SqliteStore"]
