"""The search read: the messages the user may read that answer a query, newest first by `pos`.
Runs on a read connection like every read (sqlite/reads.py), in one snapshot.

Two parts, split at `search_progress.indexed_pos` (sqlite/indexer.py): the messages above it,
not indexed yet, are read newest first and matched by relay.search's matcher over their
tokens; below it, the FTS5 index `message_search` answers relay.search's MATCH expression
(SearchQuery.fts5) over the same tokens (relay.search.index_text). The two say the same thing,
so the answer does not depend on how far the indexer has come, and equals the memory store's.

The user's own conversations are their `participants` rows: both users of a 1:1, the current
members of a group, whose `joined_seq` bounds what they see of it (the messages after they last
joined). The index also holds each message's conversation as a token (`conv`). The cost of a
page is the postings read before it is full, so the read picks its way (`search`):
- below the user's newest message only (everyone's newer messages hold none of theirs);
- a user whose conversations hold at most NAMED messages: the MATCH names them (`conv`), so
  only their postings are read;
- else the index is walked newest first in windows of positions (WINDOW, doubled, WALK at
  most), which finds a page at once when the user's messages are dense among everyone's;
- below that, a rare query (at most COMMON postings left) walks its postings to the end; a
  common one names the user's conversations (at most CONVERSATIONS_IN_MATCH), or, for a user
  in more, scans the user's own newest messages first (up to SCAN_ROWS) and the index goes on.
A one-word prefix (`run*`) is expanded to the OR of the tokens it begins (`search_terms`,
migration 11), which FTS5 reads lazily; its own prefix query merges every such token's whole
posting list first. Measured with the bench's corpus (1M messages, 1,000 conversations of 4
searching users, and 300k of other users above them): 0.2-0.5 ms for each of the bench's 16
queries (`run*` 27 ms before the expansion, a common word 20-30 ms before the walk started at
the user's newest message)."""

from __future__ import annotations

import functools
import hashlib
import sqlite3
from typing import Any, Final

from relay.search.normalize import index_text, tokens
from relay.search.query import SearchQuery
from relay.store.base import Watermarks
from relay.store.sql_search import marked_read, page_read, selected
from relay.store.sqlite.rows import COLUMNS, IN_LIST, json_list, message

_M_COLUMNS, _TEXT = selected(COLUMNS)
#: beyond this many conversations the MATCH does not name them (the join still filters)
CONVERSATIONS_IN_MATCH: Final = 256
#: postings below the walked range, beyond which a query is common
COMMON: Final = 5000
#: rows of the user's own messages read for a common term before the index takes over
SCAN_ROWS: Final = 5000
#: the first window of positions the index is walked in, newest first (then doubled)
WINDOW: Final = 4096
#: positions walked in windows before the other ways take over (a window starts while fewer
#: were walked, so up to about twice as many)
WALK: Final = 65536
#: tokens a prefix is expanded to at most (more: FTS5's own prefix query)
EXPANDED: Final = 64
_ABOVE_ANY_CHAR: Final = "\U0010ffff"  # sorts after any text a token may continue with
#: a user whose conversations hold at most this many messages has them named in the MATCH
#: at once (their `conv` postings cost ~60 ns each: ~1 ms)
NAMED: Final = 20_000


@functools.lru_cache(maxsize=16384)  # the writer asks once per message indexed (~1 us saved)
def conversation_token(conversation: str) -> str:
    """The `conv` token of a conversation: letters and digits only (an FTS5 token)."""
    return "c" + hashlib.blake2b(conversation.encode(), digest_size=10).hexdigest()


def register_functions(conn: sqlite3.Connection) -> None:
    """The SQL functions the trigger `messages_search_gone` (migration 13) removes an indexed
    message's row with: the same body and conv it was indexed with (sqlite/indexer.py). Every
    connection that deletes messages needs them; a DELETE without them fails whole."""
    conn.create_function("relay_index_text", 1, index_text, deterministic=True)
    conn.create_function("relay_conversation_token", 1, conversation_token, deterministic=True)


# :q the MATCH expression, :u the user, :high the pos bound (exclusive), :low the lower bound
# (inclusive), :n the row limit, :c the conversation (when one is named)
_INDEXED: Final = f"""
    SELECT s.rowid, {_M_COLUMNS}
    FROM message_search AS s
    JOIN messages AS m ON m.pos = s.rowid
    JOIN participants AS p ON p.conversation = m.conversation AND p.user_id = :u
    WHERE message_search MATCH :q AND s.rowid < :high AND s.rowid >= :low
        AND m.seq > p.joined_seq {{}}
    ORDER BY s.rowid DESC
    LIMIT :n
"""
# :u's messages with :low < pos < :high, newest first; {0} how messages meet participants:
# for the unindexed tail, CROSS JOIN (messages walked by pos as the outer loop: the tail is
# short in step); for the user's own newest messages, the planner's choice
_MESSAGES: Final = f"""
    SELECT m.pos, {_M_COLUMNS}
    FROM messages AS m
    {{0}} participants AS p ON p.conversation = m.conversation AND p.user_id = :u
    WHERE m.pos > :low AND m.pos < :high AND m.seq > p.joined_seq {{1}}
    ORDER BY m.pos DESC
"""
_ONE: Final = "AND m.conversation = :c"
_STATEMENTS: Final = {
    ("index", False): _INDEXED.format(""),
    ("index", True): _INDEXED.format(_ONE),
    ("tail", False): _MESSAGES.format("CROSS JOIN", ""),
    ("tail", True): _MESSAGES.format("CROSS JOIN", _ONE),
    ("own", False): _MESSAGES.format("JOIN", ""),
    ("own", True): _MESSAGES.format("JOIN", _ONE),
}


def _rows(
    conn: sqlite3.Connection,
    user_id: str,
    query: SearchQuery,
    conversation: str | None,
    bound: int,
    want: int,
) -> list[Any]:
    """Up to `want` matches below `bound` (relay.store.sql_search.Rows): the unindexed tail
    scanned (empty in step), then the index, newest first:
    walked in growing windows of positions (cheap while the user's matches are dense among
    everyone's, which the newest windows find); below WALK positions, a rare query walks
    its postings to the end, and a common one names the user's conversations in the MATCH
    or, for a user in too many to name, scans the user's own newest messages first."""
    (indexed,) = conn.execute("SELECT indexed_pos FROM search_progress").fetchone()
    (last,) = conn.execute("SELECT last_pos FROM positions").fetchone()
    rows: list[Any] = []
    if last > indexed and bound > indexed + 1:  # the unindexed tail: scanned whole
        rows, _ = _scan(conn, "tail", query, user_id, conversation, indexed, bound, want, None)
    expression = _expression(conn, query)
    if expression is None:  # a prefix no indexed token begins: only the tail can match
        return rows
    body = f"body : ({expression})"
    count, held, newest = _reach(conn, user_id, conversation)
    # below the user's newest message: everyone else's newer ones hold no match of theirs
    high = min(bound, indexed + 1, newest + 1)
    low, window = high, WINDOW
    if count <= CONVERSATIONS_IN_MATCH and held <= NAMED:
        # few messages of the user's: their postings are the cost
        body = _named(_conversations(conn, user_id, conversation), body)
        low = 0
    while len(rows) < want and low > 1 and high - low < WALK:
        below = max(low - window, 1)
        rows += _indexed(conn, body, user_id, conversation, low, below, want - len(rows))
        low, window = below, window * 2
    if len(rows) < want and low > 1:
        if _postings(conn, body, low) > COMMON:
            if count > CONVERSATIONS_IN_MATCH:
                # too many conversations to name: the user's own newest messages find the
                # matches sooner than the term's whole posting list
                need = want - len(rows)
                found, stopped = _scan(
                    conn, "own", query, user_id, conversation, 0, low, need, SCAN_ROWS
                )
                rows += found
                low = stopped if stopped is not None else 0
            else:
                body = _named(_conversations(conn, user_id, conversation), body)
        if len(rows) < want and low > 1:
            rows += _indexed(conn, body, user_id, conversation, low, 0, want - len(rows))
    elif len(rows) < want and low == 0:
        rows += _indexed(conn, body, user_id, conversation, high, 0, want - len(rows))
    return rows


def _indexed(
    conn: sqlite3.Connection,
    body: str,
    user_id: str,
    conversation: str | None,
    high: int,
    low: int,
    need: int,
) -> list[Any]:
    """Up to `need` of the user's messages with low <= pos < high that the index matches."""
    params = {"q": body, "u": user_id, "high": high, "low": low, "n": need, "c": conversation}
    return conn.execute(_STATEMENTS["index", conversation is not None], params).fetchall()


def _expression(conn: sqlite3.Connection, query: SearchQuery) -> str | None:
    """The FTS5 MATCH expression of `query` (SearchQuery.fts5), a one-word prefix term
    expanded to the OR of the tokens it begins (search_terms, migration 11: every indexed
    token is there), when at most EXPANDED; None when no indexed token begins one."""
    terms: list[str] = []
    for term in query.terms:
        if term.prefix and len(term.words) == 1:
            start = term.words[0]
            found = [
                word
                for (word,) in conn.execute(
                    "SELECT term FROM search_terms WHERE term >= ? AND term < ? LIMIT ?",
                    (start, start + _ABOVE_ANY_CHAR, EXPANDED + 1),
                )
            ]
            if not found:
                return None
            if len(found) <= EXPANDED:
                terms.append("(" + " OR ".join(f'"{word}"' for word in found) + ")")
                continue
        terms.append(term.fts5())
    return " AND ".join(terms)


def _reach(
    conn: sqlite3.Connection, user_id: str, conversation: str | None
) -> tuple[int, int, int]:
    """The user's conversations (`conversation` only, when given): how many, about how many
    messages they hold (their last seqs), and the pos of the newest (0: none)."""
    row = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(c.last_seq), 0), COALESCE(MAX(c.last_pos), 0) "
        "FROM participants AS p JOIN conversations AS c ON c.conversation = p.conversation "
        "WHERE p.user_id = ?1 AND (?2 IS NULL OR p.conversation = ?2)",
        (user_id, conversation),
    ).fetchone()
    return int(row[0]), int(row[1]), int(row[2])


def _named(keys: list[str], body: str) -> str:
    """`body` restricted to the conversations `keys` (their `conv` tokens)."""
    named = " OR ".join(f'"{conversation_token(k)}"' for k in keys or [""])
    return f"conv : ({named}) AND {body}"


def _postings(conn: sqlite3.Connection, body: str, high: int) -> int:
    """Rows below `high` the MATCH `body` finds, counted up to COMMON + 1."""
    (count,) = conn.execute(
        "SELECT count(*) FROM (SELECT 1 FROM message_search "
        "WHERE message_search MATCH ? AND rowid < ? LIMIT ?)",
        (body, high, max(COMMON, 0) + 1),
    ).fetchone()
    return int(count)


def _scan(
    conn: sqlite3.Connection,
    kind: str,
    query: SearchQuery,
    user_id: str,
    conversation: str | None,
    low: int,
    high: int,
    need: int,
    most: int | None,
) -> tuple[list[Any], int | None]:
    """The user's messages with low < pos < high, newest first (`kind`: "tail" or "own", the
    statement), matched by the scan matcher:
    up to `need` matches, reading at most `most` rows (None: no bound). Returns the matches and,
    when it stopped at the bound, the pos it stopped at (the rows below it are not read)."""
    params = {"u": user_id, "low": low, "high": high, "c": conversation}
    found: list[Any] = []
    statement = _STATEMENTS[kind, conversation is not None]
    for read, row in enumerate(conn.execute(statement, params), start=1):
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


def member_watermarks(
    conn: sqlite3.Connection, conversations: list[str]
) -> dict[str, dict[str, Watermarks]]:
    """Store.member_watermarks of each of `conversations` (a page's), in one statement: a
    statement per conversation was ~10 us each, a third of a search's read."""
    found: dict[str, dict[str, Watermarks]] = {key: {} for key in conversations}
    if not conversations:
        return found
    rows = conn.execute(
        "SELECT p.conversation, p.user_id, COALESCE(w.delivered_seq, 0), "
        "COALESCE(w.read_seq, 0) FROM participants AS p LEFT JOIN watermarks AS w "
        "ON w.conversation = p.conversation AND w.user_id = p.user_id "
        f"WHERE p.conversation {IN_LIST} ORDER BY p.conversation, p.user_id",
        (json_list(conversations),),
    )
    for key, user, delivered, read in rows:
        found[key][user] = Watermarks(delivered, read)
    return found


#: Searchable.search and SearchesMarked.search_marked, each one read on `conn`
search = page_read(_rows, message)
search_marked = marked_read(search, member_watermarks)
