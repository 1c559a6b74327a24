"""The search indexer: the writer adds messages to the FTS5 index (migration 7) inside the
transaction that appends them, and works through older unindexed messages on the side.

In step (`in_step`, the default): once every stored message is indexed, each batch's new
messages are indexed in the batch's own transaction (`in_transaction`, before COMMIT), so
`search_progress.indexed_pos` equals `positions.last_pos` at every commit and a search never
scans an unindexed tail. Measured cost on the 2-core VM (process CPU per message appended in
batches of 500, in step against not indexing at all): 7.2 -> 11.1 us for the bench's 100-byte
one-token texts, 9.1 -> 20.2 us for the search corpus's 4-14 words with accents, Cyrillic and
CJK (the FTS5 insert ~7 us of it, the rest normalizing and the vocabulary). The deferred
indexing it replaces paid the same per message, later. The bench's `search` and `durable`
scenarios measure the whole relay.

Catching up: messages stored while nothing indexed them (a database from before migration 7,
the bench's prefill, messages another process appended, an in-step step that failed) form an
unindexed tail above indexed_pos. The writer indexes it in chunks of `chunk` messages, one
transaction each: back to back while no request waits (after `idle` seconds without one), and,
while requests keep coming, `catch_up` messages more than each batch appended, so the tail
shrinks under any load. Once a chunk comes back short, the index has caught up and in-step
indexing starts. Searches stay exact meanwhile: the tail is matched by a scan (sqlite/search.py).

With `in_step` off (tests of the scan; the bench's prefill, which leaves indexing to the relay)
only the deferred indexing runs, after `idle` seconds without a request, or once the tail
exceeds `max_lag` messages (then as many per batch as the batch appended).

Invariants:
- every message with pos <= indexed_pos has its row in `message_search` when its text has a
  token (a message deleted before it was indexed has none, as the trigger would have left it);
- indexed_pos only moves forward, in the transaction that indexed up to it;
- every token of every indexed body is in `search_terms` (migration 11), inserted in the
  transaction that indexes it (Vocabulary remembers only committed ones), which makes the
  prefix expansion of sqlite/search.py exact.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from typing import Final

from attrs import define, field

from relay.search.normalize import index_text
from relay.store.sqlite.rows import describe
from relay.store.sqlite.search import conversation_token

log = logging.getLogger("relay.store")

_SELECT: Final = "SELECT pos, text, conversation FROM messages WHERE pos > ? ORDER BY pos LIMIT ?"
_INSERT: Final = "INSERT INTO message_search (rowid, body, conv) VALUES (?, ?, ?)"
_TERM: Final = "INSERT OR IGNORE INTO search_terms (term) VALUES (?)"


@define
class Vocabulary:
    """Which tokens `search_terms` (migration 11) holds, as far as this writer knows: every
    token it indexes is inserted there in the same transaction, unless known already. `known`
    holds only committed tokens (those of a transaction still open are `staged`, and dropped
    with it), and is cleared when it exceeds `most` (then rebuilt from what is indexed: the
    frequent tokens come back at once)."""

    most: int = 50_000  # ~5 MB of strings at most; the frequent tokens hit it
    _known: set[str] = field(factory=set, init=False)
    _staged: set[str] = field(factory=set, init=False)

    def add(self, conn: sqlite3.Connection, bodies: list[str]) -> None:
        if not bodies:
            return
        # set operations in C: most tokens of a batch repeat and are known (every body is
        # tokens joined by one space, none empty)
        fresh = set(" ".join(bodies).split(" "))
        fresh -= self._known
        fresh -= self._staged
        if fresh:
            conn.executemany(_TERM, [(token,) for token in fresh])
            self._staged |= fresh

    def committed(self) -> None:
        if len(self._known) + len(self._staged) > self.most:
            self._known.clear()
        self._known |= self._staged
        self._staged.clear()

    def rolled_back(self) -> None:
        self._staged.clear()


@define
class SearchIndexer:
    """Indexes messages for search (writer thread only)."""

    chunk: int = 500  # ~6 ms of work on the 2-core VM: what a request arriving meanwhile waits
    max_lag: int = 100_000
    idle: float = 0.05
    in_step: bool = True
    catch_up: int = 100  # tail messages indexed after each batch while catching up under load
    # whether unindexed messages may exist (cleared by a short chunk or an in-step step)
    _pending: bool = field(default=True, init=False)
    _lag: int = field(default=0, init=False)  # messages appended since the last short chunk
    # the last thing done was a full idle chunk: the next one follows without waiting
    _streak: bool = field(default=False, init=False)
    vocabulary: Vocabulary = field(factory=Vocabulary)

    @property
    def pending(self) -> bool:
        return self._pending

    def start(self, conn: sqlite3.Connection) -> None:
        """At the writer's start: whether the store's file has an unindexed tail."""
        (indexed,) = conn.execute("SELECT indexed_pos FROM search_progress").fetchone()
        (last,) = conn.execute("SELECT last_pos FROM positions").fetchone()
        self._pending = indexed < last

    def steps(self) -> bool:
        """Whether the open batch's transaction indexes the messages it appends."""
        return self.in_step and not self._pending

    def in_transaction(
        self,
        conn: sqlite3.Connection,
        appended: int,
        fresh: Sequence[tuple[str, str]] | None = None,
    ) -> bool:
        """Index the messages above indexed_pos inside the writer's open transaction (called
        before COMMIT when `steps()`; `appended`: how many the batch appended; `fresh`, when
        the writer knows them, their (text, conversation) in the order they were given
        positions, which spares reading them back (see `_index`); the writer then
        says whether it `committed()` or `rolled_back()`). On an SQLite
        error the step is undone and the messages are left to the catch-up (pending again).
        Returns False only when SQLite undid the whole transaction (then nothing of the batch
        stands, and the writer fails it)."""
        try:
            conn.execute("SAVEPOINT search_index")
            size = appended + self.catch_up
            if (
                _index(conn, size, self.vocabulary, fresh) == size
            ):  # more than the batch was unindexed: catch up
                self._pending = True
            conn.execute("RELEASE search_index")
            return True
        except sqlite3.Error as exc:
            log.warning("search indexing in step failed, catching up later: %s", describe(exc))
            self._pending = True
            self.vocabulary.rolled_back()
            if not conn.in_transaction:
                return False
            try:
                conn.execute("ROLLBACK TO search_index")
                conn.execute("RELEASE search_index")
            except sqlite3.Error:
                conn.execute("ROLLBACK")
                return False
            return True

    def committed(self) -> None:
        """The writer's transaction committed."""
        self.vocabulary.committed()

    def rolled_back(self) -> None:
        """The writer's transaction did not commit."""
        self.vocabulary.rolled_back()

    def appended(self, count: int, stepped: bool) -> None:
        """The writer committed a batch that appended `count` messages (indexed in its
        transaction when `stepped`)."""
        self._streak = False
        if count and not stepped:
            self._pending = True
            self._lag += count

    def after_batch(self, appended: int) -> int | None:
        """How many messages the writer indexes after a batch that appended `appended` but did
        not index them (in a transaction of its own), or None: while catching up in step, those
        and `catch_up` more; else those once the tail is longer than `max_lag`, so it stops
        growing."""
        if not self._pending or not appended:
            return None
        if self.in_step:
            return appended + self.catch_up
        return appended if self._lag > self.max_lag else None

    def run_chunk(self, conn: sqlite3.Connection, size: int | None = None) -> int:
        """Index up to `size` (default `chunk`) messages above indexed_pos in one transaction;
        returns how many messages it read. A short chunk means the index has caught up."""
        idle = size is None  # the writer had nothing else to do: the next chunk follows
        size = self.chunk if size is None else max(size, 1)
        conn.execute("BEGIN IMMEDIATE")
        try:
            read = _index(conn, size, self.vocabulary)
            conn.execute("COMMIT")
        except BaseException:
            self.vocabulary.rolled_back()
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.vocabulary.committed()
        if read < size:
            self._pending = False
            self._lag = 0
            self._streak = False
        else:
            self._lag = max(self._lag - read, 0)
            self._streak = idle
        return read

    def timeout(self, retention_due: float | None) -> float | None:
        """How long the writer may wait for a request before it has idle work to do: none
        between catch-up chunks, `idle` after a batch."""
        if not self._pending:
            return retention_due
        wait = 0.0 if self._streak else self.idle
        return wait if retention_due is None else min(wait, retention_due)


def _index(
    conn: sqlite3.Connection,
    size: int,
    vocabulary: Vocabulary,
    fresh: Sequence[tuple[str, str]] | None = None,
) -> int:
    """Index up to `size` messages above indexed_pos in the open transaction (their tokens
    into `search_terms` too) and move it on; returns how many were read. Fewer than `size`
    means every message is indexed: indexed_pos then moves to the last pos ever given.

    `fresh`: the (text, conversation) of messages the open transaction appended, in the order
    of their positions. They are the messages above indexed_pos exactly when as many positions
    were given since indexed_pos: then they are indexed without reading them back (a SELECT of
    the batch's rows, ~0.5 us a message); else (another connection appended too, a batch's
    appends ran one by one) they are read from `messages`."""
    (indexed,) = conn.execute("SELECT indexed_pos FROM search_progress").fetchone()
    if fresh is not None and len(fresh) < size:
        (last,) = conn.execute("SELECT last_pos FROM positions").fetchone()
        if last - indexed == len(fresh):
            bodies = [
                (pos, body, conversation_token(conversation))
                for pos, (text, conversation) in enumerate(fresh, start=indexed + 1)
                if (body := index_text(text))
            ]
            if bodies:
                conn.executemany(_INSERT, bodies)
                vocabulary.add(conn, [body for _, body, _ in bodies])
            if last > indexed:
                conn.execute("UPDATE search_progress SET indexed_pos = ?", (last,))
            return len(fresh)
    rows = conn.execute(_SELECT, (indexed, size)).fetchall()
    bodies = [
        (pos, body, conversation_token(conversation))
        for pos, text, conversation in rows
        if (body := index_text(text))
    ]
    if bodies:
        conn.executemany(_INSERT, bodies)
        vocabulary.add(conn, [body for _, body, _ in bodies])
    if len(rows) < size:  # everything is indexed: up to the last pos ever given
        (upto,) = conn.execute("SELECT last_pos FROM positions").fetchone()
    else:
        upto = rows[-1][0] if rows else indexed
    if upto > indexed:
        conn.execute("UPDATE search_progress SET indexed_pos = ?", (upto,))
    return len(rows)
