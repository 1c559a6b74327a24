"""PostgreSQL's WebhookOutbox (relay.store.base): the webhook scan's cursor and pending events,
shared by every node on the database.

Every function runs in the writer thread inside its batch transaction (store.py), after the
batch took the `positions` lock, so these never deadlock with appends. Tables: schema.py.

One scanner and sender for the whole cluster: the cursor row carries a lease (`owner`, the
store instance's token, and `lease_until`, PostgreSQL's clock in unix seconds). The scan's
read (`candidates`), its write (`advance`) and the sender's `due` first take or renew the lease
under the cursor row's lock; a store that does not hold it gets no candidates and no due events,
and its advance stores nothing. So each event is made once and sent by one node at a time, and
when the holder dies (its lease is no longer renewed) another node takes over after
`LEASE_SECONDS`. A holder stalled longer than the lease may send a request the next holder
sends again: at least once, as on one node (receivers dedupe by event id).

Invariants (WebhookOutbox's, kept here): `last_pos` only grows; the events a scan adds and the
cursor move past their messages commit together; after `advance` at most `max_pending` events
are pending.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from relay.store.base import OutboxEvent, WebhookCandidate
from relay.store.postgres.rows import COLUMNS, Conn, message

#: how long a scanner's lease lasts without renewal (s); renewed at every scan poll (<= 0.5 s)
#: and every send, so only a dead or stalled node lets it lapse
LEASE_SECONDS: Final = 10.0

_NOW: Final = "extract(epoch FROM clock_timestamp())"


def start(conn: Conn) -> None:
    conn.execute(
        "INSERT INTO webhook_cursor (id, last_pos) "
        "SELECT 0, last_pos FROM positions WHERE id = 0 ON CONFLICT (id) DO NOTHING"
    )


def _lease(conn: Conn, owner: str) -> tuple[bool, int | None]:
    """Take or renew the lease: (whether this store holds it, the cursor's last_pos; None when
    webhooks were never started, and then there is no lease to hold)."""
    row = conn.execute(
        "SELECT last_pos, owner, lease_until < " + _NOW + " "
        "FROM webhook_cursor WHERE id = 0 FOR UPDATE"
    ).fetchone()
    if row is None:
        return True, None
    last_pos, holder, lapsed = row
    if holder is not None and holder != owner and not lapsed:
        return False, int(last_pos)
    conn.execute(
        "UPDATE webhook_cursor SET owner = %s, lease_until = " + _NOW + " + %s WHERE id = 0",
        (owner, LEASE_SECONDS),
    )
    return True, int(last_pos)


def candidates(conn: Conn, owner: str, limit: int) -> list[WebhookCandidate]:
    held, last_pos = _lease(conn, owner)
    if not held or last_pos is None:
        return []
    rows = conn.execute(
        f"SELECT pos, {COLUMNS} FROM messages WHERE pos > %s ORDER BY pos LIMIT %s",
        (last_pos, max(limit, 0)),
    ).fetchall()
    return [WebhookCandidate(int(row[0]), message(row[1:])) for row in rows]


def advance(
    conn: Conn, owner: str, position: int, events: Sequence[OutboxEvent], max_pending: int
) -> int:
    held, _ = _lease(conn, owner)
    if not held:  # another node scans now: it makes these events itself
        return 0
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO webhook_events (id, body, created_at, next_at, attempts) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
            [(e.id, e.body, e.created_at, e.next_at, e.attempts) for e in events],
        )
    conn.execute(
        "UPDATE webhook_cursor SET last_pos = GREATEST(last_pos, %s) WHERE id = 0", (position,)
    )
    row = conn.execute("SELECT COUNT(*) FROM webhook_events").fetchone()
    assert row is not None
    excess = int(row[0]) - max(max_pending, 0)
    if excess <= 0:
        return 0
    conn.execute(
        "DELETE FROM webhook_events WHERE id IN "
        "(SELECT id FROM webhook_events ORDER BY created_at, id LIMIT %s)",
        (excess,),
    )
    return excess


def due(conn: Conn, owner: str, now: float, limit: int) -> list[OutboxEvent]:
    held, _ = _lease(conn, owner)
    if not held:
        return []
    rows = conn.execute(
        "SELECT id, body, created_at, next_at, attempts FROM webhook_events "
        "WHERE next_at <= %s ORDER BY created_at, id LIMIT %s",
        (now, max(limit, 0)),
    ).fetchall()
    return [OutboxEvent(i, body, float(c), float(n), int(a)) for i, body, c, n, a in rows]


def settle(conn: Conn, removed: Sequence[str], retried: Sequence[tuple[str, float]]) -> None:
    with conn.cursor() as cur:
        if removed:
            cur.execute("DELETE FROM webhook_events WHERE id = ANY(%s)", (list(removed),))
        if retried:
            cur.executemany(
                "UPDATE webhook_events SET attempts = attempts + 1, next_at = %s WHERE id = %s",
                [(next_at, i) for i, next_at in retried],
            )


def pending(conn: Conn) -> tuple[int, float | None]:
    row = conn.execute("SELECT COUNT(*), MIN(next_at) FROM webhook_events").fetchone()
    assert row is not None
    count, earliest = row
    return int(count), None if earliest is None else float(earliest)
