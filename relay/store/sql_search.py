"""What the SQL stores' search reads share (sqlite/search.py, postgres/search.py): the page
around a store's own way to its rows, and `search_marked` around that page.

A store's way (`Rows`) returns the user's matching messages newest first, each row its `pos`
then the message's columns (the store's rows.COLUMNS), up to `want` of them (more is allowed:
the page takes `want - 1` and says whether there were more), below `high` (a pos, exclusive).
It is called only for a query with terms. Everything a store differs in (its index, its
statements, its reading of a row) stays in its own module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

from relay.search.query import SearchQuery
from relay.store.base import Marked, SearchPage, StoredMessage, Watermarks

C = TypeVar("C")
P = ParamSpec("P")

#: above any pos: the bound of a first page
ABOVE_ANY: Final = 1 << 62

#: the matching rows, newest first: (conn, user_id, query, conversation, high, want)
Rows = Callable[[C, str, SearchQuery, str | None, int, int], list[Any]]
#: Searchable.search as a read on one connection: (conn, user_id, query, conversation,
#: before, limit)
PageRead = Callable[[C, str, SearchQuery, str | None, int | None, int], SearchPage]


def selected(columns: str) -> tuple[str, int]:
    """A store's message `columns` as selected from `messages AS m`, and where the text is in
    a row that starts with the pos."""
    names = [c.strip() for c in columns.split(",")]
    return ", ".join("m." + name for name in names), 1 + names.index("text")


def page_read(rows: Rows[C], message: Callable[[Sequence[Any]], StoredMessage]) -> PageRead[C]:
    """Searchable.search on one connection, by the store's `rows` and its reading of a row."""

    def search(
        conn: C,
        user_id: str,
        query: SearchQuery,
        conversation: str | None,
        before: int | None,
        limit: int,
    ) -> SearchPage:
        limit = max(limit, 0)
        if not query.terms:
            return SearchPage([], [], False)
        high = ABOVE_ANY if before is None else before
        found = rows(conn, user_id, query, conversation, high, limit + 1)
        page = found[:limit]
        return SearchPage(
            [message(row[1:]) for row in page], [row[0] for row in page], len(found) > limit
        )

    return search


def marked_read(
    search: Callable[Concatenate[C, str, P], SearchPage],
    watermarks: Callable[[C, list[str]], dict[str, dict[str, Watermarks]]],
) -> Callable[Concatenate[C, str, P], Marked]:
    """SearchesMarked.search_marked on one connection (the arguments of `search`): the page,
    and the member watermarks (`watermarks`: the store's, of several conversations) of each
    conversation of the user's own messages in it, in the same read."""

    def search_marked(conn: C, user_id: str, /, *args: P.args, **kwargs: P.kwargs) -> Marked:
        page = search(conn, user_id, *args, **kwargs)
        own = dict.fromkeys(m.conversation for m in page.messages if m.sender_id == user_id)
        return page, watermarks(conn, list(own))

    return search_marked
