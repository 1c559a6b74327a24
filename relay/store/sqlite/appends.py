"""The two ways the writer appends messages, both inside its open transaction.

`append` stores one request's messages one statement each, in order: it sorts out every case
(a resend is found by the unique (id, sender_id) index and answered as the stored message with
`duplicate=True`; a (conversation, seq) already taken fails the request with StoreError).

`append_fused` stores every message of a batch's append requests in a few multi-row INSERTs,
with the per-message work (numbering, rows, answers) done by the compiled
`relay.fastpath.sqlite_rows`. It only stands when every row went in: on a duplicate or a taken
seq it returns None, and the writer undoes its savepoint and runs the requests through `append`
one by one. Both give the same answers and leave the same rows.

Invariants both keep:
- a message's seq is its conversation's `last_seq + 1`, and `conversations.last_seq`,
  `last_pos` and `updated_at` move with the last message appended (a conversation row is made
  with its first message; a new 1:1 also records its two participants);
- a message's pos is `positions.last_pos + 1` (migration 5: a pos is never given twice, even
  once retention has deleted the messages above it), and `positions.last_pos` moves with it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any, Final

import orjson
from attrs import define

from relay.errors import StoreError
from relay.fastpath import ROW_OPTIONAL, sqlite_rows
from relay.store.base import Appended, NewMessage, StoredMessage
from relay.store.sqlite.rows import COLUMNS, message


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


def append(conn: sqlite3.Connection, messages: Sequence[NewMessage]) -> list[Appended]:
    """One request's messages, a statement each, in order: what `append_many` returns."""
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
        e2e = orjson.dumps(m.e2e).decode() if m.e2e is not None else None
        files = orjson.dumps(m.attachments).decode() if m.attachments is not None else None
        call = orjson.dumps(m.call).decode() if m.call is not None else None
        # One statement per message: the unique (sender_id, id) index is the idempotency check.
        cursor = conn.execute(
            f"INSERT OR IGNORE INTO messages (pos, {COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                e2e,
                files,
                call,
            ),
        )
        if cursor.rowcount == 0:
            row = conn.execute(
                f"SELECT {COLUMNS} FROM messages WHERE sender_id = ? AND id = ?",
                (m.sender_id, m.id),
            ).fetchone()
            if row is None:  # ignored for another reason: (conversation, seq) was taken
                raise StoreError(f"seq {seq} of {m.conversation!r} is taken; the counter is off")
            results.append(Appended(message(row), duplicate=True))
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


def append_fused(
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
