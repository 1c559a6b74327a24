"""Appending messages inside the writer's transaction, which holds the `positions` row lock.

Every message of a batch's append requests is stored in three statements whatever the batch's
size: the stored keys looked up and the conversations' counters read (arrays through `unnest`,
sent together: `look_up`), then one statement that inserts every new row and writes the
counters, participants and positions.last_pos (_WRITE). Under the positions lock no other node
appends meanwhile, so the counters read are the committed ones and stay so until this
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
import psycopg

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
#: the batch's rows and positions.last_pos written in one statement, each table's rows one jsonb
#: array of row arrays
#: (JSON null is SQL NULL): psycopg dumps three strings made by orjson, not 25 arrays through
#: its Python ListDumper, and one statement is parsed and sent, not three
_WRITE: Final = """
    WITH inserted AS (
        INSERT INTO messages (pos, conversation, seq, id, sender_id, text, server_timestamp,
            recipient_id, group_id, sender_name, sender_avatar, client_timestamp, meta, e2e,
            attachments, call, search)
        SELECT (r->>0)::bigint, r->>1, (r->>2)::bigint, r->>3, r->>4, r->>5, r->>6, r->>7,
            r->>8, r->>9, r->>10, r->>11, r->>12, r->>13, r->>14, r->>15, (r->>16)::tsvector
        FROM jsonb_array_elements(%s::jsonb) AS r
    ), moved AS (
        UPDATE positions SET last_pos = %s
    ), tips AS (
        INSERT INTO conversations (conversation, group_id, last_seq, last_pos, updated_at)
        SELECT r->>0, r->>1, (r->>2)::bigint, (r->>3)::bigint, r->>4
        FROM jsonb_array_elements(%s::jsonb) AS r
        ON CONFLICT (conversation) DO UPDATE SET last_seq = excluded.last_seq,
            last_pos = excluded.last_pos, updated_at = excluded.updated_at
    )
    INSERT INTO participants (user_id, conversation, peer_id)
    SELECT r->>0, r->>1, r->>2 FROM jsonb_array_elements(%s::jsonb) AS r
    ON CONFLICT DO NOTHING
"""


#: the two reads of a batch, sent and not yet fetched: stored keys, conversation counters
Lookups = tuple[psycopg.Cursor[Any], psycopg.Cursor[Any]]


def look_up(conn: Conn, requests: Sequence[Sequence[NewMessage]]) -> Lookups:
    """Send the batch's two reads without fetching them: in pipeline mode (writer.py) they
    travel with the positions lock in one round trip. Run them after that lock is taken: under
    READ COMMITTED each statement reads what was committed when it started."""
    everything = [m for request in requests for m in request]
    return (
        conn.cursor().execute(
            _FIND, ([m.id for m in everything], [m.sender_id for m in everything])
        ),
        conn.cursor().execute(_COUNTERS, (list({m.conversation for m in everything}),)),
    )


def append_batch(
    conn: Conn,
    last_pos: int,
    requests: Sequence[Sequence[NewMessage]],
    lookups: Lookups | None = None,
) -> tuple[list[list[Appended]], int]:
    """Every message of `requests`, in order; `last_pos` is positions.last_pos (locked);
    `lookups`: look_up(conn, requests) when the caller sent them already.
    Returns each request's results and the new last_pos (written here with the rows)."""
    find, counted = look_up(conn, requests) if lookups is None else lookups
    stored: dict[tuple[str, str], StoredMessage] = {}
    for row in find.fetchall():
        found = message(row)
        stored[(found.sender_id, found.id)] = found
    counters: dict[str, int] = {
        conversation: int(last) for conversation, last in counted.fetchall()
    }
    rows: list[tuple[Any, ...]] = []
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
            rows.append(
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
                )
            )
            tips[conversation] = (m.group_id, seq, pos, m.server_timestamp)
            results.append(Appended(new, duplicate=False))
        answers.append(results)
    if pos != last_pos:
        conn.execute(
            _WRITE,
            (
                orjson.dumps(rows).decode(),
                pos,
                orjson.dumps([(c, *tip) for c, tip in tips.items()]).decode(),
                orjson.dumps(peers).decode(),
            ),
        )
    return answers, pos
