"""The writes other than appends: watermarks and device cursors, groups, devices, presence.

Each runs in the writer thread inside the batch transaction (in its own SAVEPOINT when the
batch runs request by request), so a failure undoes that write alone.

Invariants (Store's, kept here):
- watermarks and device cursors only move forward, and never past the conversation's last seq;
  `read` implies `delivered`;
- a device with no cursor in a conversation stands at the user's delivered watermark, or at the
  seq before the first message accepted after it registered when that is lower;
- a user added to a group joins at its present: participants.joined_seq is the group's last seq
  then, their watermarks move up to it and their device cursors start again there.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from relay.errors import Conflict, NotFound
from relay.store.base import DeviceKeys, Group, Watermarks, group_conversation
from relay.store.sqlite.reads import get_group, last_seq


def _marks(conn: sqlite3.Connection, conversation: str, user_id: str) -> Watermarks:
    row = conn.execute(
        "SELECT delivered_seq, read_seq FROM watermarks WHERE conversation = ? AND user_id = ?",
        (conversation, user_id),
    ).fetchone()
    return Watermarks(row[0], row[1]) if row else Watermarks(0, 0)


def _set_marks(
    conn: sqlite3.Connection, conversation: str, user_id: str, delivered: int, read: int
) -> None:
    conn.execute(
        "INSERT INTO watermarks (conversation, user_id, delivered_seq, read_seq) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (conversation, user_id) DO UPDATE SET "
        "delivered_seq = excluded.delivered_seq, read_seq = excluded.read_seq",
        (conversation, user_id, delivered, read),
    )


def _device_start(
    conn: sqlite3.Connection, conversation: str, user_id: str, device_id: str, marks: Watermarks
) -> int:
    """Where a device with no cursor in `conversation` stands: the user's delivered watermark,
    or the seq before the first message accepted after the device registered when lower."""
    (first_after,) = conn.execute(
        "SELECT MIN(seq) - 1 FROM messages WHERE conversation = ? AND pos > "
        "(SELECT since_pos FROM devices WHERE user_id = ? AND device_id = ?)",
        (conversation, user_id, device_id),
    ).fetchone()
    return marks.delivered_seq if first_after is None else min(marks.delivered_seq, first_after)


def mark_delivered(
    conn: sqlite3.Connection, conversation: str, user_id: str, device_id: str, seq: int
) -> Watermarks:
    """Store.mark_delivered, in the writer's open transaction."""
    before = _marks(conn, conversation, user_id)
    seq = min(seq, last_seq(conn, conversation))
    row = conn.execute(
        "SELECT seq FROM device_cursors WHERE conversation = ? AND user_id = ? AND device_id = ?",
        (conversation, user_id, device_id),
    ).fetchone()
    start = row[0] if row else _device_start(conn, conversation, user_id, device_id, before)
    cursor = max(start, seq)
    if row is None or cursor != row[0]:
        conn.execute(
            "INSERT INTO device_cursors (conversation, user_id, device_id, seq) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (conversation, user_id, device_id) DO UPDATE SET seq = excluded.seq",
            (conversation, user_id, device_id, cursor),
        )
    if seq > before.delivered_seq:
        _set_marks(conn, conversation, user_id, seq, before.read_seq)
    return before


def mark_read(conn: sqlite3.Connection, conversation: str, user_id: str, seq: int) -> Watermarks:
    """Store.mark_read, in the writer's open transaction."""
    before = _marks(conn, conversation, user_id)
    seq = min(seq, last_seq(conn, conversation))
    if seq > before.read_seq:
        _set_marks(conn, conversation, user_id, max(before.delivered_seq, seq), seq)
    return before


def _join(conn: sqlite3.Connection, group_id: str, users: Sequence[str]) -> None:
    # A member joins at the group's present: what was said before (or while they were out of
    # the group) is history, not backlog; their devices start again at the new watermark.
    conversation = group_conversation(group_id)
    last = last_seq(conn, conversation)
    for user in users:
        conn.execute(
            "INSERT OR IGNORE INTO participants (user_id, conversation, peer_id, joined_seq) "
            "VALUES (?, ?, NULL, ?)",
            (user, conversation, last),
        )
        conn.execute(
            "DELETE FROM device_cursors WHERE conversation = ? AND user_id = ?",
            (conversation, user),
        )
        marks = _marks(conn, conversation, user)
        if marks.delivered_seq < last or marks.read_seq < last:
            _set_marks(
                conn, conversation, user, max(marks.delivered_seq, last), max(marks.read_seq, last)
            )


def create_group(conn: sqlite3.Connection, group: Group) -> Group:
    """Store.create_group, in the writer's open transaction."""
    taken = conn.execute("SELECT 1 FROM groups WHERE group_id = ?", (group.group_id,)).fetchone()
    if taken:
        raise Conflict(f"group {group.group_id!r} exists already")
    stored = Group(
        group_id=group.group_id,
        name=group.name,
        members=tuple(sorted(set(group.members))),
        created_by=group.created_by,
        created_at=group.created_at,
    )
    conn.execute(
        "INSERT INTO groups (group_id, name, created_by, created_at) VALUES (?, ?, ?, ?)",
        (stored.group_id, stored.name, stored.created_by, stored.created_at),
    )
    conn.execute(
        "INSERT OR IGNORE INTO conversations (conversation, group_id, last_seq, last_pos, updated_at) "
        "VALUES (?, ?, 0, 0, ?)",
        (group_conversation(stored.group_id), stored.group_id, stored.created_at),
    )
    _join(conn, stored.group_id, stored.members)
    return stored


def set_group_members(conn: sqlite3.Connection, group_id: str, members: Sequence[str]) -> Group:
    """Store.set_group_members, in the writer's open transaction."""
    old = get_group(conn, group_id)
    if old is None:
        raise NotFound(f"group {group_id!r} does not exist")
    new = Group(
        group_id=old.group_id,
        name=old.name,
        members=tuple(sorted(set(members))),
        created_by=old.created_by,
        created_at=old.created_at,
    )
    conversation = group_conversation(group_id)
    conn.executemany(
        "DELETE FROM participants WHERE user_id = ? AND conversation = ?",
        [(user, conversation) for user in set(old.members) - set(new.members)],
    )
    _join(conn, group_id, sorted(set(new.members) - set(old.members)))
    return new


def register_device(conn: sqlite3.Connection, user_id: str, device_id: str) -> None:
    """Store.register_device, in the writer's open transaction."""
    # In the writer's transaction: every message appended after this has a greater pos.
    conn.execute(
        "INSERT OR IGNORE INTO devices (user_id, device_id, since_pos) "
        "SELECT ?, ?, last_pos FROM positions",
        (user_id, device_id),
    )


def set_last_seen(conn: sqlite3.Connection, user_id: str, timestamp: str) -> None:
    """Store.set_last_seen, in the writer's open transaction."""
    conn.execute(
        "INSERT INTO last_seen (user_id, timestamp) VALUES (?, ?) "
        "ON CONFLICT (user_id) DO UPDATE SET timestamp = excluded.timestamp",
        (user_id, timestamp),
    )


def publish_keys(conn: sqlite3.Connection, keys: DeviceKeys) -> None:
    """KeyStore.publish_keys, in the writer's open transaction."""
    conn.execute(
        "INSERT INTO device_keys (user_id, device_id, identity_key, enc_key, signature, "
        "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, device_id) DO UPDATE SET "
        "identity_key = excluded.identity_key, enc_key = excluded.enc_key, "
        "signature = excluded.signature, updated_at = excluded.updated_at",
        (
            keys.user_id,
            keys.device_id,
            keys.identity_key,
            keys.enc_key,
            keys.signature,
            keys.updated_at,
        ),
    )
