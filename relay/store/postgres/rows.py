"""What PostgreSQL hands back, in the store's terms: a `messages` row as a StoredMessage, and a
psycopg error as a reason an operator can act on.

Invariant: `COLUMNS` is the order of every message SELECT, and `message` reads a row in that
order (the stored `meta` is its JSON text, NULL for none: text keeps the sender's key order,
which jsonb would not).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import orjson
import psycopg

from relay.store.base import StoredMessage

COLUMNS: Final = (
    "conversation, seq, id, sender_id, text, server_timestamp, recipient_id, group_id, "
    "sender_name, sender_avatar, client_timestamp, meta, e2e, attachments, call"
)

#: The connection type every module uses: rows as tuples.
Conn = psycopg.Connection[tuple[Any, ...]]


def describe(error: BaseException) -> str:
    """`error` in words: PostgreSQL's message and SQLSTATE, or the connection failure."""
    if isinstance(error, psycopg.OperationalError):
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"PostgreSQL unreachable or failing: {text}"
    if isinstance(error, psycopg.Error):
        state = error.sqlstate or type(error).__name__
        return f"{str(error).strip()} [{state}]"
    return repr(error)


def message(row: Sequence[Any]) -> StoredMessage:
    """The StoredMessage of a row SELECTed as `COLUMNS`."""
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
        e2e=orjson.loads(row[12]) if row[12] is not None else None,
        attachments=orjson.loads(row[13]) if row[13] is not None else None,
        call=orjson.loads(row[14]) if row[14] is not None else None,
    )
