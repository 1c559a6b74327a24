"""Search on PostgreSQL (the Searchable ability): a `tsvector` per message, indexed by GIN,
built from relay.search's own tokens, so the answers are the other stores' answers.

Why not PostgreSQL's text parser: it does not split CJK runs (a query of two CJK characters
would not match inside a longer run) and folds case and diacritics its own way. So the vector
is written as a tsvector literal of relay.search.normalize.tokens (each token a lexeme, with
its 1-based positions), and a query as a tsquery literal of relay.search.query's terms
(a phrase's words joined by `<->`, a prefix word as `:*`, terms joined by `&`): no parser or
dictionary touches either. A message without a token has the empty vector; NULL means not
computed yet (a row stored before migration 4: `backfill` fills those in at open).

PostgreSQL bounds a vector: a lexeme is at most 2047 bytes, positions at most 16383 and 256
per lexeme. Tokens are cut to LEXEME_BYTES (in the query too, where a cut word matches as a
prefix) and positions capped, so the index may return a message that does not answer; every
row the index returns is therefore checked by relay.search's matcher over the message's own
tokens before it counts (the memory store's test), and the read goes on until the page is full.

Scope as in the SQLite store (sqlite/search.py): the user's `participants` rows, a group's
messages after `joined_seq`; newest first by `pos`, which is the cursor.
"""

from __future__ import annotations

from typing import Any, Final

import relay.store.postgres.reads as reads
from relay.search.normalize import tokens
from relay.search.query import SearchQuery
from relay.store.base import Watermarks
from relay.store.postgres.rows import COLUMNS, Conn, message
from relay.store.sql_search import marked_read, page_read, selected

#: bytes of a lexeme at most (PostgreSQL's bound is 2047)
LEXEME_BYTES: Final = 2000
_MAX_POSITION: Final = 16383
_POSITIONS_PER_LEXEME: Final = 255
_M_COLUMNS, _TEXT = selected(COLUMNS)
#: rows fetched per round while the matcher rejects some
_ROUND: Final = 64

_SEARCH: Final = f"""
    SELECT m.pos, {_M_COLUMNS}
    FROM messages AS m
    JOIN participants AS p ON p.conversation = m.conversation AND p.user_id = %(u)s
    WHERE m.search @@ %(q)s::tsquery AND m.pos < %(before)s AND m.seq > p.joined_seq {{}}
    ORDER BY m.pos DESC
    LIMIT %(n)s
"""
_ANY: Final = _SEARCH.format("")
_ONE: Final = _SEARCH.format("AND m.conversation = %(c)s")


def _lexeme(token: str) -> str:
    """`token` as a quoted tsvector/tsquery lexeme, cut to LEXEME_BYTES."""
    raw = token.encode()
    if len(raw) > LEXEME_BYTES:
        token = raw[:LEXEME_BYTES].decode(errors="ignore")
    return "'" + token.replace("\\", "\\\\").replace("'", "''") + "'"


def _cut(token: str) -> bool:
    return len(token.encode()) > LEXEME_BYTES


def search_vector(text: str) -> str:
    """The tsvector literal of `text`'s tokens ('' when it has none)."""
    positions: dict[str, list[int]] = {}
    for at, token in enumerate(tokens(text), start=1):
        found = positions.setdefault(_lexeme(token), [])
        if len(found) < _POSITIONS_PER_LEXEME:
            found.append(min(at, _MAX_POSITION))
    return " ".join(
        f"{lexeme}:{','.join(map(str, sorted(set(at))))}" for lexeme, at in positions.items()
    )


def search_query(query: SearchQuery) -> str:
    """The tsquery literal of `query`'s terms (every term must match)."""
    terms = []
    for term in query.terms:
        last = len(term.words) - 1
        words = [
            _lexeme(word) + (":*" if (term.prefix and i == last) or _cut(word) else "")
            for i, word in enumerate(term.words)
        ]
        terms.append("(" + " <-> ".join(words) + ")")
    return " & ".join(terms)


def _rows(
    conn: Conn, user_id: str, query: SearchQuery, conversation: str | None, high: int, want: int
) -> list[Any]:
    """At least `want` matches below `high` while there are (relay.store.sql_search.Rows):
    the index's rows in rounds, each checked by the matcher."""
    params: dict[str, Any] = {
        "u": user_id,
        "q": search_query(query),
        "before": high,
        "c": conversation,
    }
    statement = _ANY if conversation is None else _ONE
    found: list[Any] = []
    while len(found) < want:
        need = want - len(found)
        params["n"] = need if not found else max(need, _ROUND)
        # planned for these values each time (never prepared: a generic plan cannot see how
        # rare the query's words are, and walked every message for a rare one, 100-300 ms)
        rows = conn.execute(statement, params, prepare=False).fetchall()
        found += [row for row in rows if query.matches(tokens(row[_TEXT]))]
        if len(rows) < params["n"]:
            break
        params["before"] = rows[-1][0]
    return found


def member_watermarks(conn: Conn, conversations: list[str]) -> dict[str, dict[str, Watermarks]]:
    """Store.member_watermarks of each of `conversations` (a page's)."""
    return {key: reads.member_watermarks(conn, key) for key in conversations}


#: Searchable.search and SearchesMarked.search_marked, each one read on `conn`
search = page_read(_rows, message)
search_marked = marked_read(search, member_watermarks)


def backfill(conn: Conn, chunk: int = 1000) -> int:
    """Compute the vectors of the messages stored before migration 4 (search IS NULL), a chunk
    per transaction; returns how many. Several nodes may run it at once: each row gets the same
    vector from any of them."""
    done = 0
    while True:
        with conn.transaction():
            rows = conn.execute(
                "SELECT pos, text FROM messages WHERE search IS NULL ORDER BY pos LIMIT %s",
                (chunk,),
            ).fetchall()
            if rows:
                conn.execute(
                    "UPDATE messages AS m SET search = v.vector::tsvector "
                    "FROM unnest(%s::bigint[], %s::text[]) AS v(pos, vector) WHERE m.pos = v.pos",
                    ([pos for pos, _ in rows], [search_vector(text) for _, text in rows]),
                )
        done += len(rows)
        if len(rows) < chunk:
            return done
