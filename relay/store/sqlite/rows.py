"""What SQLite hands back, in the store's terms: a `messages` row as a StoredMessage, and a
sqlite3 error as a reason an operator can act on; and how a list of values is handed to it.

Invariants:
- `COLUMNS` is the order of every message SELECT, and `message` reads a row in that order (the
  stored `meta`, `e2e`, `attachments` and `call` are their JSON text, NULL for none);
- a statement that takes a list of values takes it as one parameter, `IN (SELECT value FROM
  json_each(?))` with `json_list(values)`, never as one `?` per value: its text is then the same
  whatever the list's length, so each connection prepares and caches it once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, Final

import orjson

from relay.store.base import StoredMessage

COLUMNS: Final = (
    "conversation, seq, id, sender_id, text, server_timestamp, recipient_id, group_id, "
    "sender_name, sender_avatar, client_timestamp, meta, e2e, attachments, call"
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


#: `column IN VALUES` of a list bound as one parameter, json_list(values)
IN_LIST: Final = "IN (SELECT value FROM json_each(?))"


def json_list(values: Sequence[int | str]) -> str:
    """`values` as the one parameter of an `IN_LIST`. A `?` per value made a statement text per
    list length, and sqlite3 caches up to 256 prepared statements a connection: in `python -m
    bench soak` each reader's cached statements grew from 0.5 to 1.2 MB over 8 minutes as
    backlog pages of new lengths came (a 100-value IN list is a 16 kB program, a 1,000-value
    one 141 kB). json_each costs ~12 us more on a 100-row page read of ~65 us."""
    return orjson.dumps(values).decode()


def describe(error: sqlite3.Error) -> str:
    """`error` as its reason in words, followed by SQLite's own name and message."""
    name = getattr(error, "sqlite_errorname", "")
    for prefix, reason in _REASONS.items():
        if name.startswith(prefix):
            return f"{reason} [{name}: {error}]"
    return f"{error} [{name or type(error).__name__}]"


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
