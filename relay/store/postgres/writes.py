"""The writes other than appends: watermarks and device cursors, groups, devices, presence.

Each runs in the writer thread inside the batch transaction, in its own SAVEPOINT, so a failure
undoes that write alone. The statements are the SQLite store's (relay/store/sqlite/writes.py)
in PostgreSQL's dialect (a device's start excepted: it is found by the backlog read's bisection,
reads.before_first_after), with the same invariants:
- watermarks and device cursors only move forward, and never past the conversation's last seq;
  `read` implies `delivered`;
- a device with no cursor in a conversation stands at the user's delivered watermark, or at the
  seq before the first message accepted after it registered when that is lower;
- a user added to a group joins at its present (participants.joined_seq).

Across nodes: a watermark row is read FOR UPDATE, so two nodes moving the same user's watermark
at once are serialised and the forward-only rule holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import psycopg

from relay.errors import Conflict, NotFound
from relay.store.base import Group, Watermarks, group_conversation
from relay.store.postgres.reads import before_first_after, get_group, last_seq
from relay.store.postgres.rows import Conn

_MARKS: Final = (
    "SELECT delivered_seq, read_seq FROM watermarks WHERE conversation = %s AND user_id = %s "
    "FOR UPDATE"
)
_LAST_SEQ: Final = "SELECT last_seq FROM conversations WHERE conversation = %s"


def _marks(conn: Conn, conversation: str, user_id: str) -> Watermarks:
    row = conn.execute(_MARKS, (conversation, user_id)).fetchone()
    return Watermarks(int(row[0]), int(row[1])) if row else Watermarks(0, 0)


def _set_marks(conn: Conn, conversation: str, user_id: str, delivered: int, read: int) -> None:
    conn.execute(
        "INSERT INTO watermarks (conversation, user_id, delivered_seq, read_seq) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT (conversation, user_id) DO UPDATE SET "
        "delivered_seq = GREATEST(watermarks.delivered_seq, excluded.delivered_seq), "
        "read_seq = GREATEST(watermarks.read_seq, excluded.read_seq)",
        (conversation, user_id, delivered, read),
    )


# The seq before the first message after the device registered, looked for only up to the
# watermark (above it the watermark is the start), by reads.before_first_after's bisection:
# at most log2(watermark) + 1 probes, where MIN(seq) WHERE pos > since_pos walks all the
# conversation held before the device registered (a first mark after 11,000 messages: 301
# shared buffers and 11,005 rows read, after 500: 16 and 504; bisecting, 40 and 99, 28 and
# 70: tests/store/test_postgres.py). No row: the device is not registered.
_START: Final = (
    f"SELECT {before_first_after('%(c)s', 'v.since_pos', '0', '%(w)s')} "
    "FROM devices AS v WHERE v.user_id = %(u)s AND v.device_id = %(d)s"
)


def _device_start(
    conn: Conn, conversation: str, user_id: str, device_id: str, marks: Watermarks
) -> int:
    row = conn.execute(
        _START, {"c": conversation, "w": marks.delivered_seq, "u": user_id, "d": device_id}
    ).fetchone()
    return marks.delivered_seq if row is None else int(row[0])


#: a mark's three reads, sent and not yet fetched: watermarks (locked), last seq, device cursor
_Reads = tuple[psycopg.Cursor[Any], psycopg.Cursor[Any], psycopg.Cursor[Any]]


def _send_reads(conn: Conn, conversation: str, user_id: str, device_id: str) -> _Reads:
    return (
        conn.cursor().execute(_MARKS, (conversation, user_id)),
        conn.cursor().execute(_LAST_SEQ, (conversation,)),
        conn.cursor().execute(
            "SELECT seq FROM device_cursors WHERE conversation = %s AND user_id = %s "
            "AND device_id = %s",
            (conversation, user_id, device_id),
        ),
    )


def _delivered(
    conn: Conn, conversation: str, user_id: str, device_id: str, seq: int, reads: _Reads
) -> Watermarks:
    marks, last, cursor_row = reads
    found = marks.fetchone()
    before = Watermarks(int(found[0]), int(found[1])) if found else Watermarks(0, 0)
    tip = last.fetchone()
    seq = min(seq, int(tip[0]) if tip else 0)
    row = cursor_row.fetchone()
    start = int(row[0]) if row else _device_start(conn, conversation, user_id, device_id, before)
    cursor = max(start, seq)
    if row is None or cursor != row[0]:
        conn.execute(
            "INSERT INTO device_cursors (conversation, user_id, device_id, seq) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (conversation, user_id, device_id) "
            "DO UPDATE SET seq = GREATEST(device_cursors.seq, excluded.seq)",
            (conversation, user_id, device_id, cursor),
        )
    if seq > before.delivered_seq:
        _set_marks(conn, conversation, user_id, seq, before.read_seq)
    return before


def mark_delivered(
    conn: Conn, conversation: str, user_id: str, device_id: str, seq: int
) -> Watermarks:
    """Store.mark_delivered, in the writer's open transaction."""
    # the three reads sent before any is fetched: one round trip in pipeline mode (writer.py);
    # the watermark row is locked by the first, before the other two run
    reads = _send_reads(conn, conversation, user_id, device_id)
    return _delivered(conn, conversation, user_id, device_id, seq, reads)


def mark_delivered_many(conn: Conn, marks: Sequence[tuple[str, str, str, int]]) -> list[Watermarks]:
    """Store.mark_delivered_many, in the writer's open transaction: each mark as
    mark_delivered makes it, in order, with the reads of every mark of a round sent at once
    (one round trip in pipeline mode, not one per mark). A round holds at most one mark per
    (conversation, user): its rows are the only ones its writes touch, so a mark reads what
    the marks before it in the list wrote (a repeated key waits for the next round)."""
    answers: list[Watermarks | None] = [None] * len(marks)
    rest = list(range(len(marks)))
    while rest:
        now: list[int] = []
        later: list[int] = []
        keys: set[tuple[str, str]] = set()
        for i in rest:
            key = (marks[i][0], marks[i][1])
            (later if key in keys else now).append(i)
            keys.add(key)
        sent = [(i, _send_reads(conn, *marks[i][:3])) for i in now]
        for i, reads in sent:
            answers[i] = _delivered(conn, *marks[i], reads)
        rest = later
    return [answer for answer in answers if answer is not None]


def mark_read(conn: Conn, conversation: str, user_id: str, seq: int) -> Watermarks:
    """Store.mark_read, in the writer's open transaction."""
    marks = conn.cursor().execute(_MARKS, (conversation, user_id))  # both sent, then fetched
    last = conn.cursor().execute(_LAST_SEQ, (conversation,))
    found = marks.fetchone()
    before = Watermarks(int(found[0]), int(found[1])) if found else Watermarks(0, 0)
    tip = last.fetchone()
    seq = min(seq, int(tip[0]) if tip else 0)
    if seq > before.read_seq:
        _set_marks(conn, conversation, user_id, max(before.delivered_seq, seq), seq)
    return before


def _join(conn: Conn, group_id: str, users: Sequence[str]) -> None:
    conversation = group_conversation(group_id)
    last = last_seq(conn, conversation)
    for user in users:
        conn.execute(
            "INSERT INTO participants (user_id, conversation, peer_id, joined_seq) "
            "VALUES (%s, %s, NULL, %s) ON CONFLICT DO NOTHING",
            (user, conversation, last),
        )
        conn.execute(
            "DELETE FROM device_cursors WHERE conversation = %s AND user_id = %s",
            (conversation, user),
        )
        marks = _marks(conn, conversation, user)
        if marks.delivered_seq < last or marks.read_seq < last:
            _set_marks(
                conn, conversation, user, max(marks.delivered_seq, last), max(marks.read_seq, last)
            )


def create_group(conn: Conn, group: Group) -> Group:
    """Store.create_group, in the writer's open transaction."""
    stored = Group(
        group_id=group.group_id,
        name=group.name,
        members=tuple(sorted(set(group.members))),
        created_by=group.created_by,
        created_at=group.created_at,
    )
    inserted = conn.execute(
        "INSERT INTO groups (group_id, name, created_by, created_at) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (group_id) DO NOTHING",
        (stored.group_id, stored.name, stored.created_by, stored.created_at),
    ).rowcount
    if inserted == 0:
        raise Conflict(f"group {group.group_id!r} exists already")
    conn.execute(
        "INSERT INTO conversations (conversation, group_id, last_seq, last_pos, updated_at) "
        "VALUES (%s, %s, 0, 0, %s) ON CONFLICT DO NOTHING",
        (group_conversation(stored.group_id), stored.group_id, stored.created_at),
    )
    _join(conn, stored.group_id, stored.members)
    return stored


def set_group_members(conn: Conn, group_id: str, members: Sequence[str]) -> Group:
    """Store.set_group_members, in the writer's open transaction."""
    # the group row locked: two nodes changing one group's members take turns
    if (
        conn.execute("SELECT 1 FROM groups WHERE group_id = %s FOR UPDATE", (group_id,)).fetchone()
        is None
    ):
        raise NotFound(f"group {group_id!r} does not exist")
    old = get_group(conn, group_id)
    assert old is not None
    new = Group(
        group_id=old.group_id,
        name=old.name,
        members=tuple(sorted(set(members))),
        created_by=old.created_by,
        created_at=old.created_at,
    )
    conversation = group_conversation(group_id)
    gone = sorted(set(old.members) - set(new.members))
    if gone:
        conn.execute(
            "DELETE FROM participants WHERE conversation = %s AND user_id = ANY(%s)",
            (conversation, gone),
        )
    _join(conn, group_id, sorted(set(new.members) - set(old.members)))
    return new


def register_device(conn: Conn, user_id: str, device_id: str) -> None:
    """Store.register_device, in the writer's open transaction."""
    # positions is locked by every append transaction until it commits: reading it FOR SHARE
    # waits for appends in flight, so every message appended after this has a greater pos.
    conn.execute(
        "INSERT INTO devices (user_id, device_id, since_pos) "
        "SELECT %s, %s, last_pos FROM positions FOR SHARE ON CONFLICT DO NOTHING",
        (user_id, device_id),
    )


def set_last_seen(conn: Conn, user_id: str, timestamp: str) -> None:
    """Store.set_last_seen, in the writer's open transaction."""
    conn.execute(
        "INSERT INTO last_seen (user_id, timestamp) VALUES (%s, %s) "
        "ON CONFLICT (user_id) DO UPDATE SET timestamp = excluded.timestamp",
        (user_id, timestamp),
    )
