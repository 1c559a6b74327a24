"""History pages and the conversation list.

- `history`: a page of a conversation, at most `limit` messages and at most half of
  `outbox_max_bytes` encoded; a page cut short by the size keeps the end the client pages
  toward (the oldest for `after`, the newest otherwise) and says `hasMore: true`. The user's own
  messages carry `status` as the other participants' watermarks give it: `read` / `delivered`
  when every other current participant's read / delivered watermark covers the message (the
  peer's in a 1:1; all the other members' in a group), else `sent`. Messages of others, and
  pages of a conversation without another participant, say `delivered`.
- `conversations`: newest first, cut the same way, with `hasMore: true` only when it was cut;
  group items carry the group `name`.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from attrs import define

from relay.core.context import Context
from relay.core.session import Session
from relay.ports import Connection
from relay.protocol import (
    ConversationsFrame,
    HistoryFrame,
    conversation_item,
    encode_conversations,
    encode_history,
    message_dict,
)
from relay.store.base import StoredMessage, direct_conversation, group_conversation


@define(eq=False)
class History:
    _ctx: Context

    async def on_conversations(
        self, conn: Connection, session: Session, frame: ConversationsFrame
    ) -> None:
        ctx = self._ctx
        summaries = await ctx.store.conversations(session.user_id, limit=frame.limit)
        items = []
        for summary in summaries:
            name = None
            if summary.group_id is not None:
                group = await ctx.router.group(ctx.store, summary.group_id)
                name = group.name if group else None
            items.append(conversation_item(summary, group_name=name))
        answer = encode_conversations(items, ref=frame.ref)
        budget = ctx.config.outbox_max_bytes // 2
        if len(answer) > budget:
            # like a history page: at most half an outbox, newest first, `hasMore` when cut
            room = budget - 64
            keep = 0
            for item in items:
                room -= len(orjson.dumps(item)) + 1
                if room < 0:
                    break
                keep += 1
            answer = encode_conversations(items[: max(keep, 1)], ref=frame.ref, has_more=True)
        ctx.send(conn, session, answer)

    async def on_history(self, conn: Connection, session: Session, frame: HistoryFrame) -> None:
        ctx = self._ctx
        user = session.user_id
        if frame.group_id is not None:
            if await ctx.member_group(conn, session, frame.group_id, frame.ref) is None:
                return
            conversation = group_conversation(frame.group_id)
        else:
            assert frame.peer_id is not None
            conversation = direct_conversation(user, frame.peer_id)
        messages, has_more = await ctx.store.history(
            conversation, before=frame.before, after=frame.after, limit=frame.limit
        )
        statuses = await self._statuses(user, conversation, messages)
        page = encode_history(
            messages,
            has_more,
            peer_id=frame.peer_id,
            group_id=frame.group_id,
            ref=frame.ref,
            statuses=statuses,
        )
        budget = ctx.config.outbox_max_bytes // 2
        if len(page) > budget:
            # a page must fit in half an outbox: keep the end the client paged toward
            # (the oldest for `after`, the newest otherwise) and say there is more
            sizes = [
                len(orjson.dumps(message_dict(m, status))) + 1
                for m, status in zip(messages, statuses, strict=True)
            ]
            room = budget - (len(page) - sum(sizes))
            keep = 0
            for size in sizes if frame.after is not None else reversed(sizes):
                if room < size:
                    break
                room -= size
                keep += 1
            keep = max(keep, 1)
            cut = (
                slice(None, keep) if frame.after is not None else slice(len(messages) - keep, None)
            )
            page = encode_history(
                messages[cut],
                True,
                peer_id=frame.peer_id,
                group_id=frame.group_id,
                ref=frame.ref,
                statuses=statuses[cut],
            )
        ctx.send(conn, session, page)

    async def _statuses(
        self, user: str, conversation: str, messages: Sequence[StoredMessage]
    ) -> list[str]:
        """The `status` of each message of a history page (see the module doc)."""
        statuses = ["delivered"] * len(messages)
        if not any(m.sender_id == user for m in messages):
            return statuses
        watermarks = await self._ctx.store.member_watermarks(conversation)
        others = [w for u, w in watermarks.items() if u != user]
        if not others:
            return statuses  # a note to self, or a group of one
        delivered = min(w.delivered_seq for w in others)
        read = min(w.read_seq for w in others)
        for i, message in enumerate(messages):
            if message.sender_id == user:
                seq = message.seq
                statuses[i] = "read" if seq <= read else "delivered" if seq <= delivered else "sent"
        return statuses
