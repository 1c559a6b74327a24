"""What SQLite hands back, in the store's terms: a `messages` row as a StoredMessage, and a
sqlite3 error as a reason an operator can act on.

Invariant: `COLUMNS` is the order of every message SELECT, and `message` reads a row in that
order (the stored `meta`, `e2e`, `attachments` and `call` are their JSON text, NULL for none).
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
