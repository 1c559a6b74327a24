"""Groups: create, add, remove, leave, and the membership checks other frames use.

group_create (the creator is always a member; at most `max_group_members`), group_add (any
member may add), group_remove (only the group's creator, while a member, may remove others;
anyone may remove themselves, which is the same as group_leave), group_leave (any member). The
`group` frame (with `event`: create/add/remove/leave) goes to every member after the change and
to everyone removed; the requesting connection's copy carries `ref`. Unknown group ->
`not_found`; a non-member asking about it -> `forbidden`; a taken group id -> `invalid` (field
groupId). A create, an add, or a remove of others is first counted against the user's token
bucket (`group_rate_limit` per second, bursts of `group_rate_burst`), whatever its outcome, as
each may cost the store a write and every member a frame: over it -> error `rate_limited`,
nothing done. Leaving (group_leave, or removing only oneself) is not counted: a user can always
get out of a group, and no one leaves a group they were not put in by a counted change.
Invariant: the router's group cache is updated before anyone is told of a change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from attrs import define

from relay.core.broker import Broker
from relay.core.context import Context, wire
from relay.core.indicators import Indicators
from relay.core.session import Session
from relay.errors import Conflict, NotFound
from relay.ports import Connection
from relay.protocol import (
    GroupAddFrame,
    GroupCreateFrame,
    GroupLeaveFrame,
    GroupRemoveFrame,
    encode_group,
)
from relay.store.base import Group


@define(eq=False)
class Groups:
    _ctx: Context
    _broker: Broker
    _indicators: Indicators

    async def on_create(self, conn: Connection, session: Session, frame: GroupCreateFrame) -> None:
        ctx = self._ctx
        user = session.user_id
        if self._limited(conn, session, frame.ref):
            return
        members = tuple(sorted({*frame.members, user}))
        if self._too_many(conn, session, len(members), frame.ref, "members"):
            return
        try:
            group = await ctx.store.create_group(
                Group(
                    group_id=frame.group_id,
                    name=frame.name,
                    members=members,
                    created_by=user,
                    created_at=ctx.now_iso(),
                )
            )
        except Conflict:
            ctx.error(
                conn, session, "invalid", "this group id is taken", ref=frame.ref, field="groupId"
            )
            return
        ctx.presence.link(group.members, group.members)
        self._changed(conn, session, group, "create", frame.ref)

    async def on_add(self, conn: Connection, session: Session, frame: GroupAddFrame) -> None:
        if self._limited(conn, session, frame.ref):
            return
        group = await self._ctx.member_group(conn, session, frame.group_id, frame.ref)
        if group is None:
            return
        members = tuple(sorted({*group.members, *frame.user_ids}))
        if self._too_many(conn, session, len(members), frame.ref, "userIds"):
            return
        group = await self._set_members(conn, session, group, members, frame.ref)
        if group is None:
            return
        self._ctx.presence.link(frame.user_ids, group.members)
        self._changed(conn, session, group, "add", frame.ref)

    async def on_remove(self, conn: Connection, session: Session, frame: GroupRemoveFrame) -> None:
        user = session.user_id
        leaving = set(frame.user_ids) == {user}
        if not leaving and self._limited(conn, session, frame.ref):
            return
        group = await self._ctx.member_group(conn, session, frame.group_id, frame.ref)
        if group is None:
            return
        if group.created_by != user and not leaving:
            self._ctx.error(
                conn,
                session,
                "forbidden",
                "only the group's creator removes members",
                ref=frame.ref,
                field="userIds",
            )
            return
        removed = [u for u in frame.user_ids if u in group.members]
        event = "leave" if removed == [user] else "remove"
        await self._remove_members(conn, session, group, removed, event, frame.ref)

    async def on_leave(self, conn: Connection, session: Session, frame: GroupLeaveFrame) -> None:
        group = await self._ctx.member_group(conn, session, frame.group_id, frame.ref)
        if group is None:
            return
        await self._remove_members(conn, session, group, [session.user_id], "leave", frame.ref)

    def _changed(
        self,
        conn: Connection,
        session: Session,
        group: Group,
        event: str,
        ref: str | None,
        also: Iterable[str] = (),
    ) -> None:
        """The `group` frame to every member and to `also` (those removed); `ref` to the asker."""
        self._ctx.router.put_group(group)
        audience = dict.fromkeys([*group.members, *also])
        self._broker.to_users(audience, wire(encode_group(group, event=event)), exclude=conn)
        self._ctx.send(conn, session, encode_group(group, event=event, ref=ref))

    def _limited(self, conn: Connection, session: Session, ref: str | None) -> bool:
        """Counts one change against the user's bucket; True (answered `rate_limited`) when
        the bucket is empty."""
        ctx = self._ctx
        if ctx.group_limiter.allow(session.user_id, ctx.clock()):
            return False
        ctx.stats.frame_rate_limited("group")
        ctx.error(conn, session, "rate_limited", "too many group changes; slow down", ref=ref)
        return True

    def _too_many(
        self, conn: Connection, session: Session, count: int, ref: str | None, field: str
    ) -> bool:
        most = self._ctx.config.max_group_members
        if count <= most:
            return False
        self._ctx.error(
            conn, session, "invalid", f"a group has at most {most} members", ref=ref, field=field
        )
        return True

    async def _set_members(
        self,
        conn: Connection,
        session: Session,
        group: Group,
        members: Sequence[str],
        ref: str | None,
    ) -> Group | None:
        ctx = self._ctx
        try:
            return await ctx.store.set_group_members(group.group_id, members)
        except NotFound:
            ctx.router.forget_group(group.group_id)
            ctx.error(conn, session, "not_found", "no such group", ref=ref, field="groupId")
            return None

    async def _remove_members(
        self,
        conn: Connection,
        session: Session,
        group: Group,
        removed: Sequence[str],
        event: str,
        ref: str | None,
    ) -> None:
        ctx = self._ctx
        gone = set(removed)
        updated = await self._set_members(
            conn, session, group, [m for m in group.members if m not in gone], ref
        )
        if updated is None:
            return
        self._changed(conn, session, updated, event, ref, also=removed)
        presence = ctx.presence
        for user in removed:
            # their typing in this group stops, announced to who remains
            for key in [k for k in ctx.typing.keys_of(user) if k.group_id == group.group_id]:
                if ctx.typing.stop(key):
                    self._indicators.send(key, "stop")
            if presence.has_contacts(user) or any(
                presence.has_contacts(m) for m in updated.members
            ):
                still = await ctx.store.contacts(user)
                presence.unlink(user, [m for m in group.members if m not in still])
