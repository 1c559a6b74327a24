"""The read queries: each runs on a read-only connection in a Trio worker thread, inside one
read transaction, so it sees one committed snapshot whatever the writer commits meanwhile.
`last_seq` and `get_group` also serve the writes, inside the write transaction.

Invariants:
- a read never writes (its connection has `query_only` set);
- every message SELECT lists `rows.COLUMNS`, read back by `rows.message`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Final

from relay.store.base import (
    ConversationSummary,
    Coverage,
    DeviceKeys,
    Group,
    MessageRef,
    StoredMessage,
    Watermarks,
    direct_users,
    group_conversation,
)
from relay.store.sqlite.rows import COLUMNS, IN_LIST, json_list, message


def last_seq(conn: sqlite3.Connection, conversation: str) -> int:
    row = conn.execute(
        "SELECT last_seq FROM conversations WHERE conversation = ?", (conversation,)
    ).fetchone()
    return int(row[0]) if row else 0


def get_group(conn: sqlite3.Connection, group_id: str) -> Group | None:
    row = conn.execute(
        "SELECT name, created_by, created_at FROM groups WHERE group_id = ?", (group_id,)
    ).fetchone()
    if row is None:
        return None
    members = conn.execute(
        "SELECT user_id FROM participants WHERE conversation = ?", (group_conversation(group_id),)
    ).fetchall()
    return Group(
        group_id=group_id,
        name=row[0],
        members=tuple(sorted(m[0] for m in members)),
        created_by=row[1],
        created_at=row[2],
    )


def history(
    conn: sqlite3.Connection, conversation: str, before: int | None, after: int | None, limit: int
) -> tuple[list[StoredMessage], bool]:
    limit = max(limit, 0)
    if after is not None:
        rows = conn.execute(
            f"SELECT {COLUMNS} FROM messages WHERE conversation = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (conversation, after, limit + 1),
        ).fetchall()
        return [message(r) for r in rows[:limit]], len(rows) > limit
    if before is not None:
        rows = conn.execute(
            f"SELECT {COLUMNS} FROM messages WHERE conversation = ? AND seq < ? "
            "ORDER BY seq DESC LIMIT ?",
            (conversation, before, limit + 1),
        ).fetchall()
    else:
        rows = conn.execute(
            f"SELECT {COLUMNS} FROM messages WHERE conversation = ? ORDER BY seq DESC LIMIT ?",
            (conversation, limit + 1),
        ).fetchall()
    return [message(r) for r in reversed(rows[:limit])], len(rows) > limit


_NO_SEQ: Final = 1 << 62  # above any seq


# Where a device's backlog starts in each of its user's conversations: its cursor; without one,
# the user's delivered watermark, or lower when messages came after the device registered
# (the seq before the first of them); never at or below the seq where the user (last) joined a
# group (participants.joined_seq: joining drops the user's device cursors there, and a device
# registered before would otherwise be given what was said while the user was out).
_BACKLOG_STARTS: Final = f"""
    SELECT p.conversation, MAX(p.joined_seq, COALESCE(
        (SELECT d.seq FROM device_cursors AS d
         WHERE d.conversation = p.conversation AND d.user_id = ?1 AND d.device_id = ?2),
        MIN(
            COALESCE(
                (SELECT w.delivered_seq FROM watermarks AS w
                 WHERE w.conversation = p.conversation AND w.user_id = ?1),
                0),
            COALESCE(
                (SELECT a.seq - 1 FROM devices AS v, messages AS a
                 WHERE v.user_id = ?1 AND v.device_id = ?2
                 AND a.conversation = p.conversation AND a.pos > v.since_pos
                 ORDER BY a.seq LIMIT 1),
                {_NO_SEQ}))))
    FROM participants AS p
    WHERE p.user_id = ?1
"""

# One conversation's backlog from a start, oldest first, at most ?4 positions: a walk of
# messages_by_seq from the start, never the whole backlog.
_BACKLOG_OF: Final = """
    SELECT pos FROM messages
    WHERE conversation = ?1 AND seq > ?2 AND sender_id != ?3
    ORDER BY seq
    LIMIT ?4
"""


def undelivered(
    conn: sqlite3.Connection, user_id: str, device_id: str, limit: int
) -> list[StoredMessage]:
    """The oldest `limit` of the device's backlog in acceptance order (pos) across its
    conversations. Each conversation gives at most `limit` positions from its start and the
    first `limit` of them all are read: within a conversation seq and pos grow together (the one
    writer numbers and inserts each conversation's messages in the same order), so those are
    the first `limit` of the whole backlog. One joined query ordered by pos sorted the whole
    backlog on every call: a device far behind in a busy group paid for every message it was
    owed on each page (0.55 s per page of 100 at 33,000 owed over 32 conversations, 16-22 ms
    this way, on a database of `python -m bench soak`: the cost now follows conversations x
    `limit`, not the backlog), and its reconnects starved everyone else."""
    if limit <= 0:
        return []
    positions: list[int] = []
    for conversation, after in conn.execute(_BACKLOG_STARTS, (user_id, device_id)).fetchall():
        positions.extend(
            r[0] for r in conn.execute(_BACKLOG_OF, (conversation, after, user_id, limit))
        )
    if not positions:
        return []
    positions.sort()
    del positions[limit:]
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM messages WHERE pos {IN_LIST} ORDER BY pos", (json_list(positions),)
    ).fetchall()
    return [message(r) for r in rows]


def latest_by_sender(
    conn: sqlite3.Connection, conversation: str, after_seq: int, upto_seq: int, exclude: str
) -> list[StoredMessage]:
    users = direct_users(conversation)
    if users is not None and exclude in users:
        # 1:1 seen by one of its users: every message not theirs is the peer's, so the newest
        # such one is the answer, found walking messages_by_seq back from upto_seq (one row
        # read, not every row of the range: this runs once per delivery watermark move)
        row = conn.execute(
            f"SELECT {COLUMNS} FROM messages WHERE conversation = ? AND seq > ? AND seq <= ? "
            "AND sender_id != ? ORDER BY seq DESC LIMIT 1",
            (conversation, after_seq, upto_seq, exclude),
        ).fetchone()
        return [] if row is None else [message(row)]
    # SQLite takes the bare columns of a MAX() aggregate from the row holding the maximum.
    rows = conn.execute(
        f"SELECT {COLUMNS}, MAX(seq) FROM messages WHERE conversation = ? AND seq > ? "
        "AND seq <= ? AND sender_id != ? GROUP BY sender_id",
        (conversation, after_seq, upto_seq, exclude),
    ).fetchall()
    return sorted((message(r) for r in rows), key=lambda m: m.seq)


def latest_by_sender_many(
    conn: sqlite3.Connection, queries: list[tuple[str, int, int, str]]
) -> list[list[StoredMessage]]:
    return [latest_by_sender(conn, *query) for query in queries]


def conversations(conn: sqlite3.Connection, user_id: str, limit: int) -> list[ConversationSummary]:
    rows = conn.execute(
        "SELECT c.conversation, p.peer_id, c.group_id, c.last_seq, c.updated_at, "
        "COALESCE(w.read_seq, 0) "
        "FROM participants AS p JOIN conversations AS c ON c.conversation = p.conversation "
        "LEFT JOIN watermarks AS w ON w.conversation = p.conversation AND w.user_id = p.user_id "
        "WHERE p.user_id = ? ORDER BY c.updated_at DESC, c.last_pos DESC LIMIT ?",
        (user_id, max(limit, 0)),
    ).fetchall()
    items: list[ConversationSummary] = []
    for conversation, peer_id, group_id, last_seq, updated_at, read_seq in rows:
        last = conn.execute(
            f"SELECT {COLUMNS} FROM messages WHERE conversation = ? AND seq = ?",
            (conversation, last_seq),
        ).fetchone()
        (unread,) = conn.execute(
            "SELECT COUNT(*) FROM messages WHERE conversation = ? AND seq > ? AND sender_id != ?",
            (conversation, read_seq, user_id),
        ).fetchone()
        items.append(
            ConversationSummary(
                conversation=conversation,
                peer_id=peer_id,
                group_id=group_id if peer_id is None else None,
                last_message=message(last) if last else None,
                unread=unread,
                last_seq=last_seq,
                read_seq=read_seq,
                updated_at=updated_at,
            )
        )
    return items


def contacts(conn: sqlite3.Connection, user_id: str) -> set[str]:
    rows = conn.execute(
        "SELECT DISTINCT other.user_id FROM participants AS mine "
        "JOIN participants AS other ON other.conversation = mine.conversation "
        "WHERE mine.user_id = ?1 AND other.user_id != ?1",
        (user_id,),
    ).fetchall()
    return {r[0] for r in rows}


def last_seen(conn: sqlite3.Connection, user_ids: Sequence[str]) -> dict[str, str]:
    if not user_ids:
        return {}
    rows = conn.execute(
        f"SELECT user_id, timestamp FROM last_seen WHERE user_id {IN_LIST}",
        (json_list(user_ids),),
    )
    return {r[0]: r[1] for r in rows}


def member_watermarks(conn: sqlite3.Connection, conversation: str) -> dict[str, Watermarks]:
    rows = conn.execute(
        "SELECT p.user_id, COALESCE(w.delivered_seq, 0), COALESCE(w.read_seq, 0) "
        "FROM participants AS p LEFT JOIN watermarks AS w "
        "ON w.conversation = p.conversation AND w.user_id = p.user_id "
        "WHERE p.conversation = ? ORDER BY p.user_id",
        (conversation,),
    ).fetchall()
    return {user: Watermarks(delivered, read) for user, delivered, read in rows}


# the user's conversations in the order of `conversations`: the participants key, then a sort
# of that user's rows only
_RECENT: Final = (
    "SELECT c.conversation, c.group_id "
    "FROM participants AS p JOIN conversations AS c ON c.conversation = p.conversation "
    "WHERE p.user_id = ? ORDER BY c.updated_at DESC, c.last_pos DESC"
)
# the other participants whose delivered watermark is past their join point (participants key
# prefix, then the watermarks key)
_READERS: Final = (
    "SELECT p.user_id, p.joined_seq, w.delivered_seq, w.read_seq "
    "FROM participants AS p JOIN watermarks AS w "
    "ON w.conversation = p.conversation AND w.user_id = p.user_id "
    "WHERE p.conversation = ?1 AND p.user_id != ?2 AND w.delivered_seq > p.joined_seq "
    "ORDER BY p.user_id LIMIT ?3"
)
# the sender's messages of a seq range, newest first: a backward walk of messages_by_seq
_OWN_DESC: Final = (
    "SELECT seq, id FROM messages WHERE conversation = ? AND seq > ? AND seq <= ? "
    "AND sender_id = ? ORDER BY seq DESC"
)


def coverage(conn: sqlite3.Connection, sender_id: str, limit: int) -> list[Coverage]:
    found: list[Coverage] = []
    budget = max(limit, 0)
    if budget == 0:
        return found
    recent = conn.execute(_RECENT, (sender_id,))
    try:
        for conversation, group_id in recent:
            readers = conn.execute(_READERS, (conversation, sender_id, budget)).fetchall()
            if not readers:
                continue
            found += _covered(conn, conversation, group_id, sender_id, readers)
            budget -= len(readers)
            if budget == 0:
                break
    finally:
        recent.close()
    return found


def _covered(
    conn: sqlite3.Connection,
    conversation: str,
    group_id: str | None,
    sender_id: str,
    readers: list[tuple[str, int, int, int]],
) -> list[Coverage]:
    """The Coverage of each reader (user, joined_seq, delivered_seq, read_seq) in one
    conversation. One walk serves them all: the sender's messages from the highest watermark
    down, consumed by the watermarks in decreasing order; it stops at the sender's newest message
    at or below the lowest watermark (or at the lowest join point). Its cost is the messages of
    others it passes (messages_by_seq, then each row's sender_id): no index by sender is kept,
    as every append would pay for it."""
    marks = sorted(
        {d for _, _, d, _ in readers} | {r for _, j, _, r in readers if r > j}, reverse=True
    )
    newest: dict[int, MessageRef] = {}
    lowest = min(joined for _, joined, _, _ in readers)
    walk = conn.execute(_OWN_DESC, (conversation, lowest, marks[0], sender_id))
    try:
        row = walk.fetchone()
        for mark in marks:
            while row is not None and row[0] > mark:
                row = walk.fetchone()
            if row is None:
                break
            newest[mark] = MessageRef(row[0], row[1])
    finally:
        walk.close()
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


def device_keys(conn: sqlite3.Connection, user_id: str) -> list[DeviceKeys]:
    """KeyStore.device_keys."""
    rows = conn.execute(
        "SELECT user_id, device_id, identity_key, enc_key, signature, updated_at "
        "FROM device_keys WHERE user_id = ? ORDER BY device_id",
        (user_id,),
    ).fetchall()
    return [DeviceKeys(*row) for row in rows]
