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
  thread and does not wait. A SQL store's answer is queued from the searcher's wake-up of
  Trio (SearchesMarked's `then`), not by this task once it is scheduled again: on a loaded
  relay that is a pass of the event loop sooner (bench `search`, three alternating pairs:
  p99 63.6 / 65.3 / 67.7 -> 55.4 / 47.0 / 41.4 ms). The task still waits for it, so a
  connection's frames are handled in order and it has one search in flight at most.
- Each item is a message frame with the `status` history gives it: the user's own messages
  `read` / `delivered` / `sent` as every other current participant's watermarks cover them,
  everyone else's `delivered`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
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
    Marked,
    Searchable,
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
        then: Callable[[Marked], None] | None = None,
    ) -> Marked:
        """Searchable.search, and Store.member_watermarks of every conversation of the
        user's own messages in the page. `then(result)`, when given, runs in the Trio thread
        as soon as the read completed, before this coroutine resumes (a pass of the event loop
        sooner); what it raises, this raises."""
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

        def answer(found: Marked) -> None:
            self._answer(conn, session, frame, found, began)

        if isinstance(store, SearchesMarked):
            # answered from the store's callback: the frame is queued before this task runs
            # again, which on a loaded relay is a pass of the event loop later
            await store.search_marked(
                user,
                frame.terms,
                conversation=conversation,
                before=frame.before,
                limit=frame.limit,
                then=answer,
            )
            return
        page = await store.search(
            user, frame.terms, conversation=conversation, before=frame.before, limit=frame.limit
        )
        answer((page, await self._watermarks(user, page.messages)))

    def _answer(
        self, conn: Connection, session: Session, frame: SearchFrame, found: Marked, began: float
    ) -> None:
        """Queue the `search_result` of a page: at most `limit` items, and at most half the
        outbox encoded (keeping the newest, at least one, with `hasMore` and `next`)."""
        ctx = self._ctx
        page, known = found
        messages, positions, has_more = page.messages, page.positions, page.has_more
        statuses = _statuses(session.user_id, messages, known)
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

    async def _watermarks(
        self, user: str, messages: Sequence[StoredMessage]
    ) -> dict[str, dict[str, Watermarks]]:
        """The watermarks of each conversation of the user's own messages in a page (what
        SearchesMarked reads with the page)."""
        store = self._ctx.store
        known: dict[str, dict[str, Watermarks]] = {}
        for message in messages:
            key = message.conversation
            if message.sender_id == user and key not in known:
                known[key] = await store.member_watermarks(key)
        return known


def _statuses(
    user: str, messages: Sequence[StoredMessage], known: dict[str, dict[str, Watermarks]]
) -> list[str]:
    """The `status` of each item, as history gives it (see core/history.py); `known`: the
    watermarks of the conversations of the user's own messages."""
    statuses = ["delivered"] * len(messages)
    covered: dict[str, tuple[int, int] | None] = {}  # conversation -> (delivered, read)
    for i, message in enumerate(messages):
        if message.sender_id != user:
            continue
        key = message.conversation
        if key not in covered:
            others = [w for u, w in known[key].items() if u != user]
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
