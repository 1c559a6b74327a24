"""Typing indicators on the wire: `typing` frames in, `typing` frames out (relay.core.typing_state
keeps who is typing; this forwards it). Typing frames are droppable: a slow connection loses
them first. A `stop` follows every forwarded `start` (from the user, the lapse, the user's last
device leaving, or the user leaving the group)."""

from __future__ import annotations

from attrs import define

from relay.core.broker import Broker
from relay.core.context import Context, wire
from relay.core.session import Session
from relay.core.typing_state import TypingKey
from relay.ports import Connection
from relay.protocol import TypingFrame, encode_typing


@define(eq=False)
class Indicators:
    _ctx: Context
    _broker: Broker

    def _audience(self, key: TypingKey) -> list[str]:
        if key.group_id is not None:
            group = self._ctx.router.cached_group(key.group_id)
            return [m for m in group.members if m != key.user_id] if group else []
        return [key.recipient_id] if key.recipient_id is not None else []

    def send(self, key: TypingKey, state: str) -> None:
        frame = wire(encode_typing(key.user_id, state, group_id=key.group_id))
        self._broker.to_users(self._audience(key), frame, droppable=True)

    async def on_typing(self, conn: Connection, session: Session, frame: TypingFrame) -> None:
        if frame.group_id is not None:
            group = await self._ctx.member_group(
                conn, session, frame.group_id, frame.ref, hide_unknown=True
            )
            if group is None:
                return
        key = TypingKey(session.user_id, frame.recipient_id, frame.group_id)
        tracker = self._ctx.typing
        if frame.state == "start":
            forward = tracker.start(key, self._ctx.clock())
        else:
            forward = tracker.stop(key)
        if forward:
            self.send(key, frame.state)

    def user_left(self, user: str) -> None:
        """The user's last device left: their typing stops everywhere."""
        for key in self._ctx.typing.clear_user(user):
            self.send(key, "stop")

    def lapse(self, now: float) -> None:
        for key in self._ctx.typing.lapsed(now):
            self.send(key, "stop")
