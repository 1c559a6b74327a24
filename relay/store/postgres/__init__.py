"""The durable Store on PostgreSQL (psycopg 3, sync API on threads), for one or several nodes.

One concern per module:
- store.py: PostgresStore, the Trio side: the bounded write queue, the read pool, open/close,
  and `problem()` (whether PostgreSQL is reachable);
- writer.py: the writer thread: group commit, results only after COMMIT, reconnecting;
- appends.py: the appends inside the writer's transaction (seq and pos under the positions lock);
- writes.py: the other writes (watermarks, device cursors, groups, devices, presence);
- reads.py: the read queries, each in one read-only snapshot;
- schema.py: the versioned migrations; retention.py: age/count retention; rows.py: rows and errors.
"""

from relay.store.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
