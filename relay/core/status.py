"""Presence on the wire: `status` and `presence` frames, and online/offline announcements.

relay.core.presence keeps who is online (with the grace before `offline`) and who may hear of
it; this sends it. Announcements are droppable (a slow connection loses them first) and go only
to connected contacts. A `presence` query may name any user ids (at most 1000) and answers
online/away/busy, or offline with lastSeen. lastSeen of a user gone offline waits in
`last_seen` until maintain() wrote it, so answers have it meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from attrs import define, field

from relay.core.broker import Broker
from relay.core.context import Context, wire
from relay.core.session import Session
from relay.ports import Connection
from relay.protocol import PresenceFrame, StatusFrame, encode_presence, encode_status

log = logging.getLogger("relay.core")


@define(eq=False)
class Status:
    _ctx: Context
    _broker: Broker
    last_seen: dict[str, str] = field(factory=dict)  # user -> lastSeen not yet written

    def announce(self, user: str, json_bytes: bytes) -> None:
        """A presence frame about `user` to every connected contact of theirs (droppable)."""
        # every contact: the broker reaches those connected here (and, with several nodes,
        # those connected to the others)
        self._broker.to_users(
            self._ctx.presence.contacts_of(user), wire(json_bytes), droppable=True
        )

    def online(self, user: str) -> None:
        self.announce(user, encode_status(user, "online", self._ctx.now_iso()))

    def offline(self, user: str, left_at: str) -> None:
        ctx = self._ctx
        self.announce(user, encode_status(user, "offline", ctx.now_iso(), last_seen=left_at))
        ctx.presence.forget(user)
        self.last_seen[user] = left_at

    def on_status(self, conn: Connection, session: Session, frame: StatusFrame) -> None:
        ctx = self._ctx
        user = session.user_id
        if frame.user_id is not None and frame.user_id != user:
            ctx.error(
                conn,
                session,
                "forbidden",
                "userId is not the authenticated user",
                ref=frame.ref,
                field="userId",
            )
            return
        ctx.presence.set_status(user, frame.status)
        self.announce(user, encode_status(user, frame.status, ctx.now_iso()))

    async def on_presence(self, conn: Connection, session: Session, frame: PresenceFrame) -> None:
        ctx = self._ctx
        presence = ctx.presence
        offline = [u for u in frame.user_ids if not presence.is_online(u)]
        # lastSeen not yet written, taken before reading (the write may finish meanwhile)
        pending = {u: self.last_seen[u] for u in offline if u in self.last_seen}
        seen = await ctx.store.last_seen(offline) if offline else {}
        seen.update(pending)
        users = [
            (u, presence.status_of(u), None if presence.is_online(u) else seen.get(u))
            for u in frame.user_ids
        ]
        ctx.send(conn, session, encode_presence(users, ref=frame.ref))

    async def write_last_seen(self, breathe: Callable[[], Awaitable[None]]) -> None:
        """maintain()'s step: lastSeen of users gone offline, into the store."""
        store = self._ctx.store
        for user, timestamp in list(self.last_seen.items()):
            await breathe()
            try:
                await store.set_last_seen(user, timestamp)
            except Exception:
                log.exception("recording lastSeen of %s failed; retrying", user)
                continue
            if self.last_seen.get(user) == timestamp:
                del self.last_seen[user]
