"""The search read: the FTS5 index `message_search` (migration 6) joined to the messages the user
may read, newest first by `pos`. Runs on a read connection like every read (sqlite/reads.py).

The user's own conversations are their `participants` rows: both users of a 1:1, the current
members of a group, whose `joined_seq` bounds what they see of it (the messages after they last
joined). The MATCH expression is relay.search's (SearchQuery.fts5), over the same tokens the
writer indexed (relay.search.index_text), so this answers as the memory store's scan does.
"""

from __future__ import annotations

import sqlite3
from typing import Final

from relay.search.query import SearchQuery
from relay.store.base import SearchPage
from relay.store.sqlite.rows import COLUMNS, message

_M_COLUMNS: Final = ", ".join("m." + c.strip() for c in COLUMNS.split(","))
_ABOVE_ANY: Final = 1 << 62  # above any pos

_SEARCH: Final = f"""
    SELECT s.rowid, {_M_COLUMNS}
    FROM message_search AS s
    JOIN messages AS m ON m.pos = s.rowid
    JOIN participants AS p ON p.conversation = m.conversation AND p.user_id = ?2
    WHERE message_search MATCH ?1 AND s.rowid < ?3 AND m.seq > p.joined_seq {{}}
    ORDER BY s.rowid DESC
    LIMIT ?4
"""
_EVERYWHERE: Final = _SEARCH.format("")
_ONE_CONVERSATION: Final = _SEARCH.format("AND m.conversation = ?5")


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
    params: tuple[object, ...] = (
        query.fts5(),
        user_id,
        _ABOVE_ANY if before is None else before,
        limit + 1,
    )
    if conversation is None:
        rows = conn.execute(_EVERYWHERE, params).fetchall()
    else:
        rows = conn.execute(_ONE_CONVERSATION, (*params, conversation)).fetchall()
    page = rows[:limit]
    return SearchPage(
        [message(row[1:]) for row in page], [row[0] for row in page], len(rows) > limit
    )
