"""SqliteStore: the durable Store, on the standard library's sqlite3 (WAL, synchronous=NORMAL).

Threads: ONE writer thread owns the write connection and does every write. Trio tasks hand it
requests through a bounded queue (a trio.Semaphore keeps the queue from ever being full, so the
event loop never blocks on it) and wait on a per-request trio.Event that the writer sets through
`TrioToken.run_sync_soon` once the request's transaction has committed. Reads run on a small pool
of read-only connections in Trio worker threads (`trio.to_thread.run_sync`). A checkpointer thread
with its own connection copies committed WAL pages into the database file after commits (at most
every `checkpoint_interval`), so the writer does not stop for checkpoints and the WAL stays
small. The event loop never waits on the database.

Group commit: the writer takes everything queued (up to `max_batch` messages), waiting at most
`commit_interval` for more (only while such waits bring more: see `_Writer._gather`), and runs
it in one transaction. The batch's appends go first, together (`_append_fused`: multi-row
INSERTs in one SAVEPOINT); if any row was not inserted (a duplicate, a taken seq) or a statement
failed, that savepoint is undone and every request runs alone, each inside its own SAVEPOINT,
so that one request's failure (a taken group id, a message too big for the disk) does not undo
the others. The batch's requests were all pending at once, so running its appends before its
other writes is a valid order. Results are handed back only after COMMIT: `append_many` returns
only when its messages are durable. In WAL mode with synchronous=NORMAL a committed transaction
survives the process being killed (not necessarily a power loss).

Invariants:
- seq comes from `conversations.last_seq`, advanced inside the writer's transaction, so it is
  gapless and never reused, across restarts and retention alike (and even with a second process
  writing the same file: SQLite's write lock serialises the transactions). The writer remembers
  the last_seqs it committed; that copy is used only while `PRAGMA data_version` (read inside
  the write transaction) shows no other connection committed since, and the unique
  (conversation, seq) index refuses a stale one anyway (the batch then runs request by request,
  reading the counters from the table).
- the idempotency check is the unique `messages (id, sender_id)` index, in the same transaction
  that inserts.
- a request whose transaction did not commit (disk full, I/O error, lock timeout) fails with
  StoreError; nothing it asked for is reported as done.

Retention (relay/store/retention.py) runs in the writer thread between batches, never inside an
append.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, TypeVar, cast

import orjson
import trio
from attrs import define, field

from relay.errors import Conflict, NotFound, StoreError, StoreUnavailable
from relay.fastpath import ROW_OPTIONAL, sqlite_rows
from relay.store.base import (
    Appended,
    ConversationSummary,
    Coverage,
    Group,
    MessageRef,
    NewMessage,
    StoredMessage,
    Watermarks,
    direct_users,
    group_conversation,
)
from relay.store.migrations import SchemaMismatch, migrate
from relay.store.retention import RetentionJob

log = logging.getLogger("relay.store")

T = TypeVar("T")

_COLUMNS: Final = (
    "conversation, seq, id, sender_id, text, server_timestamp, recipient_id, group_id, "
    "sender_name, sender_avatar, client_timestamp, meta"
)

_REASONS: Final = {
    "SQLITE_BUSY": "the database is locked by another connection (busy timeout passed)",
    "SQLITE_LOCKED": "the database is locked",
    "SQLITE_READONLY": "the database is read-only (file, directory or filesystem)",
    "SQLITE_NOTADB": "the file is not a SQLite database (corrupt or another kind of file)",
    "SQLITE_CORRUPT": "the database file is corrupt",
    "SQLITE_CANTOPEN": "the file cannot be opened (missing directory or no permission)",
    "SQLITE_FULL": "the disk (or the database's page limit) is full",
    "SQLITE_IOERR": "an I/O error occurred",
    "SQLITE_PERM": "permission denied",
}


def _describe(error: sqlite3.Error) -> str:
    name = getattr(error, "sqlite_errorname", "")
    for prefix, reason in _REASONS.items():
        if name.startswith(prefix):
            return f"{reason} [{name}: {error}]"
    return f"{error} [{name or type(error).__name__}]"


def _message(row: Sequence[Any]) -> StoredMessage:
    return StoredMessage(
        conversation=row[0],
        seq=row[1],
        id=row[2],
        sender_id=row[3],
        text=row[4],
        server_timestamp=row[5],
        recipient_id=row[6],
        group_id=row[7],
        sender_name=row[8],
        sender_avatar=row[9],
        client_timestamp=row[10],
        meta=orjson.loads(row[11]) if row[11] is not None else None,
    )


# --- writes (writer thread, inside the batch transaction) -----------------------------------------


def _last_seq(conn: sqlite3.Connection, conversation: str) -> int:
    row = conn.execute(
        "SELECT last_seq FROM conversations WHERE conversation = ?", (conversation,)
    ).fetchone()
    return int(row[0]) if row else 0


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


@define
class _Tip:
    """A conversation while a transaction appends to it: whether its row exists, and its
    counters, [last_seq, last_pos, updated_at], moved as its messages are numbered (in place by
    fastpath.sqlite_rows in a fused append); last_pos 0 means none was appended yet."""

    exists: bool
    group_id: str | None
    counters: list[Any]


#: the greatest message pos ever given, and moving it on (migration 5: a pos is never reused,
#: even once retention has deleted the messages above it)
_LAST_POS: Final = "SELECT last_pos FROM positions"
_MOVE_POS: Final = "UPDATE positions SET last_pos = ?"


def _append(conn: sqlite3.Connection, messages: Sequence[NewMessage]) -> list[Appended]:
    tips: dict[str, _Tip] = {}
    results: list[Appended] = []
    (pos,) = conn.execute(_LAST_POS).fetchone()
    first_pos = pos
    for m in messages:
        tip = tips.get(m.conversation)
        if tip is None:
            found = conn.execute(
                "SELECT last_seq FROM conversations WHERE conversation = ?", (m.conversation,)
            ).fetchone()
            tip = _Tip(found is not None, m.group_id, [found[0] if found else 0, 0, ""])
            tips[m.conversation] = tip
        seq = tip.counters[0] + 1
        meta = orjson.dumps(m.meta).decode() if m.meta is not None else None
        # One statement per message: the unique (sender_id, id) index is the idempotency check.
        cursor = conn.execute(
            f"INSERT OR IGNORE INTO messages (pos, {_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                pos + 1,
                m.conversation,
                seq,
                m.id,
                m.sender_id,
                m.text,
                m.server_timestamp,
                m.recipient_id,
                m.group_id,
                m.sender_name,
                m.sender_avatar,
                m.client_timestamp,
                meta,
            ),
        )
        if cursor.rowcount == 0:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE sender_id = ? AND id = ?",
                (m.sender_id, m.id),
            ).fetchone()
            if row is None:  # ignored for another reason: (conversation, seq) was taken
                raise StoreError(f"seq {seq} of {m.conversation!r} is taken; the counter is off")
            results.append(Appended(_message(row), duplicate=True))
            continue
        if not tip.exists and tip.counters[1] == 0 and m.group_id is None:
            recipient = m.recipient_id if m.recipient_id is not None else m.sender_id
            conn.executemany(
                "INSERT OR IGNORE INTO participants (user_id, conversation, peer_id) "
                "VALUES (?, ?, ?)",
                [
                    (m.sender_id, m.conversation, recipient),
                    (recipient, m.conversation, m.sender_id),
                ],
            )
        pos += 1
        tip.counters[:] = [seq, pos, m.server_timestamp]
        results.append(Appended(m.stored(seq), duplicate=False))
    if pos != first_pos:
        conn.execute(_MOVE_POS, (pos,))
    for conversation, tip in tips.items():
        if tip.counters[1] == 0:
            continue  # only duplicates: nothing moved
        if tip.exists:
            conn.execute(
                "UPDATE conversations SET last_seq = ?, last_pos = ?, updated_at = ? "
                "WHERE conversation = ?",
                (*tip.counters, conversation),
            )
        else:
            conn.execute(
                "INSERT INTO conversations (conversation, group_id, last_seq, last_pos, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (conversation, tip.group_id, *tip.counters),
            )
    return results


#: the columns every message sets, in the order of its parameters (then ROW_OPTIONAL's it has)
_BASE: Final = ("pos", "conversation", "seq", "id", "sender_id", "text", "server_timestamp")
_BASE_COLUMNS: Final = len(_BASE)
_CHUNK: Final = 128  # rows per multi-row statement at most (x 13 parameters << SQLite's 32766)
_inserts: dict[tuple[int, int], str] = {}
_UPDATE_TIPS: Final = (
    "UPDATE conversations SET last_seq = v.column2, last_pos = v.column3, updated_at = v.column4 "
    "FROM (VALUES {}) AS v WHERE conversations.conversation = v.column1"
)
_updates: dict[int, str] = {}


def _runs(params: list[Any], width: int) -> Iterator[tuple[int, list[Any]]]:
    """Rows laid end to end in `params` (`width` parameters each), in runs whose lengths are
    powers of two (up to `_CHUNK`), each as (length, its parameters): a few cached statements
    cover any count. One statement per run rather than one step per row matters beyond its own
    cost: sqlite3 releases the GIL around every step, and with the Trio thread on the same core
    each release can cost a thread switch."""
    start, total = 0, len(params) // width
    while start < total:
        size = min(_CHUNK, 1 << ((total - start).bit_length() - 1))
        yield size, params[start * width : (start + size) * width]
        start += size


def _insert_messages(present: int, size: int) -> str:
    """The INSERT of `size` messages whose optional columns set are the bits of `present` (bit
    i: `ROW_OPTIONAL[i]`). The others are left out, so they are NULL without binding None: sqlite3
    binds None through its adaptation lookup, which costs about as much as the row's insert."""
    sql = _inserts.get((present, size))
    if sql is None:
        names = [name for bit, name in enumerate(ROW_OPTIONAL) if present >> bit & 1]
        columns = ", ".join([*_BASE, *names])
        values = ", ".join([f"({', '.join('?' * (_BASE_COLUMNS + len(names)))})"] * size)
        sql = f"INSERT OR IGNORE INTO messages ({columns}) VALUES {values}"
        _inserts[(present, size)] = sql
    return sql


def _update_tips(size: int) -> str:
    sql = _updates.get(size)
    if sql is None:
        sql = _updates[size] = _UPDATE_TIPS.format(", ".join(["(?, ?, ?, ?)"] * size))
    return sql


def _append_fused(
    conn: sqlite3.Connection, requests: Sequence[Sequence[NewMessage]], known: dict[str, int]
) -> tuple[list[list[Appended]], dict[str, int]] | None:
    """Every message of several append requests in a few multi-row statements, in order.

    `known` maps conversations to their committed `last_seq` (rows that exist). Returns each
    request's results and the conversations' new last_seq, or None when a message was not
    inserted (a duplicate, or a (conversation, seq) taken): the caller then undoes this and
    runs the requests one by one, which sorts such cases out. Runs in the caller's savepoint.
    """
    tips: dict[str, _Tip] = {}
    peers: list[tuple[str, str, str]] = []

    def tip_of(m: NewMessage) -> list[Any]:
        """The counters of m's conversation (its first message in this batch)."""
        conversation = m.conversation
        last = known.get(conversation)
        if last is None:
            found = conn.execute(
                "SELECT last_seq FROM conversations WHERE conversation = ?", (conversation,)
            ).fetchone()
            tip = _Tip(found is not None, m.group_id, [found[0] if found else 0, 0, ""])
        else:
            tip = _Tip(True, m.group_id, [last, 0, ""])
        tips[conversation] = tip
        if not tip.exists and m.group_id is None:
            peer = m.recipient_id if m.recipient_id is not None else m.sender_id
            peers.append((m.sender_id, conversation, peer))
            peers.append((peer, conversation, m.sender_id))
        return tip.counters

    (first_pos,) = conn.execute(_LAST_POS).fetchone()
    # the per-message work, compiled (fastpath.sqlite_rows): numbering, rows, answers
    rows, answers, pos = sqlite_rows(requests, tip_of, first_pos, StoredMessage, Appended)
    count = pos - first_pos
    # The unique indexes are the idempotency and counter checks: every row went in, or this
    # attempt is void. (`pos` is explicit, so the order of the statements does not matter.)
    inserted = 0
    for present, params in rows.items():
        for size, values in _runs(params, _BASE_COLUMNS + present.bit_count()):
            inserted += conn.execute(_insert_messages(present, size), values).rowcount
    if inserted != count:
        return None
    conn.execute(_MOVE_POS, (pos,))
    if peers:
        conn.executemany(
            "INSERT OR IGNORE INTO participants (user_id, conversation, peer_id) VALUES (?, ?, ?)",
            peers,
        )
    moved = [value for c, t in tips.items() if t.exists for value in (c, *t.counters)]
    for size, values in _runs(moved, 4):
        conn.execute(_update_tips(size), values)
    conn.executemany(
        "INSERT INTO conversations (conversation, group_id, last_seq, last_pos, updated_at) "
        "VALUES (?, ?, ?, ?, ?)",
        [(c, t.group_id, *t.counters) for c, t in tips.items() if not t.exists],
    )
    return answers, {c: t.counters[0] for c, t in tips.items()}


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


def _mark_delivered(
    conn: sqlite3.Connection, conversation: str, user_id: str, device_id: str, seq: int
) -> Watermarks:
    before = _marks(conn, conversation, user_id)
    seq = min(seq, _last_seq(conn, conversation))
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


def _mark_read(conn: sqlite3.Connection, conversation: str, user_id: str, seq: int) -> Watermarks:
    before = _marks(conn, conversation, user_id)
    seq = min(seq, _last_seq(conn, conversation))
    if seq > before.read_seq:
        _set_marks(conn, conversation, user_id, max(before.delivered_seq, seq), seq)
    return before


def _join(conn: sqlite3.Connection, group_id: str, users: Sequence[str]) -> None:
    # A member joins at the group's present: what was said before (or while they were out of
    # the group) is history, not backlog; their devices start again at the new watermark.
    conversation = group_conversation(group_id)
    last = _last_seq(conn, conversation)
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


def _create_group(conn: sqlite3.Connection, group: Group) -> Group:
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


def _set_group_members(conn: sqlite3.Connection, group_id: str, members: Sequence[str]) -> Group:
    old = _get_group(conn, group_id)
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


def _register_device(conn: sqlite3.Connection, user_id: str, device_id: str) -> None:
    # In the writer's transaction: every message appended after this has a greater pos.
    conn.execute(
        "INSERT OR IGNORE INTO devices (user_id, device_id, since_pos) "
        "SELECT ?, ?, last_pos FROM positions",
        (user_id, device_id),
    )


def _set_last_seen(conn: sqlite3.Connection, user_id: str, timestamp: str) -> None:
    conn.execute(
        "INSERT INTO last_seen (user_id, timestamp) VALUES (?, ?) "
        "ON CONFLICT (user_id) DO UPDATE SET timestamp = excluded.timestamp",
        (user_id, timestamp),
    )


# --- reads (a read connection in a worker thread, inside one read transaction) --------------------


def _get_group(conn: sqlite3.Connection, group_id: str) -> Group | None:
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


def _history(
    conn: sqlite3.Connection, conversation: str, before: int | None, after: int | None, limit: int
) -> tuple[list[StoredMessage], bool]:
    limit = max(limit, 0)
    if after is not None:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE conversation = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (conversation, after, limit + 1),
        ).fetchall()
        return [_message(r) for r in rows[:limit]], len(rows) > limit
    if before is not None:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE conversation = ? AND seq < ? "
            "ORDER BY seq DESC LIMIT ?",
            (conversation, before, limit + 1),
        ).fetchall()
    else:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE conversation = ? ORDER BY seq DESC LIMIT ?",
            (conversation, limit + 1),
        ).fetchall()
    return [_message(r) for r in reversed(rows[:limit])], len(rows) > limit


_NO_SEQ: Final = 1 << 62  # above any seq


# Where a device's backlog starts in each of its user's conversations: its cursor; without one,
# the user's delivered watermark, or lower when messages came after the device registered
# (the seq before the first of them).
_UNDELIVERED: Final = f"""
    SELECT {", ".join("m." + c.strip() for c in _COLUMNS.split(","))}
    FROM participants AS p
    JOIN messages AS m ON m.conversation = p.conversation AND m.seq > COALESCE(
        (SELECT d.seq FROM device_cursors AS d
         WHERE d.conversation = p.conversation AND d.user_id = ?1 AND d.device_id = ?2),
        MIN(
            COALESCE(
                (SELECT w.delivered_seq FROM watermarks AS w
                 WHERE w.conversation = p.conversation AND w.user_id = ?1),
                0),
            COALESCE(
                (SELECT MIN(a.seq) - 1 FROM messages AS a
                 WHERE a.conversation = p.conversation AND a.pos > (
                     SELECT v.since_pos FROM devices AS v
                     WHERE v.user_id = ?1 AND v.device_id = ?2)),
                {_NO_SEQ})))
    WHERE p.user_id = ?1 AND m.sender_id != ?1
    ORDER BY m.pos
    LIMIT ?3
"""


def _undelivered(
    conn: sqlite3.Connection, user_id: str, device_id: str, limit: int
) -> list[StoredMessage]:
    rows = conn.execute(_UNDELIVERED, (user_id, device_id, max(limit, 0))).fetchall()
    return [_message(r) for r in rows]


def _latest_by_sender(
    conn: sqlite3.Connection, conversation: str, after_seq: int, upto_seq: int, exclude: str
) -> list[StoredMessage]:
    users = direct_users(conversation)
    if users is not None and exclude in users:
        # 1:1 seen by one of its users: every message not theirs is the peer's, so the newest
        # such one is the answer, found walking messages_by_seq back from upto_seq (one row
        # read, not every row of the range: this runs once per delivery watermark move)
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE conversation = ? AND seq > ? AND seq <= ? "
            "AND sender_id != ? ORDER BY seq DESC LIMIT 1",
            (conversation, after_seq, upto_seq, exclude),
        ).fetchone()
        return [] if row is None else [_message(row)]
    # SQLite takes the bare columns of a MAX() aggregate from the row holding the maximum.
    rows = conn.execute(
        f"SELECT {_COLUMNS}, MAX(seq) FROM messages WHERE conversation = ? AND seq > ? "
        "AND seq <= ? AND sender_id != ? GROUP BY sender_id",
        (conversation, after_seq, upto_seq, exclude),
    ).fetchall()
    return sorted((_message(r) for r in rows), key=lambda m: m.seq)


def _latest_by_sender_many(
    conn: sqlite3.Connection, queries: list[tuple[str, int, int, str]]
) -> list[list[StoredMessage]]:
    return [_latest_by_sender(conn, *query) for query in queries]


def _conversations(conn: sqlite3.Connection, user_id: str, limit: int) -> list[ConversationSummary]:
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
            f"SELECT {_COLUMNS} FROM messages WHERE conversation = ? AND seq = ?",
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
                last_message=_message(last) if last else None,
                unread=unread,
                last_seq=last_seq,
                read_seq=read_seq,
                updated_at=updated_at,
            )
        )
    return items


def _contacts(conn: sqlite3.Connection, user_id: str) -> set[str]:
    rows = conn.execute(
        "SELECT DISTINCT other.user_id FROM participants AS mine "
        "JOIN participants AS other ON other.conversation = mine.conversation "
        "WHERE mine.user_id = ?1 AND other.user_id != ?1",
        (user_id,),
    ).fetchall()
    return {r[0] for r in rows}


def _last_seen(conn: sqlite3.Connection, user_ids: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    unique = list(dict.fromkeys(user_ids))
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT user_id, timestamp FROM last_seen WHERE user_id IN ({marks})", chunk
        ).fetchall()
        found.update({r[0]: r[1] for r in rows})
    return found


def _watermarks(conn: sqlite3.Connection, conversation: str, user_id: str) -> Watermarks:
    return _marks(conn, conversation, user_id)


def _member_watermarks(conn: sqlite3.Connection, conversation: str) -> dict[str, Watermarks]:
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


def _coverage(conn: sqlite3.Connection, sender_id: str, limit: int) -> list[Coverage]:
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


# --- the writer thread ----------------------------------------------------------------------------


@define(eq=False)
class _Request:
    """One write: `work` runs in the writer thread inside the batch transaction."""

    work: Callable[[sqlite3.Connection], Any]
    weight: int  # messages it appends (1 for other writes): what `max_batch` counts
    # set for an append: its messages, which the writer may store together with other appends'
    # (`work` does the same alone)
    messages: Sequence[NewMessage] | None = None
    # how the Trio side learns the outcome: an awaited write's event, or append_soon's callback
    done: trio.Event | None = None
    on_done: Callable[[Any, BaseException | None], None] | None = None
    result: Any = None
    error: BaseException | None = None


_STOP: Final = object()
_CHECKPOINT_PAGES: Final = 10_000  # WAL pages (of 4 kB) between automatic checkpoints
_PROBE_EVERY: Final = 16  # batches between trial waits while waiting does not pay


@define(eq=False)
class _Writer:
    conn: sqlite3.Connection
    requests: queue.Queue[_Request | object]
    token: trio.lowlevel.TrioToken
    resolve: Callable[[list[_Request]], None]  # runs in the Trio thread
    commit_interval: float
    max_batch: int
    retention: RetentionJob
    checkpointer: _Checkpointer | None = None
    _wait_pays: bool = field(default=True, init=False)  # the last wait brought requests
    # conversation -> its committed last_seq, as of `_data_version`; only this connection
    # writes in between (another connection's commit changes data_version, and then it is dropped)
    _known: dict[str, int] = field(factory=dict, init=False)
    _data_version: int = field(default=-1, init=False)
    _since_wait: int = field(default=0, init=False)  # batches since the last wait

    def run(self) -> None:
        try:
            while True:
                try:
                    first = self.requests.get(timeout=self.retention.seconds_until_due())
                except queue.Empty:
                    self._retention()
                    continue
                if first is _STOP:
                    return
                batch, stop = self._gather(cast(_Request, first))
                self._execute(batch)
                if stop:
                    return
                if self.retention.seconds_until_due() == 0 and self.requests.empty():
                    self._retention()
        finally:
            self._fail_queued()
            self.conn.close()

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        """`first` and everything queued after it, up to `max_batch` messages; then, if waiting
        pays, up to `commit_interval` more for further requests.

        Waiting pays when requests arrive during the wait. When every writer is already in the
        batch (each awaits its result before writing again), nothing can arrive and the wait is
        pure latency: after a wait that brought nothing the writer stops waiting, and tries a
        wait again every `_PROBE_EVERY` batches.
        """
        batch = [first]
        weight = first.weight
        stop = False

        def take(item: object) -> None:
            nonlocal weight, stop
            if item is _STOP:
                stop = True
            else:
                request = cast(_Request, item)
                batch.append(request)
                weight += request.weight

        while weight < self.max_batch and not stop:
            try:
                take(self.requests.get_nowait())
            except queue.Empty:
                break
        self._since_wait += 1
        if stop or weight >= self.max_batch or self.commit_interval <= 0:
            return batch, stop
        if not self._wait_pays and self._since_wait < _PROBE_EVERY:
            return batch, stop
        self._since_wait = 0
        before = len(batch)
        until = time.monotonic() + self.commit_interval
        while weight < self.max_batch and not stop:
            remaining = until - time.monotonic()
            if remaining <= 0:
                break
            try:
                take(self.requests.get(timeout=remaining))
            except queue.Empty:
                break
        self._wait_pays = len(batch) > before
        return batch, stop

    def _execute(self, batch: list[_Request]) -> None:
        try:
            self._transaction(batch)
        except BaseException as exc:  # a bug here must not leave Trio tasks waiting forever
            for request in batch:
                if request.error is None:
                    request.result = None
                    request.error = StoreError(f"store write failed: {exc!r}")
            if not isinstance(exc, Exception):
                raise
            log.exception("store writer failed a batch")
        finally:
            self._hand_back(batch)

    def _transaction(self, batch: list[_Request]) -> None:
        conn = self.conn
        if conn.in_transaction:  # left open by a failed ROLLBACK: start from a clean slate
            conn.execute("ROLLBACK")
        done: list[_Request] = []  # requests whose work stands in the open transaction
        pending = list(batch)
        staged: dict[str, int] | None = None  # last_seqs the fused appends leave, if they stand
        began = False  # a transaction is open (with `done` in it) that the loop must finish
        appends = [r for r in batch if r.messages is not None]
        if appends:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self._fail(pending, f"could not start a write: {_describe(exc)}")
                return
            began = True
            staged = self._fused(appends)
            if staged is not None:
                done = appends
                pending = [r for r in batch if r.messages is None]
            elif not conn.in_transaction:
                began = False
        while pending or began:
            if not began:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:
                    self._fail(pending, f"could not start a write: {_describe(exc)}")
                    return
            began = False
            while pending:
                request = pending.pop(0)
                if request.messages is not None:
                    staged = None  # appended one by one: the counters cached may be behind
                    self._known.clear()
                try:
                    conn.execute("SAVEPOINT request")
                    request.result = request.work(conn)
                    conn.execute("RELEASE request")
                    done.append(request)
                except Exception as exc:
                    request.result = None
                    request.error = (
                        exc
                        if isinstance(exc, StoreError)
                        else StoreError(
                            _describe(exc) if isinstance(exc, sqlite3.Error) else repr(exc)
                        )
                    )
                    if conn.in_transaction:
                        try:
                            conn.execute("ROLLBACK TO request")
                            conn.execute("RELEASE request")
                        except sqlite3.Error:
                            conn.execute("ROLLBACK")
                    if not conn.in_transaction:
                        # SQLite undid the whole transaction (disk full, I/O error): nothing done
                        # in it stands. The requests before this one run again (one by one) in
                        # a new transaction; this one has failed. Each round drops one request,
                        # so it ends.
                        for earlier in done:
                            earlier.result = None
                        pending[:0] = done
                        done = []
                        staged = None
                        break
            else:
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    self._known.clear()
                    self._fail(done, f"commit failed: {_describe(exc)}")
                    return
                if staged is not None:
                    self._known.update(staged)
                if self.checkpointer is not None:
                    self.checkpointer.nudge()
                return

    def _fused(self, appends: list[_Request]) -> dict[str, int] | None:
        """Run the append requests together inside the open transaction, in a savepoint. On
        success their results are set and the conversations' new last_seqs returned; otherwise
        nothing of it stands (the transaction may be gone, if SQLite undid it) and None."""
        conn = self.conn
        try:
            (version,) = conn.execute("PRAGMA data_version").fetchone()
            if version != self._data_version:  # another connection committed: counters may move
                self._known.clear()
                self._data_version = version
            conn.execute("SAVEPOINT fused")
            outcome = _append_fused(
                conn, [cast(Sequence[NewMessage], r.messages) for r in appends], self._known
            )
            if outcome is None:
                conn.execute("ROLLBACK TO fused")
            conn.execute("RELEASE fused")
        except Exception:  # the requests run one by one next, which sorts out whose fault it was
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK TO fused")
                    conn.execute("RELEASE fused")
                except sqlite3.Error:
                    conn.execute("ROLLBACK")
            return None
        if outcome is None:
            return None
        answers, tips = outcome
        for request, results in zip(appends, answers, strict=True):
            request.result = results
        return tips

    @staticmethod
    def _fail(requests: list[_Request], reason: str) -> None:
        for request in requests:
            request.result = None
            request.error = StoreError(reason)

    def _hand_back(self, batch: list[_Request]) -> None:
        with contextlib.suppress(trio.RunFinishedError):  # else nobody is waiting any more
            self.token.run_sync_soon(self.resolve, batch)

    def _retention(self) -> None:
        try:
            gone = self.retention.run_chunk(self.conn)
        except sqlite3.Error as exc:
            log.warning("retention failed, retrying later: %s", _describe(exc))
            return
        if gone:
            log.info("retention deleted %d messages", gone)

    def _fail_queued(self) -> None:
        left: list[_Request] = []
        while True:
            try:
                item = self.requests.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                left.append(cast(_Request, item))
        if left:
            self._fail(left, "the store is closed")
            self._hand_back(left)


@define(eq=False)
class _Checkpointer:
    """Copies committed WAL pages into the database file in its own thread and connection, so
    the writer never stops for a checkpoint. Left to the writer, a checkpoint of the 40 MB WAL
    held every commit back for up to 0.3 s (the durable bench's p99 was 250-330 ms; with this,
    about 80 ms and a fifth more msg/s). Small, frequent checkpoints also let the writer restart
    the WAL from its start often, so the WAL and its index stay small and cached.

    Invariant: only PASSIVE checkpoints, which wait for no lock and block no reader or writer;
    the writer's own automatic checkpoint (wal_autocheckpoint) stays as the bound on the WAL,
    and finds little left to copy while this keeps up. Nudged by the writer after each commit,
    it runs at most once per `interval`."""

    conn: sqlite3.Connection
    interval: float
    _nudged: threading.Event = field(factory=threading.Event, init=False)
    _stopping: threading.Event = field(factory=threading.Event, init=False)

    def nudge(self) -> None:
        self._nudged.set()

    def stop(self) -> None:
        self._stopping.set()
        self._nudged.set()

    def run(self) -> None:
        try:
            while True:
                self._nudged.wait()
                if self._stopping.is_set():
                    return
                self._nudged.clear()
                try:
                    self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:
                    log.warning("background checkpoint failed, retrying later: %s", _describe(exc))
                if self._stopping.wait(self.interval):
                    return
        finally:
            self.conn.close()


# --- the store ------------------------------------------------------------------------------------


class SqliteStore:
    """The durable Store on one SQLite file. `open()` before use, `close()` after (idempotent);
    every call between them from the same Trio run (the writer answers through its TrioToken).

    `commit_interval`: how long the writer waits for more requests before committing a batch.
    `busy_timeout`: how long a write waits for a lock held by another process before failing.
    `max_batch`: messages per transaction at most. `max_pending`: write requests queued at most
    (further writers wait in Trio). `readers`: read connections (and worker threads) at most.
    `pragmas`: extra `PRAGMA name = value` for every connection, applied after migration (e.g.
    `cache_size`, or `max_page_count` to bound the file size). `check_on_open`: run SQLite's
    `quick_check` at open, so a corrupt file is refused then rather than failing writes later
    (it reads the whole file: about 0.2 s per 100 MB when cached). `checkpoint_interval`: how
    often at most a background thread copies committed WAL pages into the database file
    (_Checkpointer), so that commits never wait for a checkpoint; None leaves it to the writer's
    automatic checkpoint alone.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        commit_interval: float = 0.002,
        busy_timeout: float = 5.0,
        max_batch: int = 2000,
        max_pending: int = 10_000,
        readers: int = 2,
        retention_days: float | None = None,
        retention_max_messages: int | None = None,
        retention_interval: float = 60.0,
        pragmas: Sequence[tuple[str, int | str]] = (),
        check_on_open: bool = True,
        checkpoint_interval: float | None = 0.05,
    ) -> None:
        if checkpoint_interval is not None and checkpoint_interval < 0:
            raise ValueError("checkpoint_interval must be >= 0 (or None)")
        self.path = os.fspath(path)
        self.checkpoint_interval = checkpoint_interval
        self.commit_interval = commit_interval
        self.busy_timeout = busy_timeout
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.retention = RetentionJob(
            retention_days, retention_max_messages, interval=retention_interval
        )
        self._pragmas = tuple(pragmas)
        self.check_on_open = check_on_open
        self._state = "new"  # new -> open -> closing -> closed
        self._requests: queue.Queue[_Request | object] = queue.Queue(max_pending + 1)
        self._slots = trio.Semaphore(max_pending)
        self._reader_count = readers
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._read_limiter = trio.CapacityLimiter(readers)
        self._thread: threading.Thread | None = None
        self._checkpointer: _Checkpointer | None = None
        self._checkpoint_thread: threading.Thread | None = None
        self._closed = trio.Event()

    # --- lifecycle ------------------------------------------------------------------------------
    async def open(self) -> None:
        if self._state == "open":
            return
        if self._state != "new":
            raise StoreError("a closed SqliteStore cannot be opened again; make a new one")
        token = trio.lowlevel.current_trio_token()
        conn, readers, checkpoint_conn = await trio.to_thread.run_sync(self._connect)
        checkpointer = None
        if checkpoint_conn is not None:
            assert self.checkpoint_interval is not None
            checkpointer = self._checkpointer = _Checkpointer(
                checkpoint_conn, self.checkpoint_interval
            )
            self._checkpoint_thread = threading.Thread(
                target=checkpointer.run, name="relay-sqlite-checkpointer", daemon=True
            )
            self._checkpoint_thread.start()
        for reader in readers:
            self._readers.put(reader)
        writer = _Writer(
            conn=conn,
            requests=self._requests,
            token=token,
            resolve=self._resolve,
            commit_interval=self.commit_interval,
            max_batch=self.max_batch,
            retention=self.retention,
            checkpointer=checkpointer,
        )
        self._thread = threading.Thread(target=writer.run, name="relay-sqlite-writer", daemon=True)
        self._thread.start()
        self._state = "open"

    def _connect(
        self,
    ) -> tuple[sqlite3.Connection, list[sqlite3.Connection], sqlite3.Connection | None]:
        where = f"cannot open the database {self.path!r}"
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise StoreUnavailable(f"{where}: the directory {directory!r} does not exist")
        opened: list[sqlite3.Connection] = []
        try:
            conn = self._connection()
            opened.append(conn)
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if str(mode).lower() != "wal":
                raise StoreUnavailable(
                    f"{where}: cannot switch it to WAL mode (journal_mode is {mode!r}); "
                    "is the file or its directory read-only?"
                )
            conn.execute("PRAGMA synchronous = NORMAL")
            # Checkpoint every ~40 MB of WAL rather than SQLite's 4 MB: the pages appends keep
            # rewriting (the tails of the table and indexes) are copied to the file once per
            # checkpoint, not once per 4 MB, and the checkpoint's fsyncs stall commits 10x less
            # often. The WAL file is cut back to 64 MB when it restarts.
            conn.execute(f"PRAGMA wal_autocheckpoint = {_CHECKPOINT_PAGES}")
            conn.execute(f"PRAGMA journal_size_limit = {64 << 20}")
            if self.check_on_open:
                problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
                if problems != ["ok"]:
                    raise StoreUnavailable(
                        f"{where}: the database file is corrupt (quick_check: {'; '.join(problems)})"
                    )
            conn.execute("BEGIN IMMEDIATE")
            try:
                migrate(conn)
                conn.execute("COMMIT")
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            self._apply_pragmas(conn)
            readers = []
            for _ in range(self._reader_count):
                reader = self._connection()
                opened.append(reader)
                reader.execute("PRAGMA query_only = ON")
                self._apply_pragmas(reader)
                readers.append(reader)
            checkpoint_conn = None
            if self.checkpoint_interval is not None:
                checkpoint_conn = self._connection()
                opened.append(checkpoint_conn)
            return conn, readers, checkpoint_conn
        except sqlite3.Error as exc:
            for c in opened:
                c.close()
            raise StoreUnavailable(f"{where}: {_describe(exc)}") from exc
        except SchemaMismatch as exc:
            for c in opened:
                c.close()
            raise StoreUnavailable(f"{where}: {exc}") from exc
        except BaseException:
            for c in opened:
                c.close()
            raise

    def _connection(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=256,  # appends use one statement per (optional columns, run length)
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        return conn

    def _apply_pragmas(self, conn: sqlite3.Connection) -> None:
        for name, value in self._pragmas:
            if not name.replace("_", "").isalnum():
                raise StoreError(f"not a pragma name: {name!r}")
            conn.execute(f"PRAGMA {name} = {int(value) if isinstance(value, int) else repr(value)}")

    async def close(self) -> None:
        if self._state == "closing":
            await self._closed.wait()
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closing"
        self._requests.put_nowait(_STOP)  # room guaranteed: the semaphore holds back one slot
        assert self._thread is not None
        # Closing is a bounded flush (what is queued, then the readers in flight); it completes
        # even when the caller is being cancelled, so nothing queued is left unanswered.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._thread.join)
            if self._checkpointer is not None and self._checkpoint_thread is not None:
                self._checkpointer.stop()
                await trio.to_thread.run_sync(self._checkpoint_thread.join)
            borrowers = [object() for _ in range(self._reader_count)]
            for borrower in borrowers:  # every read connection is back in the pool
                await self._read_limiter.acquire_on_behalf_of(borrower)
            while True:
                try:
                    self._readers.get_nowait().close()
                except queue.Empty:
                    break
            for borrower in borrowers:
                self._read_limiter.release_on_behalf_of(borrower)
        self._state = "closed"
        self._closed.set()

    def _check_open(self) -> None:
        if self._state != "open":
            raise StoreError(f"the store is {self._state}, not open")

    # --- plumbing -------------------------------------------------------------------------------
    async def _write(
        self,
        work: Callable[[sqlite3.Connection], T],
        weight: int = 1,
        messages: Sequence[NewMessage] | None = None,
    ) -> T:
        self._check_open()
        await self._slots.acquire()
        if self._state != "open":
            self._slots.release()
            self._check_open()
        request = _Request(work, weight, messages, done=trio.Event())
        self._requests.put_nowait(request)
        await request.done.wait()  # type: ignore[union-attr]
        if request.error is not None:
            raise request.error
        return cast(T, request.result)

    def has_room(self) -> bool:
        """Whether append_soon may be called now: the store is open and a write slot is free."""
        return self._state == "open" and self._slots.value > 0

    def append_soon(
        self,
        messages: Sequence[NewMessage],
        on_done: Callable[[list[Appended] | None, BaseException | None], None],
    ) -> None:
        """append_many without waiting (call only right after has_room() said True): the
        append is queued behind every write queued before it, and `on_done(results, None)`, or
        `on_done(None, error)` with a StoreError, runs in the Trio thread once it committed or
        failed. Appends queued by one caller complete in the order they were queued."""
        self._check_open()
        self._slots.acquire_nowait()  # trio.WouldBlock: the caller did not ask has_room()
        batch = list(messages)
        request = _Request(lambda conn: _append(conn, batch), len(batch), batch, on_done=on_done)
        self._requests.put_nowait(request)

    def _resolve(self, batch: list[_Request]) -> None:
        for request in batch:
            self._slots.release()
            if request.on_done is None:
                request.done.set()  # type: ignore[union-attr]
                continue
            try:
                request.on_done(request.result, request.error)
            except Exception:  # it runs in the run loop itself: a failure must stop here
                log.exception("a store callback failed")

    async def _read(self, work: Callable[..., T], *args: Any) -> T:
        self._check_open()
        return await trio.to_thread.run_sync(
            self._read_sync, work, args, limiter=self._read_limiter
        )

    def _read_sync(self, work: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            conn = self._readers.get_nowait()  # the limiter guarantees one is free while open
        except queue.Empty:
            raise StoreError("the store is closed") from None
        try:
            conn.execute("BEGIN")  # one snapshot for the whole read
            try:
                return work(conn, *args)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed: {_describe(exc)}") from exc
        finally:
            self._readers.put(conn)

    # --- messages -------------------------------------------------------------------------------
    async def append_many(self, messages: Sequence[NewMessage]) -> list[Appended]:
        if not messages:
            self._check_open()
            return []
        batch = list(messages)
        return await self._write(lambda conn: _append(conn, batch), len(batch), batch)

    async def history(
        self,
        conversation: str,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int = 50,
    ) -> tuple[list[StoredMessage], bool]:
        return await self._read(_history, conversation, before, after, limit)

    async def undelivered(
        self, user_id: str, device_id: str, *, limit: int = 1000
    ) -> list[StoredMessage]:
        return await self._read(_undelivered, user_id, device_id, limit)

    async def register_device(self, user_id: str, device_id: str) -> None:
        await self._write(lambda conn: _register_device(conn, user_id, device_id))

    async def latest_by_sender(
        self, conversation: str, after_seq: int, upto_seq: int, exclude_sender: str
    ) -> list[StoredMessage]:
        return await self._read(
            _latest_by_sender, conversation, after_seq, upto_seq, exclude_sender
        )

    async def latest_by_sender_many(
        self, queries: Sequence[tuple[str, int, int, str]]
    ) -> list[list[StoredMessage]]:
        if not queries:
            self._check_open()
            return []
        return await self._read(_latest_by_sender_many, list(queries))

    async def last_seq(self, conversation: str) -> int:
        return await self._read(_last_seq, conversation)

    # --- watermarks -----------------------------------------------------------------------------
    async def mark_delivered(
        self, conversation: str, user_id: str, device_id: str, seq: int
    ) -> Watermarks:
        return await self._write(
            lambda conn: _mark_delivered(conn, conversation, user_id, device_id, seq)
        )

    async def mark_delivered_many(
        self, marks: Sequence[tuple[str, str, str, int]]
    ) -> list[Watermarks]:
        if not marks:
            self._check_open()
            return []
        batch = list(marks)
        return await self._write(
            lambda conn: [_mark_delivered(conn, *mark) for mark in batch], len(batch)
        )

    async def mark_read(self, conversation: str, user_id: str, seq: int) -> Watermarks:
        return await self._write(lambda conn: _mark_read(conn, conversation, user_id, seq))

    async def watermarks(self, conversation: str, user_id: str) -> Watermarks:
        return await self._read(_watermarks, conversation, user_id)

    async def member_watermarks(self, conversation: str) -> dict[str, Watermarks]:
        return await self._read(_member_watermarks, conversation)

    async def coverage(self, sender_id: str, *, limit: int) -> list[Coverage]:
        return await self._read(_coverage, sender_id, limit)

    # --- conversation list ----------------------------------------------------------------------
    async def conversations(self, user_id: str, *, limit: int = 100) -> list[ConversationSummary]:
        return await self._read(_conversations, user_id, limit)

    async def contacts(self, user_id: str) -> set[str]:
        return await self._read(_contacts, user_id)

    # --- groups ---------------------------------------------------------------------------------
    async def create_group(self, group: Group) -> Group:
        return await self._write(lambda conn: _create_group(conn, group))

    async def get_group(self, group_id: str) -> Group | None:
        return await self._read(_get_group, group_id)

    async def set_group_members(self, group_id: str, members: Sequence[str]) -> Group:
        wanted = tuple(members)
        return await self._write(lambda conn: _set_group_members(conn, group_id, wanted))

    # --- presence -------------------------------------------------------------------------------
    async def set_last_seen(self, user_id: str, timestamp: str) -> None:
        await self._write(lambda conn: _set_last_seen(conn, user_id, timestamp))

    async def last_seen(self, user_ids: Sequence[str]) -> dict[str, str]:
        return await self._read(_last_seen, tuple(user_ids))
