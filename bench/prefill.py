"""Stored messages a scenario's relay starts on, written through the relay's own SqliteStore.

Invariant: the rows come from the same code and schema the relay then opens, so a relay
started on the file is in exactly the state of a relay restarted with those messages; nothing
is faked in the database.
"""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Iterable
from pathlib import Path

import trio

from relay.store.base import NewMessage
from relay.store.sqlite import SqliteStore

BATCH = 2000


def now_stamp() -> str:
    """A server timestamp as the relay writes one (UTC, milliseconds)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def store_messages(db: Path, messages: Iterable[NewMessage], *, index: bool = True) -> int:
    """Append `messages` to the SQLite store at `db` in batches; returns how many were stored.
    With `index=False` the store's search indexer does not run meanwhile, so the relay started
    on the file indexes every message itself (as after an upgrade to the search index)."""
    return trio.run(_store, db, messages, index)


async def _store(db: Path, messages: Iterable[NewMessage], index: bool) -> int:
    store = SqliteStore(db)
    if not index:
        # not in step, never lagging, never idle long enough: the writer only appends
        store.indexer.in_step = False
        store.indexer.max_lag = 1 << 62
        store.indexer.idle = 1e9
    await store.open()
    count = 0
    try:
        it = iter(messages)
        while batch := list(itertools.islice(it, BATCH)):
            count += len(await store.append_many(batch))
    finally:
        await store.close()
    return count
