"""Appending messages inside the writer's transaction, which holds the `positions` row lock.

Every message of a batch's append requests is stored in a fixed number of statements whatever
the batch's size (arrays through `unnest`): the stored keys looked up, the conversations' counters
read, every new row inserted, the counters and participants written. Under the positions lock no
other node appends meanwhile, so the counters read are the committed ones and stay so until this
transaction commits.

Invariants:
- a message's seq is its conversation's `last_seq + 1`, and `conversations.last_seq`, `last_pos`
  and `updated_at` move with the last message appended in the same transaction;
- a message's pos is `positions.last_pos + 1`, and `positions.last_pos` moves with it;
- (sender_id, id) already stored (by any node, or earlier in the batch) answers the stored
  message with `duplicate=True` and stores nothing; the unique index stands behind it, so a
  broken invariant fails the transaction rather than storing a message twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import orjson

from relay.store.base import Appended, NewMessage, StoredMessage
from relay.store.postgres.rows import COLUMNS, Conn, message
from relay.store.postgres.search import search_vector

_FIND: Final = (
    f"SELECT {COLUMNS} FROM messages WHERE (id, sender_id) IN "
    "(SELECT * FROM unnest(%s::text[], %s::text[]))"
)
_COUNTERS: Final = (
    "SELECT conversation, last_seq FROM conversations WHERE conversation = ANY(%s::text[])"
)
_INSERT: Final = (
    "INSERT INTO messages (pos, conversation, seq, id, sender_id, text, server_timestamp, "
    "recipient_id, group_id, sender_name, sender_avatar, client_timestamp, meta, e2e, attachments, "
    "call, search) "
    "SELECT * FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::text[], %s::text[], "
    "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], "
    "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[]::tsvector[])"
)
_TIPS: Final = (
    "INSERT INTO conversations (conversation, group_id, last_seq, last_pos, updated_at) "
    "SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::text[]) "
    "ON CONFLICT (conversation) DO UPDATE SET last_seq = excluded.last_seq, "
    "last_pos = excluded.last_pos, updated_at = excluded.updated_at"
)
_PEERS: Final = (
    "INSERT INTO participants (user_id, conversation, peer_id) "
    "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]) ON CONFLICT DO NOTHING"
)


def append_batch(
    conn: Conn, last_pos: int, requests: Sequence[Sequence[NewMessage]]
) -> tuple[list[list[Appended]], int]:
    """Every message of `requests`, in order; `last_pos` is positions.last_pos (locked).
    Returns each request's results and the new last_pos (the caller writes it)."""
    everything = [m for request in requests for m in request]
    stored: dict[tuple[str, str], StoredMessage] = {}
    if everything:
        for row in conn.execute(
            _FIND, ([m.id for m in everything], [m.sender_id for m in everything])
        ).fetchall():
            found = message(row)
            stored[(found.sender_id, found.id)] = found
    counters: dict[str, int] = {
        conversation: int(last)
        for conversation, last in conn.execute(
            _COUNTERS, (list({m.conversation for m in everything}),)
        ).fetchall()
    }
    columns: list[list[Any]] = [[] for _ in range(_INSERT.count("%s"))]
    tips: dict[str, tuple[str | None, int, int, str]] = {}
    peers: list[tuple[str, str, str]] = []
    answers: list[list[Appended]] = []
    pos = last_pos
    for request in requests:
        results: list[Appended] = []
        for m in request:
            key = (m.sender_id, m.id)
            old = stored.get(key)
            if old is not None:
                results.append(Appended(old, duplicate=True))
                continue
            conversation = m.conversation
            last = counters.get(conversation)
            if last is None and m.group_id is None:
                peer = m.recipient_id if m.recipient_id is not None else m.sender_id
                peers.append((m.sender_id, conversation, peer))
                peers.append((peer, conversation, m.sender_id))
            seq = (last or 0) + 1
            counters[conversation] = seq
            pos += 1
            new = m.stored(seq)
            stored[key] = new
            for column, value in zip(
                columns,
                (
                    pos,
                    conversation,
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
                    orjson.dumps(m.meta).decode() if m.meta is not None else None,
                    orjson.dumps(m.e2e).decode() if m.e2e is not None else None,
                    orjson.dumps(m.attachments).decode() if m.attachments is not None else None,
                    orjson.dumps(m.call).decode() if m.call is not None else None,
                    search_vector(m.text),  # indexed in the append's transaction
                ),
                strict=True,
            ):
                column.append(value)
            tips[conversation] = (m.group_id, seq, pos, m.server_timestamp)
            results.append(Appended(new, duplicate=False))
        answers.append(results)
    if pos != last_pos:
        conn.execute(_INSERT, columns)
        conn.execute(
            _TIPS,
            (
                list(tips),
                [t[0] for t in tips.values()],
                [t[1] for t in tips.values()],
                [t[2] for t in tips.values()],
                [t[3] for t in tips.values()],
            ),
        )
        if peers:
            conn.execute(
                _PEERS, ([p[0] for p in peers], [p[1] for p in peers], [p[2] for p in peers])
            )
    return answers, pos
