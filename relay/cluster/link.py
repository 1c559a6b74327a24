"""RedisLink: the Trio side of a node's ClusterBroker — its Redis connection and tasks.

Tasks, in one nursery per link to Redis (three connections: publications and the subscription
straight on Trio streams, relay.cluster.resp; the heartbeat's keys through coredis):
- publisher: the broker's queued publications, in queue order, and presence changes;
- subscription: the subscribed channels (user channels, `relay:nodes`) into the broker;
- heartbeat: every `refresh` s the users this node holds, to the other nodes; entries of other
  nodes that lapsed (a dead node) are dropped, and the conversations this node follows are
  checked against the store (what a dead node committed but never published is delivered);
- gaps: deliveries held for a missing seq `gap_wait` long are completed from the store.

Invariants:
- while Redis cannot be reached, `broker.redis_problem` says why (the node refuses new messages
  and /healthz answers 503) and the link retries every `retry` s; once it is back, every local
  connection is closed with 1012 so that its device reconnects and reads from the store what
  was published while the link was down (nothing acknowledged is lost);
- a user channel is subscribed before `joined` returns (the device's backlog is read after).
"""

from __future__ import annotations

import logging
from typing import Any

import coredis
import trio

import relay.cluster.resp as resp
from relay.cluster.broker import ClusterBroker
from relay.cluster.envelope import (
    CALL,
    DELIVERY,
    DISCONNECT,
    FRAME,
    FRAME_DROPPABLE,
    GROUP_CHANGED,
    NODES_CHANNEL,
    PRESENCE,
    PRESENCE_PREFIX,
    channel_user,
    decode_group_changed,
    decode_message,
    decode_presence,
    encode_presence,
    envelope,
    open_envelope,
    user_channel,
)
from relay.core.session import Session
from relay.store.base import Store

log = logging.getLogger("relay.cluster")

CLOSE_SERVICE_RESTART = 1012
#: publications sent in one pipeline at most
PIPELINE_MAX = 512
#: how long a sign-in waits for its user's channel subscription before it goes on and the
#: subscription finishes in the background (RedisLink.joined), s
JOIN_WAIT = 2.0


class RedisLink:
    def __init__(
        self,
        broker: ClusterBroker,
        store: Store,
        url: str,
        *,
        refresh: float = 1.0,
        retry: float = 0.5,
        join_wait: float | None = None,
    ) -> None:
        self.broker = broker
        self.store = store
        self.url = url
        self.refresh = refresh
        self.retry = retry
        self.join_wait = JOIN_WAIT if join_wait is None else join_wait
        self._wake = trio.Event()
        self._late: set[str] = set()  # joined without a subscription yet (see joined)
        self._late_wake = trio.Event()
        self._gaps_wake = trio.Event()
        self._pubsub: Any = None
        self._client: Any = None
        self._subscribed: set[str] = set()
        self._lock = trio.Lock()
        self._was_up = False
        broker.wake = self._poke
        broker.wake_gaps = self._poke_gaps
        broker.join_hook = self.joined

    def _poke(self) -> None:
        self._wake.set()

    def _poke_gaps(self) -> None:
        self._gaps_wake.set()

    # --- users ----------------------------------------------------------------------------------
    async def joined(self, user: str) -> None:
        """Subscribe to the user's channel (once), before their device reads its backlog.

        Waits at most `join_wait`: on a loaded node the subscription may take longer, and a
        sign-in must not hang on it. The user is then subscribed in the background (`_late`)
        and, once subscribed, their devices here are caught up from the store: what other
        nodes published meanwhile was not heard here, and without that catch-up a device would
        miss it until it reconnects."""
        if user in self._subscribed or self._pubsub is None:
            return
        with trio.move_on_after(self.join_wait):
            async with self._lock:
                if user in self._subscribed or self._pubsub is None:
                    return
                try:
                    await self._pubsub.subscribe(user_channel(user))
                except Exception as exc:  # retried in the background, or the link restarts
                    log.warning("subscribing to %s failed, retrying: %r", user, exc)
                else:
                    self._subscribed.add(user)
                    return
        self._late.add(user)
        self._late_wake.set()

    async def _late_joins(self) -> None:
        """Subscribe the users whose `joined` gave up waiting, then catch their devices up."""
        while True:
            await self._late_wake.wait()
            self._late_wake = trio.Event()
            users = set(self._late)
            async with self._lock:
                table = self.broker.ctx.router.table()
                wanted = [u for u in users if u not in self._subscribed and u in table]
                if wanted and self._pubsub is not None:
                    # a failure here ends the connection: the link restarts and closes every
                    # local device, which then reconnects and reads the store
                    await self._pubsub.subscribe(*[user_channel(u) for u in wanted])
                    self._subscribed.update(wanted)
            log.warning(
                "subscribing %d user(s) took longer than %g s; their devices here are caught "
                "up from the store",
                len(users),
                self.join_wait,
            )
            await self._catch_up(users)
            self._late -= users

    async def _unsubscribe_gone(self) -> None:
        table = self.broker.ctx.router.table()
        gone = [u for u in self._subscribed if u not in table]
        if not gone:
            return
        async with self._lock:
            gone = [u for u in self._subscribed if u not in table]
            for user in gone:
                self._subscribed.discard(user)
            if gone and self._pubsub is not None:
                await self._pubsub.unsubscribe(*[user_channel(u) for u in gone])

    # --- the connection -------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        while True:
            stopping = False
            try:
                await self._connected(task_status if not started else None)
            except* Exception as group:  # (a cancellation goes on, once this is recorded)
                # being cancelled, coredis may fail to unsubscribe: the node is stopping
                stopping = trio.current_effective_deadline() == float("-inf")
                if not stopping:
                    reason = f"Redis unreachable or failing: {_first(group)!r}"
                    if self.broker.redis_problem is None:
                        log.error(
                            "lost Redis at %s; new messages are refused: %s", self.url, reason
                        )
                    self.broker.redis_problem = reason
            if stopping:
                await trio.lowlevel.checkpoint()  # raises the cancellation
            self._pubsub = None
            self._client = None
            self._subscribed.clear()
            started = started or self._was_up  # _connected said started once it was up
            if not started:
                started = True
                task_status.started()
            await trio.sleep(self.retry)

    async def _connected(self, task_status: trio.TaskStatus[None] | None) -> None:
        client = coredis.Redis.from_url(
            self.url, decode_responses=False, connect_timeout=2, stream_timeout=5
        )
        async with client:
            await client.ping()
            publishing = await resp.connect(self.url)
            listening = await resp.connect(self.url)
            try:
                async with trio.open_nursery() as nursery:
                    pubsub = resp.Subscription(listening, self._received)
                    nursery.start_soon(pubsub.run)
                    users = list(self.broker.ctx.router.table())
                    await pubsub.subscribe(NODES_CHANNEL, *[user_channel(u) for u in users])
                    self._client = client
                    self._pubsub = pubsub
                    self._subscribed = set(users)
                    self._late.clear()  # subscribed above (and closed below after an outage)
                    if self.broker.redis_problem is not None and self._was_up:
                        log.warning("Redis is back at %s; devices reconnect to catch up", self.url)
                        self._restart_local()
                    elif self._was_up is False:
                        log.info(
                            "joined the cluster on %s as node %s", self.url, self.broker.node_id
                        )
                    self.broker.redis_problem = None
                    self._was_up = True
                    if task_status is not None:
                        task_status.started()
                    nursery.start_soon(self._publisher, publishing)
                    nursery.start_soon(self._heartbeat, client, nursery)
                    nursery.start_soon(self._gaps)
                    nursery.start_soon(self._late_joins)
            finally:
                await publishing.aclose()
                await listening.aclose()

    def _restart_local(self) -> None:
        # what was queued while Redis was away is stale (typing, receipts) or in the store
        # (messages): the devices closed here read their backlog when they reconnect
        self.broker.outgoing.clear()
        for conns in list(self.broker.ctx.router.table().values()):
            for conn in conns:
                session = conn.state
                if isinstance(session, Session):
                    session.close()
                conn.close(CLOSE_SERVICE_RESTART, "cluster link restored")

    # --- tasks ----------------------------------------------------------------------------------
    async def _publisher(self, conn: resp.RespConnection) -> None:
        broker = self.broker
        outgoing = broker.outgoing
        node = broker.node_id
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            changes = broker.presence_changes
            recount = broker.recount
            if changes or recount:
                broker.presence_changes = []
                broker.recount = set()
                down = [u for u, is_up in changes if not is_up]
                up = list(dict.fromkeys([u for u, is_up in changes if is_up] + list(recount)))
                up = [u for u in up if broker.presence.holds(u)]
                devices = {u: broker.local_devices(u) for u in up}
                statuses = broker.presence.statuses(up)
                note = encode_presence(up, down, devices, broker.presence.version, statuses)
                await conn.call_many([(b"PUBLISH", NODES_CHANNEL, envelope(PRESENCE, node, note))])
            while outgoing:  # in queue order, pipelined: one write, one parse of the replies
                batch = [outgoing.popleft() for _ in range(min(len(outgoing), PIPELINE_MAX))]
                await conn.call_many([(b"PUBLISH", channel, body) for channel, body in batch])
            await self._unsubscribe_gone()

    def _received(self, channel: bytes, data: bytes) -> None:
        """A message on a channel this node subscribed to (the subscription's reader)."""
        opened = open_envelope(data)
        broker = self.broker
        if opened is None or opened.node == broker.node_id:
            return
        kind = opened.kind
        user = channel_user(channel)
        try:
            if user is not None:
                if kind == DELIVERY:
                    broker.delivered_remotely(decode_message(opened.body), user)
                elif kind in (FRAME, FRAME_DROPPABLE):
                    broker.frame_remotely(opened.body, user, kind == FRAME_DROPPABLE)
                elif kind == CALL:
                    broker.call_remotely(opened.node, opened.body)
                elif kind == DISCONNECT:
                    broker.disconnected_remotely(user, opened.body.decode())
            elif kind == GROUP_CHANGED:
                broker.forget_group(*decode_group_changed(opened.body))
            elif kind == PRESENCE:
                up, down, devices, version, statuses = decode_presence(opened.body)
                now = broker.ctx.clock()
                broker.presence.remote_note(
                    opened.node, up, down, devices, version, now, statuses=statuses
                )
        except Exception:
            log.exception("a message from node %s could not be handled", opened.node)

    async def _heartbeat(self, client: Any, nursery: trio.Nursery) -> None:
        """Every `refresh` s: this node's users into its expiring presence key, the other
        nodes' keys into the presence view (a dead node's key has expired: its users lapse
        `ttl` after its last refresh). A lapse's sweep runs beside it: it reads the store for
        every local device, which on a loaded machine can outlast `ttl`, and a heartbeat held
        back that long makes the other nodes take this one for dead."""
        broker = self.broker
        presence = broker.presence
        own = PRESENCE_PREFIX + broker.node_id
        ttl_ms = int(presence.ttl * 1000)
        while True:
            held = presence.held()  # with the version it is at (no await in between)
            devices = {u: broker.local_devices(u) for u in held}
            note = encode_presence(held, [], devices, presence.version, presence.statuses(held))
            await client.set(own, note, px=ttl_ms)
            keys = [key async for key in client.scan_iter(match=PRESENCE_PREFIX + "*")]
            others = [k for k in keys if (k.decode() if isinstance(k, bytes) else k) != own]
            now = broker.ctx.clock()
            if others:
                for key, value in zip(others, await client.mget(others), strict=True):
                    if value is None:
                        continue
                    name = key.decode() if isinstance(key, bytes) else key
                    up, _, counts, version, statuses = decode_presence(value)
                    other = name[len(PRESENCE_PREFIX) :]
                    presence.remote_note(
                        other, up, [], counts, version, now, snapshot=True, statuses=statuses
                    )
            lapsed = presence.remote_expire(now)
            broker.orderer.prune(now)
            if lapsed:
                log.warning("node(s) %s stopped answering; catching up from the store", lapsed)
                nursery.start_soon(self._sweep)
            await trio.sleep(self.refresh)

    async def _sweep(self) -> None:
        """After a node died: what it committed but may never have published."""
        await self._catch_up(None)

    async def _catch_up(self, users: set[str] | None) -> None:
        """The undelivered messages from the store of each local device of `users` (None:
        every user here), in acceptance order (so in seq order per conversation), through the
        orderer; what a device has already is not sent again."""
        broker = self.broker
        devices: set[tuple[str, str]] = set()
        for user, conns in list(broker.ctx.router.table().items()):
            if users is not None and user not in users:
                continue
            for conn in conns:
                session = conn.state
                if isinstance(session, Session):
                    devices.add((user, session.store_device))
        for user, device in sorted(devices):
            try:
                missed = await self.store.undelivered(user, device, limit=10_000)
            except Exception as exc:
                log.warning("catching up %s from the store failed: %r", user, exc)
                continue
            for message in missed:
                broker.orderer.offer(message, [user], None, broker.ctx.clock())

    async def _gaps(self) -> None:
        orderer = self.broker.orderer
        wait = max(orderer.gap_wait / 4, 0.01)
        while True:
            with trio.move_on_after(wait):
                await self._gaps_wake.wait()
            self._gaps_wake = trio.Event()
            for key, top in orderer.blind():
                await self._start(key, top)
            for key, upto, top in orderer.due(self.broker.ctx.clock()):
                try:
                    page, _ = await self.store.history(key[0], after=upto, limit=top - upto)
                except Exception as exc:
                    log.warning("filling a gap in %s failed, retrying: %r", key[0], exc)
                    continue
                orderer.fill(key, page, top, self.broker.ctx.clock())

    async def _start(self, key: tuple[str, str], top: int) -> None:
        """A key the orderer saw first out of turn: what the user's devices here lack of the
        conversation up to `top` (their undelivered messages; what a device was already sent
        is not sent again), released with what is held, in seq order."""
        conversation, user = key
        missing: dict[int, Any] = {}
        for device in self.broker.live_devices(user):
            try:
                page = await self.store.undelivered(user, device, limit=10_000)
            except Exception as exc:
                log.warning("reading what %s lacks failed, retrying: %r", user, exc)
                return
            for message in page:
                if message.conversation == conversation and message.seq <= top:
                    missing[message.seq] = message
        missed = [missing[s] for s in sorted(missing)]
        self.broker.orderer.fill(key, missed, top, self.broker.ctx.clock())


def _first(error: BaseException) -> BaseException:
    """The first leaf of an exception group (the error itself when it is none)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error
