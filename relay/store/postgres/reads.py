"""The read queries: each runs on a read connection in a Trio worker thread, inside one
REPEATABLE READ, read-only transaction, so it sees one committed snapshot. `last_seq` and
`get_group` also serve the writes, inside the write transaction.

The queries are the SQLite store's (relay/store/sqlite/reads.py) in PostgreSQL's dialect; where
SQLite takes bare columns from the row of a MAX(), this takes DISTINCT ON, and `undelivered` is
one query with a LATERAL walk per conversation where SQLite runs one query per conversation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from relay.store.base import (
    ConversationSummary,
    Coverage,
    Group,
    MessageRef,
    StoredMessage,
    Watermarks,
    direct_users,
    group_conversation,
)
from relay.store.postgres.rows import COLUMNS, Conn, message


def last_seq(conn: Conn, conversation: str) -> int:
    row = conn.execute(
        "SELECT last_seq FROM conversations WHERE conversation = %s", (conversation,)
    ).fetchone()
    return int(row[0]) if row else 0


def get_group(conn: Conn, group_id: str) -> Group | None:
    row = conn.execute(
        "SELECT name, created_by, created_at FROM groups WHERE group_id = %s", (group_id,)
    ).fetchone()
    if row is None:
        return None
    members = conn.execute(
        "SELECT user_id FROM participants WHERE conversation = %s",
        (group_conversation(group_id),),
    ).fetchall()
    return Group(
        group_id=group_id,
        name=row[0],
        members=tuple(sorted(m[0] for m in members)),
        created_by=row[1],
        created_at=row[2],
    )


def history(
    conn: Conn, conversation: str, before: int | None, after: int | None, limit: int
) -> tuple[list[StoredMessage], bool]:
    limit = max(limit, 0)
    if after is not None:
        rows = conn.execute(
            f"SELECT {COLUMNS} FROM messages WHERE conversation = %s AND seq > %s "
            "ORDER BY seq LIMIT %s",
            (conversation, after, limit + 1),
        ).fetchall()
        return [message(r) for r in rows[:limit]], len(rows) > limit
    if before is not None:
        rows = conn.execute(
            f"SELECT {COLUMNS} FROM messages WHERE conversation = %s AND seq < %s "
            "ORDER BY seq DESC LIMIT %s",
            (conversation, before, limit + 1),
        ).fetchall()
    else:
        rows = conn.execute(
            f"SELECT {COLUMNS} FROM messages WHERE conversation = %s ORDER BY seq DESC LIMIT %s",
            (conversation, limit + 1),
        ).fetchall()
    return [message(r) for r in reversed(rows[:limit])], len(rows) > limit


def before_first_after(conversation: str, since_pos: str, low: str, high: str) -> str:
    """A scalar SQL expression: the seq before the first message of `conversation` accepted
    after pos `since_pos`, held between `low` and `high` (each argument an SQL expression; the
    bounds are taken as bigint, seq's type). With f that first seq (none: f is infinite), it is
    GREATEST(low, LEAST(high, f - 1)).

    Found by bisection: a probe takes the last message at or below a seq through
    messages_by_seq (one index descent) and asks whether it came after since_pos, which splits
    the conversation in two because seq and pos grow together in it (a seq freed by retention
    splits it the same way). It costs at most log2(high - low) + 1 probes: 14 at 10,000, 3
    shared buffers each. MIN(seq) WHERE pos > since_pos has no index to bound it (none is on
    (conversation, pos)): it walks messages_by_seq over all the conversation held before
    since_pos (tests/store/test_postgres.py measures both)."""
    return f"""(
            -- invariant: lo = low or no message at or below lo came after since_pos;
            -- hi = high + 1 or one at or below hi did
            WITH RECURSIVE half(lo, hi) AS (
                VALUES (CAST({low} AS bigint), CAST({high} AS bigint) + 1)
                UNION ALL
                SELECT CASE WHEN t.before THEN t.mid ELSE h.lo END,
                       CASE WHEN t.before THEN h.hi ELSE t.mid END
                FROM half AS h CROSS JOIN LATERAL (
                    SELECT (h.lo + h.hi) / 2 AS mid, COALESCE(
                        (SELECT a.pos <= {since_pos} FROM messages AS a
                         WHERE a.conversation = {conversation} AND a.seq <= (h.lo + h.hi) / 2
                         ORDER BY a.seq DESC LIMIT 1),
                        TRUE) AS before
                    OFFSET 0  -- not pulled up into the CASEs, where each `before` would probe
                ) AS t
                WHERE h.hi - h.lo > 1
            )
            SELECT MAX(lo) FROM half
        )"""


# Where a device's backlog starts in each of its user's conversations: its cursor; without one,
# the user's delivered watermark, or lower when messages came after the device registered
# (the seq before the first of them); never at or below the seq where the user (last) joined a
# group (participants.joined_seq: joining drops the user's device cursors there, and a device
# registered before would otherwise be given what was said while the user was out).
#
# "The seq before the first message after the device registered" is only looked for between
# joined_seq and the watermark (outside, the clamp decides) and only for a registered device
# without a cursor, by bisection (before_first_after): at most log2(watermark - joined_seq) + 1
# probes. Walking messages_by_seq instead costs all the conversation held before the device
# registered (a page of a device registered after 11,000 messages: 308 shared buffers, after
# 500: 23; bisecting, 46 and 34: tests/store/test_postgres.py).
_START: Final = f"""
    GREATEST(p.joined_seq, COALESCE(
        c.seq,
        CASE WHEN v.since_pos IS NULL OR COALESCE(w.delivered_seq, 0) <= p.joined_seq
        THEN COALESCE(w.delivered_seq, 0)
        ELSE {before_first_after("p.conversation", "v.since_pos", "p.joined_seq", "w.delivered_seq")}
        END))
"""

# Each conversation's backlog from its start, oldest first, at most %(n)s rows (a walk of
# messages_by_seq from the start), then the first %(n)s of those by pos.
_UNDELIVERED: Final = f"""
    SELECT {", ".join("m." + col.strip() for col in COLUMNS.split(","))}
    FROM participants AS p
    LEFT JOIN devices AS v ON v.user_id = p.user_id AND v.device_id = %(d)s
    LEFT JOIN watermarks AS w ON w.conversation = p.conversation AND w.user_id = p.user_id
    LEFT JOIN device_cursors AS c
        ON c.conversation = p.conversation AND c.user_id = p.user_id AND c.device_id = %(d)s
    CROSS JOIN LATERAL (SELECT {_START} AS start_seq) AS s
    CROSS JOIN LATERAL (
        SELECT {COLUMNS}, pos FROM messages
        WHERE conversation = p.conversation AND seq > s.start_seq AND sender_id != %(u)s
        ORDER BY seq
        LIMIT %(n)s
    ) AS m
    WHERE p.user_id = %(u)s
    ORDER BY m.pos
    LIMIT %(n)s
"""


def undelivered(conn: Conn, user_id: str, device_id: str, limit: int) -> list[StoredMessage]:
    """The oldest `limit` of the device's backlog in acceptance order (pos) across its
    conversations. Each conversation gives at most `limit` rows from its start and the first
    `limit` of them all are read: within a conversation seq and pos grow together (every
    append transaction, on any node, locks `positions` first and numbers its messages' seq and
    pos together in commit order), so those are the first `limit` of the whole backlog. The
    cost follows conversations x `limit` (plus the user's own messages skipped in those walks),
    not the backlog: one join ordered by pos reads and sorts every message owed on each page
    (21,042 plan rows and 556 buffers for a page of 20 at 10,500 owed; 104 and 7 this way,
    as at 500 owed)."""
    if limit <= 0:
        return []
    rows = conn.execute(_UNDELIVERED, {"u": user_id, "d": device_id, "n": limit}).fetchall()
    return [message(r) for r in rows]


def latest_by_sender(
    conn: Conn, conversation: str, after_seq: int, upto_seq: int, exclude: str
) -> list[StoredMessage]:
    users = direct_users(conversation)
    if users is not None and exclude in users:
        row = conn.execute(
            f"SELECT {COLUMNS} FROM messages WHERE conversation = %s AND seq > %s AND seq <= %s "
            "AND sender_id != %s ORDER BY seq DESC LIMIT 1",
            (conversation, after_seq, upto_seq, exclude),
        ).fetchone()
        return [] if row is None else [message(row)]
    rows = conn.execute(
        f"SELECT DISTINCT ON (sender_id) {COLUMNS} FROM messages WHERE conversation = %s "
        "AND seq > %s AND seq <= %s AND sender_id != %s ORDER BY sender_id, seq DESC",
        (conversation, after_seq, upto_seq, exclude),
    ).fetchall()
    return sorted((message(r) for r in rows), key=lambda m: m.seq)


def latest_by_sender_many(
    conn: Conn, queries: list[tuple[str, int, int, str]]
) -> list[list[StoredMessage]]:
    return [latest_by_sender(conn, *query) for query in queries]


def conversations(conn: Conn, user_id: str, limit: int) -> list[ConversationSummary]:
    rows = conn.execute(
        "SELECT c.conversation, p.peer_id, c.group_id, c.last_seq, c.updated_at, "
        "COALESCE(w.read_seq, 0) "
        "FROM participants AS p JOIN conversations AS c ON c.conversation = p.conversation "
        "LEFT JOIN watermarks AS w ON w.conversation = p.conversation AND w.user_id = p.user_id "
        "WHERE p.user_id = %s ORDER BY c.updated_at DESC, c.last_pos DESC LIMIT %s",
        (user_id, max(limit, 0)),
    ).fetchall()
    items: list[ConversationSummary] = []
    for conversation, peer_id, group_id, last, updated_at, read_seq in rows:
        found = conn.execute(
            f"SELECT {COLUMNS} FROM messages WHERE conversation = %s AND seq = %s",
            (conversation, last),
        ).fetchone()
        counted = conn.execute(
            "SELECT COUNT(*) FROM messages WHERE conversation = %s AND seq > %s "
            "AND sender_id != %s",
            (conversation, read_seq, user_id),
        ).fetchone()
        items.append(
            ConversationSummary(
                conversation=conversation,
                peer_id=peer_id,
                group_id=group_id if peer_id is None else None,
                last_message=message(found) if found else None,
                unread=int(counted[0]) if counted else 0,
                last_seq=int(last),
                read_seq=int(read_seq),
                updated_at=updated_at,
            )
        )
    return items


def contacts(conn: Conn, user_id: str) -> set[str]:
    rows = conn.execute(
        "SELECT DISTINCT other.user_id FROM participants AS mine "
        "JOIN participants AS other ON other.conversation = mine.conversation "
        "WHERE mine.user_id = %(u)s AND other.user_id != %(u)s",
        {"u": user_id},
    ).fetchall()
    return {r[0] for r in rows}


def last_seen(conn: Conn, user_ids: Sequence[str]) -> dict[str, str]:
    unique = list(dict.fromkeys(user_ids))
    if not unique:
        return {}
    rows = conn.execute(
        "SELECT user_id, timestamp FROM last_seen WHERE user_id = ANY(%s)", (unique,)
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def member_watermarks(conn: Conn, conversation: str) -> dict[str, Watermarks]:
    rows = conn.execute(
        "SELECT p.user_id, COALESCE(w.delivered_seq, 0), COALESCE(w.read_seq, 0) "
        "FROM participants AS p LEFT JOIN watermarks AS w "
        "ON w.conversation = p.conversation AND w.user_id = p.user_id "
        "WHERE p.conversation = %s ORDER BY p.user_id",
        (conversation,),
    ).fetchall()
    return {user: Watermarks(int(delivered), int(read)) for user, delivered, read in rows}


_RECENT: Final = (
    "SELECT c.conversation, c.group_id "
    "FROM participants AS p JOIN conversations AS c ON c.conversation = p.conversation "
    "WHERE p.user_id = %s ORDER BY c.updated_at DESC, c.last_pos DESC"
)
_READERS: Final = (
    "SELECT p.user_id, p.joined_seq, w.delivered_seq, w.read_seq "
    "FROM participants AS p JOIN watermarks AS w "
    "ON w.conversation = p.conversation AND w.user_id = p.user_id "
    "WHERE p.conversation = %s AND p.user_id != %s AND w.delivered_seq > p.joined_seq "
    "ORDER BY p.user_id LIMIT %s"
)
_OWN_DESC: Final = (
    "SELECT seq, id FROM messages WHERE conversation = %s AND seq > %s AND seq <= %s "
    "AND sender_id = %s ORDER BY seq DESC"
)


def coverage(conn: Conn, sender_id: str, limit: int) -> list[Coverage]:
    found: list[Coverage] = []
    budget = max(limit, 0)
    if budget == 0:
        return found
    recent = conn.execute(_RECENT, (sender_id,)).fetchall()
    for conversation, group_id in recent:
        readers = [
            (str(u), int(j), int(d), int(r))
            for u, j, d, r in conn.execute(_READERS, (conversation, sender_id, budget)).fetchall()
        ]
        if not readers:
            continue
        found += _covered(conn, conversation, group_id, sender_id, readers)
        budget -= len(readers)
        if budget == 0:
            break
    return found


def _covered(
    conn: Conn,
    conversation: str,
    group_id: str | None,
    sender_id: str,
    readers: list[tuple[str, int, int, int]],
) -> list[Coverage]:
    """The Coverage of each reader (user, joined_seq, delivered_seq, read_seq) in one
    conversation: one walk of the sender's messages from the highest watermark down."""
    marks = sorted(
        {d for _, _, d, _ in readers} | {r for _, j, _, r in readers if r > j}, reverse=True
    )
    newest: dict[int, MessageRef] = {}
    lowest = min(joined for _, joined, _, _ in readers)
    walk = iter(conn.execute(_OWN_DESC, (conversation, lowest, marks[0], sender_id)).fetchall())
    row = next(walk, None)
    for mark in marks:
        while row is not None and row[0] > mark:
            row = next(walk, None)
        if row is None:
            break
        newest[mark] = MessageRef(int(row[0]), row[1])
    found: list[Coverage] = []
    for reader, joined, delivered, read in readers:
        got = newest.get(delivered)
        if got is None or got.seq <= joined:
            continue
        seen = newest.get(read) if read > joined else None
        if seen is not None and seen.seq <= joined:
            seen = None
        found.append(Coverage(conversation, group_id, reader, got, seen))
    return found
