"""What the HTTP API does, over the messaging core's parts (no HTTP here).

Every operation takes the core's own path: a publish is `Pipeline.publish` (the same checks,
append and delivery as a client's message), presence reads the presence tracker and the
store's lastSeen like a `presence` frame, pages come from the store's `history` like a
`history` frame, a group is created or set in the store and the router's cache (the cache is
updated before anyone is told, as relay.core.groups keeps it), disconnecting closes the
user's connections through the router.

Several nodes (relay.cluster): every path goes through the service's Broker, so what the API
does on one node reaches devices on every node — a publish is delivered by the pipeline's
broker, group events go through `Broker.to_users`; presence `devices` and a disconnect use the
broker's cluster-wide view when it has one (`ReachesEveryNode`); history, pages and groups are
read from the shared store.

Values are validated by the protocol's own parsers (relay.protocol): a request is turned
into the client frame that means the same and parsed, so limits and error codes are the
frames'. Errors are FrameError (`code`, `field`), which the routes map onto HTTP statuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import orjson
from attrs import define

from relay.api.values import Page, Presence, Published
from relay.core.context import CLOSE_POLICY, wire
from relay.core.service import MessagingService
from relay.errors import Conflict, FrameError, NotFound
from relay.protocol import (
    GroupCreateFrame,
    HistoryFrame,
    encode_group,
    message_dict,
    parse_client_frame,
)
from relay.store.base import Group, StoredMessage, direct_conversation, group_conversation

#: Fields a publish body may carry (the contract's, plus senderName as a client may send it).
PUBLISH_FIELDS = frozenset(
    {"senderId", "recipientId", "groupId", "text", "id", "meta", "senderName", "e2e"}
    | {"attachments"}
)
#: The longest close reason a close frame can carry (RFC 6455: 125 bytes less the code).
CLOSE_REASON_MAX = 123


class NameFixed(FrameError):
    """A PUT of an existing group names another name (the store keeps no rename)."""


@runtime_checkable
class ReachesEveryNode(Protocol):
    """A broker of several nodes (relay.cluster.ClusterBroker): the user's devices on every
    node, and closing them there."""

    def devices(self, user: str) -> int:
        """The user's signed-in connections on every node."""
        ...

    def close_elsewhere(self, user: str, reason: str) -> None:
        """Close the user's connections on the other nodes (1008, `reason`)."""
        ...


def invalid(field: str, message: str) -> FrameError:
    return FrameError("invalid", f"{field}: {message}", field=field)


def _frame(obj: dict[str, Any], service: MessagingService) -> Any:
    """The client frame `obj` means, parsed with the protocol's parser (its FrameError)."""
    return parse_client_frame(orjson.dumps(obj), service.ctx.limits)


@define(eq=False)
class ApiBackend:
    service: MessagingService

    # --- publish ----------------------------------------------------------------------------------
    async def publish(self, body: object) -> Published:
        """Publish `body` ({senderId, recipientId|groupId, text|e2e, id?, meta?,
        senderName?})."""
        if not isinstance(body, dict):
            raise FrameError("bad_frame", "the body must be a JSON object")
        for name, value in body.items():
            if name not in PUBLISH_FIELDS:
                raise invalid(name, "is not a field of a publish")
            if value is None:  # a field is given or absent, never null
                raise invalid(name, "must not be null")
        sender = body.get("senderId")
        if not isinstance(sender, str) or not sender:
            raise invalid("senderId", "is required (a non-empty string)")
        if "text" not in body and "e2e" not in body and "attachments" not in body:
            raise invalid("text", "is required (or e2e, for an encrypted message)")
        message_id = body.get("id")
        if message_id is not None and not isinstance(message_id, str):
            raise invalid("id", "must be a string")
        stored: StoredMessage = await self.service.publish(
            sender_id=sender,
            text=body.get("text"),
            recipient_id=body.get("recipientId"),
            group_id=body.get("groupId"),
            message_id=message_id,
            sender_name=body.get("senderName"),
            meta=body.get("meta"),
            e2e=body.get("e2e"),
            attachments=body.get("attachments"),
        )
        return Published(stored.id, stored.seq, stored.server_timestamp)

    # --- presence ---------------------------------------------------------------------------------
    async def presence(self, user_id: str) -> Presence:
        _frame({"type": "presence", "userIds": [user_id]}, self.service)
        ctx = self.service.ctx
        presence = ctx.presence
        broker = self.service.broker
        if isinstance(broker, ReachesEveryNode):
            devices = broker.devices(user_id)
        else:
            devices = len(ctx.router.connections(user_id))
        if presence.is_online(user_id):
            return Presence(user_id, presence.status_of(user_id), None, devices)
        # lastSeen not yet written, taken before reading (the write may finish meanwhile)
        pending = self.service.status.last_seen.get(user_id)
        seen = (await ctx.store.last_seen([user_id])).get(user_id)
        return Presence(user_id, "offline", pending or seen, devices)

    # --- history ----------------------------------------------------------------------------------
    def history_query(
        self, query: dict[str, str], *, peer_id: str | None, group_id: str | None
    ) -> HistoryFrame:
        """The history frame of a page request (query strings -> integers first)."""
        obj: dict[str, Any] = {"type": "history"}
        if group_id is not None:
            obj["groupId"] = group_id
        else:
            obj["peerId"] = peer_id
        for name in ("before", "after", "limit"):
            text = query.get(name)
            if text is None:
                continue
            # past 64 bits JSON cannot carry it to the parser (orjson): refused here, as a 5xx
            # would otherwise be
            if not text.isascii() or not text.isdigit() or len(text) > 20 or int(text) >> 64:
                raise invalid(name, "must be a whole number")
            obj[name] = int(text)
        frame = _frame(obj, self.service)
        assert isinstance(frame, HistoryFrame)
        return frame

    async def conversation_page(self, user_id: str, frame: HistoryFrame) -> Page:
        """A page of the 1:1 conversation of `user_id` with frame.peer_id, as `user_id`'s
        `history` frame has it (their own messages' status from the peer's watermarks)."""
        _frame({"type": "presence", "userIds": [user_id]}, self.service)  # the id's checks
        assert frame.peer_id is not None
        conversation = direct_conversation(user_id, frame.peer_id)
        return await self._page(conversation, frame, viewer=user_id)

    async def group_page(self, frame: HistoryFrame) -> Page:
        """A page of a group's messages; each one's status as its sender sees it."""
        assert frame.group_id is not None
        ctx = self.service.ctx
        if await ctx.router.group(ctx.store, frame.group_id) is None:
            raise FrameError("not_found", "no such group", field="groupId")
        return await self._page(group_conversation(frame.group_id), frame, viewer=None)

    async def _page(self, conversation: str, frame: HistoryFrame, *, viewer: str | None) -> Page:
        store = self.service.ctx.store
        messages, has_more = await store.history(
            conversation, before=frame.before, after=frame.after, limit=frame.limit
        )
        statuses = await self._statuses(conversation, messages, viewer)
        items = [message_dict(m, s) for m, s in zip(messages, statuses, strict=True)]
        return Page(items, has_more)

    async def _statuses(
        self, conversation: str, messages: Sequence[StoredMessage], viewer: str | None
    ) -> list[str]:
        """relay.core.history's rule: a message's status is `read`/`delivered` when every
        other participant's watermark covers it, else `sent`; messages the viewer did not
        send say `delivered` (viewer None: every message as its own sender sees it)."""
        statuses = ["delivered"] * len(messages)
        if not messages:
            return statuses
        watermarks = await self.service.ctx.store.member_watermarks(conversation)
        for i, message in enumerate(messages):
            sender = message.sender_id
            if viewer is not None and sender != viewer:
                continue
            others = [w for u, w in watermarks.items() if u != sender]
            if not others:
                continue  # a note to self, or a group of one
            seq = message.seq
            if seq <= min(w.read_seq for w in others):
                statuses[i] = "read"
            elif seq > min(w.delivered_seq for w in others):
                statuses[i] = "sent"
        return statuses

    # --- groups -----------------------------------------------------------------------------------
    async def put_group(self, group_id: str, body: object) -> tuple[Group, bool]:
        """Create the group, or set its members; (the group, whether it was created).

        The name is fixed at creation (the store keeps no rename): a different name for an
        existing group is refused (`invalid`, field `name`, answered 409). A new group's
        `createdBy` is the first of `members` as given."""
        if not isinstance(body, dict):
            raise FrameError("bad_frame", "the body must be a JSON object")
        for name, value in body.items():
            if name not in ("name", "members"):
                raise invalid(name, "is not a field of a group")
            if value is None:
                raise invalid(name, "must not be null")
        if "members" not in body:
            raise invalid("members", "is required")
        members_in = body["members"]
        frame = _frame(
            {
                "type": "group_create",
                "groupId": group_id,
                "members": members_in,
                **({"name": body["name"]} if "name" in body else {}),
            },
            self.service,
        )
        assert isinstance(frame, GroupCreateFrame)
        members = tuple(sorted(set(frame.members)))
        if not members:
            raise invalid("members", "a group needs at least one member")
        creator = frame.members[0]
        ctx = self.service.ctx
        existing = await ctx.router.group(ctx.store, group_id)
        if existing is None:
            try:
                group = await ctx.store.create_group(
                    Group(group_id, frame.name, members, creator, ctx.now_iso())
                )
            except Conflict:  # created meanwhile: set it instead
                existing = await ctx.store.get_group(group_id)
                if existing is None:
                    raise
            else:
                ctx.presence.link(members, members)
                self._changed(group, "create", ())
                return group, True
        if "name" in body and frame.name != existing.name:
            raise NameFixed(
                "invalid", "name: a group's name is fixed at its creation", field="name"
            )
        added = [m for m in members if m not in existing.members]
        removed = [m for m in existing.members if m not in members]
        if not added and not removed:
            return existing, False
        try:
            group = await ctx.store.set_group_members(group_id, members)
        except NotFound:
            ctx.router.forget_group(group_id)
            raise FrameError("not_found", "no such group", field="groupId") from None
        if added:
            ctx.presence.link(added, group.members)
            self._changed(group, "add", ())
        if removed:
            self._changed(group, "remove", removed)
            for user in removed:
                still = await ctx.store.contacts(user)
                ctx.presence.unlink(user, [m for m in existing.members if m not in still])
        return group, False

    def _changed(self, group: Group, event: str, also: Sequence[str]) -> None:
        """As relay.core.groups: the cache first, then the `group` frame to every member and
        to those removed."""
        ctx = self.service.ctx
        ctx.router.put_group(group)
        audience = dict.fromkeys([*group.members, *also])
        broker = self.service.broker
        assert broker is not None  # the service always has one
        broker.to_users(audience, wire(encode_group(group, event=event)))

    # --- disconnect -------------------------------------------------------------------------------
    def disconnect(self, user_id: str, body: object) -> int:
        """Close every connection of `user_id` with 1008 and `reason`, on every node; how many
        were open (on other nodes: as they last announced, relay.cluster.presence)."""
        _frame({"type": "presence", "userIds": [user_id]}, self.service)
        if not isinstance(body, dict):
            raise FrameError("bad_frame", "the body must be a JSON object")
        for name in body:
            if name != "reason":
                raise invalid(name, "is not a field of a disconnect")
        reason = body.get("reason", "access revoked")
        if not isinstance(reason, str):
            raise invalid("reason", "must be a string")
        if len(reason.encode("utf-8")) > CLOSE_REASON_MAX:
            raise invalid("reason", f"at most {CLOSE_REASON_MAX} bytes of UTF-8")
        closed = 0
        broker = self.service.broker
        if isinstance(broker, ReachesEveryNode):
            closed = broker.devices(user_id) - len(self.service.ctx.router.connections(user_id))
            broker.close_elsewhere(user_id, reason)
        conns = self.service.ctx.router.connections(user_id)
        for conn in conns:
            session = conn.state
            if session is not None:
                session.close()
            conn.close(CLOSE_POLICY, reason)
        return closed + len(conns)
