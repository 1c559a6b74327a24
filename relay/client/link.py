"""Link: one WebSocket session with the relay over trio-websocket, from connect to drop.

A session opens the socket, authenticates (`acks: true`), then runs four tasks until one of them
ends it: the reader (relay frames into ClientState, answers to their requests), the writer
(Outgoing's frames), the resync (conversation list and history gaps after the outage) and the
heartbeat. RelayClient (connection.py) runs one Link per attempt and decides what a drop means
with `drop_reason`.

Invariants:
- `hang_up()` ends the session normally, so that leaving the socket's block closes the
  WebSocket (1000) in the session's own task: trio-websocket's close handshake is not safe
  against a concurrent aclose() from another task. Before the socket is open there is nothing
  to close and it does nothing.
- `came_online` is True once the relay answered `auth_ok`; the writer then writes on the
  generation `Outgoing.connected()` gave this session, and never on another.
- The frames of one connection are written by one task, in the order Outgoing gives them.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
import trio
import trio_websocket
from attrs import define, field

from relay.client.events import EventHub
from relay.client.frames import Frame, decode
from relay.client.model import ErrorReceived, RequestFailed
from relay.client.outgoing import Outgoing
from relay.client.state import ClientState
from relay.errors import ClientError


class NoPong(ClientError):
    """The relay did not answer a WebSocket ping within heartbeat_timeout: the link is dead."""


class AuthRejected(ClientError):
    """The relay answered `auth` with `auth_failed`; trying again would not help."""


#: Failures that end one connection attempt or session; the client then tries again.
DROPS: tuple[type[BaseException], ...] = (
    OSError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio_websocket.HandshakeError,
    trio_websocket.ConnectionClosed,
    trio_websocket.DisconnectionTimeout,
    NoPong,
)


def describe(exc: BaseException) -> str:
    """A short human reason for a dropped link or failed attempt."""
    if isinstance(exc, trio_websocket.ConnectionClosed):
        reason = exc.reason
        if reason is None:
            return "closed"
        return f"closed {reason.code} {reason.reason or reason.name}".strip()
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    if isinstance(exc, ClientError):
        return str(exc)
    if exc.__cause__ is not None and not str(exc):
        return describe(exc.__cause__)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def drop_reason(group: BaseExceptionGroup[BaseException]) -> str:
    """The reason of the drops in a group; raises AuthRejected when the relay refused, and
    anything else in it (Cancelled included) is raised on without the drops."""
    fatal, rest = group.split(AuthRejected)
    if fatal is not None and rest is None:
        raise AuthRejected(str(fatal.exceptions[0]))
    drops, rest = group.split(DROPS)
    if rest is not None:
        raise rest  # the drops are handled here; cancellation and bugs go on
    assert drops is not None
    first: BaseException = drops
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return describe(first)


@define(eq=False, kw_only=True)
class Link:
    url: str
    auth: Frame
    state: ClientState
    outgoing: Outgoing
    hub: EventHub
    online: Callable[[Frame], None]  # called with `auth_ok`, before any frame is written
    connect_timeout: float
    heartbeat_interval: float | None
    heartbeat_timeout: float
    ack_delay: float
    sync_on_connect: bool
    came_online: bool = False
    _scope: trio.CancelScope | None = field(default=None, init=False)

    @property
    def is_open(self) -> bool:
        return self._scope is not None

    def hang_up(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    async def run(self) -> None:
        """The session; returns when hung up or closed by the relay, raises when dropped."""
        async with trio_websocket.open_websocket_url(
            self.url,
            connect_timeout=self.connect_timeout,
            disconnect_timeout=1.0,
            message_queue_size=64,
            max_message_size=4 * 1024 * 1024,
        ) as ws:
            self._scope = trio.CancelScope()
            try:
                with self._scope:
                    await self._session(ws)
            finally:
                self._scope = None

    async def _session(self, ws: trio_websocket.WebSocketConnection) -> None:
        """Authenticate, then read and write until the link ends."""
        await ws.send_message(orjson.dumps(self.auth).decode())
        with trio.fail_after(self.connect_timeout):
            ok = await self._await_auth(ws)
        generation = self.outgoing.connected()
        self.came_online = True
        self.online(ok)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer, ws, generation)
            nursery.start_soon(self._resync)
            if self.heartbeat_interval is not None:
                nursery.start_soon(self._heartbeat, ws, self.heartbeat_interval)
            await self._reader(ws)

    async def _await_auth(self, ws: trio_websocket.WebSocketConnection) -> Frame:
        while True:
            frame = decode(await ws.get_message())
            if frame is None:
                continue
            if frame.get("type") == "auth_ok":
                return frame
            if frame.get("type") == "error" and frame.get("code") == "auth_failed":
                raise AuthRejected(f"auth_failed: {frame.get('message', '')}")

    async def _reader(self, ws: trio_websocket.WebSocketConnection) -> None:
        while True:
            frame = decode(await ws.get_message())
            if frame is not None:
                self._on_frame(frame)

    def _on_frame(self, frame: Frame) -> None:
        kind = frame.get("type")
        req = self.outgoing.waiting_for(kind, frame.get("ref"))
        if req is not None and kind == "error":
            self.outgoing.refused(req, frame)
            return
        self.hub.publish(self.state.apply(frame, trio.current_time()))
        if req is not None and kind == req.answer:
            self.outgoing.answered(req, frame)
        if kind in ("message", "history"):
            self.outgoing.wake()  # delivered receipts are due

    async def _writer(self, ws: trio_websocket.WebSocketConnection, generation: int) -> None:
        outgoing = self.outgoing
        while True:
            for frame in outgoing.take(generation):
                await ws.send_message(orjson.dumps(frame).decode())
            if outgoing.closing:
                outgoing.drained.set()
            await outgoing.wait(generation, self.ack_delay)

    async def _resync(self) -> None:
        """After auth_ok: refresh the conversation list, then fill each gap left by the outage.
        A refusal (e.g. a group this user has left) is reported as an event and skipped."""
        seen = self.state.known_conversations()
        if self.sync_on_connect:
            try:
                await self.outgoing.request({"type": "conversations"}, "conversations")
            except RequestFailed as exc:
                self.hub.publish([ErrorReceived(exc.code, exc.message)])
        for cid, last in seen:
            after = last
            try:
                while True:
                    answer = await self.outgoing.request(
                        {"type": "history", **cid.target(), "after": after, "limit": 100},
                        "history",
                    )
                    seqs = [m["seq"] for m in answer.get("messages", []) if "seq" in m]
                    if not seqs or not answer.get("hasMore"):
                        break
                    after = max(seqs)
            except RequestFailed as exc:
                self.hub.publish([ErrorReceived(exc.code, exc.message)])
        self.outgoing.wake()  # acks for what the history brought

    async def _heartbeat(self, ws: trio_websocket.WebSocketConnection, interval: float) -> None:
        """A WebSocket ping every `interval`; a pong missing for `heartbeat_timeout` means the
        link is dead even if TCP has not noticed (a silent network): the session ends and the
        client reconnects."""
        while True:
            await trio.sleep(interval)
            with trio.move_on_after(self.heartbeat_timeout):
                await ws.ping()
                continue
            raise NoPong(f"no pong within {self.heartbeat_timeout} s")
