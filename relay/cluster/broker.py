"""ClusterBroker: the core's Broker port for several nodes on one Redis.

Local devices get what the LocalBroker gives them, through the Orderer (per conversation and
user, in seq order across nodes); every other node that holds a recipient device gets it over
Redis: the message (or frame) is encoded once and published to each recipient's user channel
(relay.cluster.envelope), to which a node subscribes while it holds one of that user's devices.
Publishing is queued here (the core's calls are synchronous) and done by the link's publisher
task in queue order (relay.cluster.link), after the store's commit: the pipeline delivers only
committed messages.

Invariants:
- this node's own publications are ignored when they come back (their origin is this node);
- a user is subscribed (`joined`, awaited before the device's backlog is read) before any of
  its devices reads the store, so nothing committed after that read can pass it by;
- `problem()` is why this node cannot take part now (Redis lost), None while it can.
"""

from __future__ import annotations

import collections
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence

from relay.cluster.calls import ClusterCalls
from relay.cluster.envelope import (
    CALL,
    DELIVERY,
    DISCONNECT,
    FRAME,
    FRAME_DROPPABLE,
    GROUP_CHANGED,
    NODES_CHANNEL,
    encode_group_changed,
    encode_message,
    envelope,
    group_event,
    user_channel,
)
from relay.cluster.ordering import Orderer
from relay.cluster.presence import ClusterPresence
from relay.core.broker import LocalBroker
from relay.core.calls import Calls
from relay.core.context import CLOSE_POLICY, Context
from relay.core.session import Session
from relay.ports import Connection
from relay.store.base import StoredMessage, group_conversation

#: most publications queued while Redis is away; older ones are dropped (the store has the
#: messages; devices catch up when the link comes back, see link.py)
QUEUE_MAX = 100_000


class ClusterBroker:
    """The Broker of one node of several (see the module docstring)."""

    def __init__(self, ctx: Context, *, node_id: str | None = None, gap_wait: float = 0.25):
        self.ctx = ctx
        self.node_id = node_id or secrets.token_hex(6)
        self.local = LocalBroker(ctx)
        self.orderer = Orderer(
            self._deliver_here, gap_wait=gap_wait, position=self._position, on_blind=self._blind
        )
        self.wake_gaps: Callable[[], None] = lambda: None  # the link's gap filler is told
        self.outgoing: collections.deque[tuple[str, bytes]] = collections.deque(maxlen=QUEUE_MAX)
        self.wake: Callable[[], None] = lambda: None  # the link's publisher is told of work
        self.redis_problem: str | None = "not connected to Redis yet"
        # subscribes this node to a user's channel (set by the link, relay.cluster.link)
        self.join_hook: Callable[[str], Awaitable[None]] | None = None
        self.presence = ClusterPresence(
            ctx.config.presence_grace,
            changed=self._presence_changed,
            clock=ctx.clock,
            node=self.node_id,
        )
        self.presence_changes: list[tuple[str, bool]] = []
        # users whose count of devices here changed while this node holds them (announced
        # with the next presence change)
        self.recount: set[str] = set()
        ctx.presence = self.presence
        self.calls: ClusterCalls | None = None  # set by call_routing (relay.core.calls)

    # --- health ---------------------------------------------------------------------------------
    def problem(self) -> str | None:
        return self.redis_problem

    # --- Broker ---------------------------------------------------------------------------------
    def deliver(
        self,
        messages: Sequence[StoredMessage],
        audience: Sequence[str],
        exclude: Connection | None,
    ) -> None:
        for message in messages:  # each is ordered and published on its own
            self._deliver_one(message, audience, exclude)

    def _deliver_one(
        self, message: StoredMessage, audience: Sequence[str], exclude: Connection | None
    ) -> None:
        table = self.ctx.router.table()
        local: list[str] = []
        now = self.ctx.clock()
        for user in audience:
            conns = table.get(user)
            if conns is None:
                continue
            if exclude is not None and len(conns) == 1 and conns[0] is exclude:
                # the sender's own message from their only device here: nothing to deliver
                self.orderer.passed(message.conversation, message.seq, user, now)
            else:
                local.append(user)
        if local:
            self.orderer.offer(message, local, exclude, now)
        elif message.recipient_id is not None and message.group_id is None:
            self.ctx.presence.pair(message.sender_id, message.recipient_id)
        body = envelope(DELIVERY, self.node_id, encode_message(message))
        self._publish(audience, body)

    def _deliver_here(
        self, message: StoredMessage, users: Sequence[str], exclude: Connection | None
    ) -> None:
        """The orderer's release: one message to these users' devices on this node."""
        self.local.deliver((message,), users, exclude)

    def to_users(
        self,
        users: Iterable[str],
        frame: bytes,
        *,
        droppable: bool = False,
        exclude: Connection | None = None,
    ) -> None:
        users = list(users)
        self.local.to_users(users, frame, droppable=droppable, exclude=exclude)
        body = envelope(FRAME_DROPPABLE if droppable else FRAME, self.node_id, frame)
        if not droppable:
            changed = group_event(frame)
            if changed is not None:  # every node reads the group's members again
                self.forget_group(*changed)
                note = envelope(GROUP_CHANGED, self.node_id, encode_group_changed(*changed))
                self.outgoing.append((NODES_CHANNEL, note))
        self._publish(users, body)

    def _publish(self, users: Iterable[str], body: bytes) -> None:
        outgoing = self.outgoing
        for user in dict.fromkeys(users):
            outgoing.append((user_channel(user), body))
        self.wake()

    # --- the orderer's start of a key (relay.cluster.ordering) ----------------------------------
    def _position(self, conversation: str, user: str) -> int | None:
        """The highest seq of `conversation` sent to every live device of `user` here; None
        when a device has none (or the user has no device taking live deliveries)."""
        conns = self.ctx.router.table().get(user)
        lowest: int | None = None
        for conn in conns if conns is not None else ():
            session = conn.state
            if not isinstance(session, Session) or session.backlog is not None:
                continue  # a device in its backlog gets the conversation from the store
            sent = session.sent_upto.get(conversation)
            if sent is None:
                return None
            lowest = sent if lowest is None else min(lowest, sent)
        return lowest

    def _blind(self) -> None:
        self.wake_gaps()

    def live_devices(self, user: str) -> list[str]:
        """The store devices of `user`'s sessions here (for reading what they lack)."""
        conns = self.ctx.router.table().get(user)
        if conns is None:
            return []
        return sorted({c.state.store_device for c in conns if isinstance(c.state, Session)})

    # --- users' devices on every node (the HTTP API, the webhooks) -------------------------------
    def local_devices(self, user: str) -> int:
        return len(self.ctx.router.connections(user))

    def devices(self, user: str) -> int:
        """The user's signed-in connections on every node: this node's now, the others' as
        they last announced (relay.cluster.presence)."""
        return self.local_devices(user) + self.presence.remote_devices(user)

    def connected(self, user: str) -> bool:
        """Whether a device of the user is connected to some node."""
        return self.ctx.router.is_connected(user) or self.presence.remote_devices(user) > 0

    def close_elsewhere(self, user: str, reason: str) -> None:
        """Close the user's connections on every other node with 1008 and `reason`."""
        self._publish([user], envelope(DISCONNECT, self.node_id, reason.encode()))

    # --- from other nodes (the link's subscriber) -----------------------------------------------
    def disconnected_remotely(self, user: str, reason: str) -> None:
        """Another node was asked to close the user's connections everywhere."""
        for conn in list(self.ctx.router.connections(user)):
            session = conn.state
            if isinstance(session, Session):
                session.close()
            conn.close(CLOSE_POLICY, reason)

    def delivered_remotely(self, message: StoredMessage, user: str) -> None:
        """A delivery another node published to `user`'s channel."""
        if user in self.ctx.router.table():
            self.orderer.offer(message, [user], None, self.ctx.clock())

    def frame_remotely(self, frame: bytes, user: str, droppable: bool) -> None:
        self.local.to_users([user], frame, droppable=droppable)

    def call_remotely(self, node: str, body: bytes) -> None:
        """A call envelope (relay.cluster.calls) on a user channel this node follows."""
        if self.calls is not None:
            self.calls.received(node, body)

    # --- calls across nodes (relay.core.calls.RoutesCalls) --------------------------------------
    def call_routing(self, calls: Calls) -> ClusterCalls:
        self.calls = ClusterCalls(self, calls)
        return self.calls

    def publish_call(self, user: str, body: bytes) -> None:
        self._publish([user], envelope(CALL, self.node_id, body))

    def nodes_of(self, user: str) -> list[str]:
        return self.presence.nodes_of(user)

    def forget_group(self, group_id: str, event: str) -> None:
        """A group was made or its members changed (here or on another node); a new group's
        members start at seq 1, so its order needs no restart."""
        self.ctx.router.forget_group(group_id)
        if event != "create":
            self.orderer.forget_conversation(group_conversation(group_id))

    # --- users joining and leaving this node ----------------------------------------------------
    def _presence_changed(self, user: str, up: bool) -> None:
        self.presence_changes.append((user, up))
        self.wake()

    async def joined(self, user: str) -> None:
        """relay.core.broker.Joining: a device of `user` signed in here; returns once this node
        hears what is published for the user (before the device reads its backlog)."""
        self.recount.add(user)
        self.wake()
        if self.join_hook is not None:
            await self.join_hook(user)

    def left(self, user: str) -> None:
        """relay.core.broker.Joining: the user's last device on this node closed (the link
        unsubscribes its channel)."""
        self.orderer.forget_user(user)
        self.recount.add(user)
        self.wake()
