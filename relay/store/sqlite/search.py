"""The search read: the messages the user may read that answer a query, newest first by `pos`.
Runs on a read connection like every read (sqlite/reads.py), in one snapshot.

Two parts, split at `search_progress.indexed_pos` (sqlite/indexer.py): the messages above it,
not indexed yet, are read newest first and matched by relay.search's matcher over their
tokens; below it, the FTS5 index `message_search` answers relay.search's MATCH expression
(SearchQuery.fts5) over the same tokens (relay.search.index_text). The two say the same thing,
so the answer does not depend on how far the indexer has come, and equals the memory store's.

The user's own conversations are their `participants` rows: both users of a 1:1, the current
members of a group, whose `joined_seq` bounds what they see of it (the messages after they last
joined). The index also holds each message's conversation as a token (`conv`). A query with a
rare term (in at most COMMON rows) is answered by the index alone. For one whose every term is
common, walking the term's posting list through everyone's messages is the cost: the MATCH then
also names the user's conversations (when at most CONVERSATIONS_IN_MATCH), or, for a user in
more, the user's own newest messages are scanned first (up to SCAN_ROWS) and the index goes on
below. Measured on 200k messages in 10k conversations (2,000 users): a word in half the messages
12.4 ms median / 23 ms max with the index alone, 2.7 / 3.4 ms so; rare words ~0.3 ms either way.
"""

from __future__ import annotations

import hashlib
import sqlite3
from typing import Any, Final

from relay.search.normalize import tokens
from relay.search.query import SearchQuery
from relay.store.base import SearchPage
from relay.store.sqlite.rows import COLUMNS, message

_M_COLUMNS: Final = ", ".join("m." + c.strip() for c in COLUMNS.split(","))
_TEXT: Final = 1 + [c.strip() for c in COLUMNS.split(",")].index("text")
_ABOVE_ANY: Final = 1 << 62  # above any pos
#: beyond this many conversations the MATCH does not name them (the join still filters)
CONVERSATIONS_IN_MATCH: Final = 256
#: rows holding a token, beyond which a term is common
COMMON: Final = 5000
#: rows of the user's own messages read for a common term before the index takes over
SCAN_ROWS: Final = 5000


def conversation_token(conversation: str) -> str:
    """The `conv` token of a conversation: letters and digits only (an FTS5 token)."""
    return "c" + hashlib.blake2b(conversation.encode(), digest_size=10).hexdigest()


# ?1 the MATCH expression, ?2 the user, ?3 the pos bound (exclusive), ?4 the row limit,
# ?5 the conversation (when one is named)
_INDEXED: Final = f"""
    SELECT s.rowid, {_M_COLUMNS}
    FROM message_search AS s
    JOIN messages AS m ON m.pos = s.rowid
    JOIN participants AS p ON p.conversation = m.conversation AND p.user_id = ?2
    WHERE message_search MATCH ?1 AND s.rowid < ?3 AND m.seq > p.joined_seq {{}}
    ORDER BY s.rowid DESC
    LIMIT ?4
"""
# ?1 the user, ?2 indexed_pos, ?3 the pos bound (exclusive), ?4 the conversation
_TAIL: Final = f"""
    SELECT m.pos, {_M_COLUMNS}
    FROM messages AS m
    JOIN participants AS p ON p.conversation = m.conversation AND p.user_id = ?1
    WHERE m.pos > ?2 AND m.pos < ?3 AND m.seq > p.joined_seq {{}}
    ORDER BY m.pos DESC
"""
_STATEMENTS: Final = {
    (False, False): _INDEXED.format(""),
    (False, True): _INDEXED.format("AND m.conversation = ?5"),
    (True, False): _TAIL.format(""),
    (True, True): _TAIL.format("AND m.conversation = ?4"),
}


def search(
    conn: sqlite3.Connection,
    user_id: str,
    query: SearchQuery,
    conversation: str | None,
    before: int | None,
    limit: int,
) -> SearchPage:
    limit = max(limit, 0)
    if not query.terms:
        return SearchPage([], [], False)
    bound = _ABOVE_ANY if before is None else before
    (indexed,) = conn.execute("SELECT indexed_pos FROM search_progress").fetchone()
    rows: list[Any] = []
    if bound > indexed + 1:  # the unindexed tail: scanned whole (the indexer bounds it)
        rows, _ = _scan(conn, query, user_id, conversation, indexed, bound, limit + 1, None)
    high = min(bound, indexed + 1)
    if len(rows) <= limit:
        common = not _rare(conn, query)
        keys = _conversations(conn, user_id, conversation)
        if common and len(keys) > CONVERSATIONS_IN_MATCH:
            # a common term and too many conversations to name: the user's own newest
            # messages find its matches sooner than the term's whole posting list
            found, stopped = _scan(
                conn, query, user_id, conversation, 0, high, limit + 1 - len(rows), SCAN_ROWS
            )
            rows += found
            high = stopped if stopped is not None else 0
        text = f"body : ({query.fts5()})"
        if common and len(keys) <= CONVERSATIONS_IN_MATCH:
            named = " OR ".join(f'"{conversation_token(k)}"' for k in keys or [""])
            text = f"conv : ({named}) AND {text}"
        if len(rows) <= limit and high > 1:
            params = (text, user_id, high, limit + 1 - len(rows))
            named_one = conversation is not None
            rows += conn.execute(
                _STATEMENTS[False, named_one], (*params, conversation)[: 4 + named_one]
            ).fetchall()
    page = rows[:limit]
    return SearchPage(
        [message(row[1:]) for row in page], [row[0] for row in page], len(rows) > limit
    )


def _scan(
    conn: sqlite3.Connection,
    query: SearchQuery,
    user_id: str,
    conversation: str | None,
    low: int,
    high: int,
    need: int,
    most: int | None,
) -> tuple[list[Any], int | None]:
    """The user's messages with low < pos < high, newest first, matched by the scan matcher:
    up to `need` matches, reading at most `most` rows (None: no bound). Returns the matches and,
    when it stopped at the bound, the pos it stopped at (the rows below it are not read)."""
    named = conversation is not None
    params = (user_id, low, high, conversation)[: 3 + named]
    found: list[Any] = []
    for read, row in enumerate(conn.execute(_STATEMENTS[True, named], params), start=1):
        if query.matches(tokens(row[_TEXT])):
            found.append(row)
            if len(found) >= need:
                return found, None
        if most is not None and read >= most:
            return found, int(row[0])
    return found, None


def _conversations(conn: sqlite3.Connection, user_id: str, conversation: str | None) -> list[str]:
    """The conversations a search covers (one more than CONVERSATIONS_IN_MATCH at most)."""
    if conversation is not None:
        return [conversation]
    return [
        key
        for (key,) in conn.execute(
            "SELECT conversation FROM participants WHERE user_id = ? LIMIT ?",
            (user_id, CONVERSATIONS_IN_MATCH + 1),
        )
    ]


def _rare(conn: sqlite3.Connection, query: SearchQuery) -> bool:
    """Whether some term of the query is in at most COMMON rows (a prefix counts as common)."""
    for term in query.terms:
        words = term.words[:-1] if term.prefix else term.words
        for word in words:
            row = conn.execute(
                "SELECT doc FROM message_search_terms WHERE term = ?", (word,)
            ).fetchone()
            if row is None or row[0] <= COMMON:
                return True
    return False
