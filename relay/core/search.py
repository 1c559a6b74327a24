"""Search: the `search` frame (protocol-v2 "Search") answered with a `search_result` page.

- What is searched: the store's Searchable ability (store/base.py), tested once when the part
  is built; a store without it answers every search with error `unknown_type`.
- Scope: every conversation of the user; `peerId` narrows it to the user's 1:1 with that user,
  `groupId` to a group the user is a member of (else `forbidden`; an unknown group
  `not_found`, as for history). Of a group, only the messages since the user last joined it.
- A page is at most `limit` items, newest first, and at most half of `outbox_max_bytes`
  encoded: a page that would be larger keeps its newest items (at least one) and says
  `hasMore: true`, with `next` after the last item kept, so paging on loses nothing.
- How many searches run at once is the store's to decide: the SQL stores run one at a time,
  first come first served, in a thread of their own (relay/store/searcher.py), since their
  threads share the relay's core with the event loop; the memory store's search takes no
  thread and does not wait.
- Each item is a message frame with the `status` history gives it: the user's own messages
  `read` / `delivered` / `sent` as every other current participant's watermarks cover them,
  everyone else's `delivered`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import orjson
from attrs import define, field

from relay.core.context import Context
from relay.core.session import Session
from relay.fastpath import message_dict
from relay.ports import Connection
from relay.protocol import SearchFrame, encode_search_result
from relay.search.query import SearchQuery
from relay.store.base import (
    Searchable,
    SearchPage,
    StoredMessage,
    Watermarks,
    direct_conversation,
    group_conversation,
)

_monotonic = time.monotonic


@runtime_checkable
class SearchesMarked(Protocol):
    """A Searchable store that reads a page and its statuses' watermarks in one read (the SQLite
    and PostgreSQL stores): one worker-thread round trip per search, where a read per
    conversation of the page cost a pass of the event loop each (~10 ms on a loaded relay)."""

    async def search_marked(
        self,
        user_id: str,
        query: SearchQuery,
        *,
        conversation: str | None = None,
        before: int | None = None,
        limit: int = 20,
    ) -> tuple[SearchPage, dict[str, dict[str, Watermarks]]]:
        """Searchable.search, and Store.member_watermarks of every conversation of the
        user's own messages in the page."""
        ...


@define(eq=False, init=False)
class Search:
    _ctx: Context
    _store: Searchable | None = field(default=None)

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._store = ctx.store if isinstance(ctx.store, Searchable) else None

    async def on_search(self, conn: Connection, session: Session, frame: SearchFrame) -> None:
        began = _monotonic()
        ctx = self._ctx
        user = session.user_id
        if self._store is None:
            ctx.error(
                conn, session, "unknown_type", "this relay's store cannot search", ref=frame.ref
            )
            return
        conversation: str | None = None
        if frame.group_id is not None:
            if await ctx.member_group(conn, session, frame.group_id, frame.ref) is None:
                return
            conversation = group_conversation(frame.group_id)
        elif frame.peer_id is not None:
            conversation = direct_conversation(user, frame.peer_id)
        store = self._store
        known: dict[str, dict[str, Watermarks]] = {}
        if isinstance(store, SearchesMarked):
            page, known = await store.search_marked(
                user,
                frame.terms,
                conversation=conversation,
                before=frame.before,
                limit=frame.limit,
            )
        else:
            page = await store.search(
                user,
                frame.terms,
                conversation=conversation,
                before=frame.before,
                limit=frame.limit,
            )
        messages, positions, has_more = page.messages, page.positions, page.has_more
        statuses = await self._statuses(user, messages, known)
        answer = encode_search_result(
            messages, statuses, has_more=has_more, cursor=page.next, ref=frame.ref
        )
        budget = ctx.config.outbox_max_bytes // 2
        if len(answer) > budget:
            room = budget - 128  # the frame around the items, `next` included
            keep = 0
            for message, status in zip(messages, statuses, strict=True):
                room -= len(orjson.dumps(message_dict(message, status))) + 1
                if room < 0:
                    break
                keep += 1
            keep = max(keep, 1)
            answer = encode_search_result(
                messages[:keep],
                statuses[:keep],
                has_more=True,
                cursor=positions[keep - 1],
                ref=frame.ref,
            )
        ctx.send(conn, session, answer)
        ctx.stats.search_seconds.observe(_monotonic() - began)

    async def _statuses(
        self,
        user: str,
        messages: Sequence[StoredMessage],
        known: dict[str, dict[str, Watermarks]],
    ) -> list[str]:
        """The `status` of each item, as history gives it (see core/history.py); `known`: the
        watermarks of conversations read already."""
        statuses = ["delivered"] * len(messages)
        covered: dict[str, tuple[int, int] | None] = {}  # conversation -> (delivered, read)
        store = self._ctx.store
        for i, message in enumerate(messages):
            if message.sender_id != user:
                continue
            key = message.conversation
            if key not in covered:
                marks = known[key] if key in known else await store.member_watermarks(key)
                others = [w for u, w in marks.items() if u != user]
                covered[key] = (
                    (min(w.delivered_seq for w in others), min(w.read_seq for w in others))
                    if others
                    else None
                )
            cover = covered[key]
            if cover is not None:
                delivered, read = cover
                seq = message.seq
                statuses[i] = "read" if seq <= read else "delivered" if seq <= delivered else "sent"
        return statuses
