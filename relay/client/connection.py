"""RelayClient: the Trio shell around ClientState — one WebSocket to the relay, kept alive.

    async with RelayClient("ws://localhost:8080", user_id="alice", user_name="Alice") as client:
        await client.wait_online()
        msg = await client.send_message("bob", "hello")      # pending at once
        await client.wait_message(msg.id, MessageStatus.DELIVERED)

Lifetime: entering the context opens a nursery that runs the connection manager (connect,
authenticate with `acks: true`, read, write, reconnect); leaving it closes the WebSocket
(1000) and cancels every task. Entering does not wait for the relay: `wait_online()` does.

Reconnection: after a drop the client waits `policy.delay_before(n)` and tries again, up to
`policy.attempts` attempts (default 5, 3 s apart, as the original app). An attempt that reaches
`auth_ok` resets the count. When the attempts are spent (or the relay refuses authentication)
the state becomes DISCONNECTED for good and every pending wait raises ConnectionLost;
`reconnect()` starts over.

Delivery: messages are written from the state's outbox, each once per connection and again on
the next connection until the relay answers `sent` or `failed`; ids are chosen here, so a message
written twice is stored once. Incoming messages are acknowledged with `delivered` receipts, one
per conversation for a burst (written at most `ack_delay`, default 50 ms, after the message).
After every (re)connection the client re-reads the conversation list and fills the gap of each
conversation it had seen with `history after=<last seen seq>`.

Events: `events()` subscribes a bounded buffer (`event_buffer`, default 256). A subscriber that
does not keep up loses events, never blocks the client: the events that do not fit are dropped
and the next one it receives is `Lagged(dropped=n)`; the state (`client.state`) stays complete.

Timeouts are the caller's: no method here gives up on a slow relay by itself, except the
connection attempt (`connect_timeout`, 10 s, which also bounds the wait for `auth_ok`; note
that trio-websocket notices a server closing TCP during the opening handshake only when this
timeout expires, so such an attempt takes that long to fail) and the
heartbeat: a WebSocket ping every `heartbeat_interval` (20 s; None = off) unanswered for
`heartbeat_timeout` (20 s) ends the link, which then counts as dropped.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import orjson
import trio
import trio_websocket
from attrs import define, field

from relay.client.backoff import ReconnectPolicy
from relay.client.model import (
    ConnectionState,
    Conversation,
    ConversationId,
    ErrorReceived,
    Event,
    GroupInfo,
    HistoryPage,
    Lagged,
    Message,
    MessageStatus,
    Presence,
    RequestFailed,
)
from relay.client.state import ClientState, Frame
from relay.errors import ClientError, ConnectionLost

Target = str | ConversationId


class _NoPong(ClientError):
    """The relay did not answer a WebSocket ping within heartbeat_timeout: the link is dead."""


class _AuthRejected(ClientError):
    """The relay answered `auth` with `auth_failed`; trying again would not help."""


#: Failures that end one connection attempt or session; the client then tries again.
_DROPS: tuple[type[BaseException], ...] = (
    OSError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio_websocket.HandshakeError,
    trio_websocket.ConnectionClosed,
    trio_websocket.DisconnectionTimeout,
    _NoPong,
)


def now_iso() -> str:
    """The current UTC time as the protocol writes it: `2026-02-05T10:30:15.123Z`."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _cid(target: Target) -> ConversationId:
    return target if isinstance(target, ConversationId) else ConversationId.direct(target)


def _describe(exc: BaseException) -> str:
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
        return _describe(exc.__cause__)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@define(eq=False)
class _Request:
    frame: Frame
    answer: str  # type of the frame that answers it
    done: trio.Event = field(factory=trio.Event)
    written: int = 0  # connection generation it was last written on
    result: Frame | None = None
    error: ClientError | None = None


@define(eq=False)
class _Subscriber:
    send: trio.MemorySendChannel[Event]
    dropped: int = 0


class EventStream:
    """A subscription to a client's events: an async iterator and an async context manager.

    It ends when the client closes; closing it unsubscribes."""

    def __init__(self, receive: trio.MemoryReceiveChannel[Event]) -> None:
        self._receive = receive

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def receive(self) -> Event:
        """The next event; raises EndOfChannel when the client closed."""
        return await self._receive.receive()

    def receive_nowait(self) -> Event:
        """The next queued event; raises trio.WouldBlock when none is queued."""
        return self._receive.receive_nowait()

    def drain(self) -> list[Event]:
        """Every event queued now, without waiting."""
        events: list[Event] = []
        while True:
            try:
                events.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return events

    def close(self) -> None:
        self._receive.close()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


class RelayClient:
    """A client of a relay speaking protocol v1. See the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        user_id: str,
        user_name: str | None = None,
        user_avatar: str | None = None,
        token: str | None = None,
        device_id: str | None = None,
        reconnect_attempts: int = 5,
        reconnect_delay: float = 3.0,
        backoff: float = 1.0,
        max_delay: float = 60.0,
        jitter: float = 0.0,
        max_outbox: int = 1000,
        event_buffer: int = 256,
        connect_timeout: float = 10.0,
        heartbeat_interval: float | None = 20.0,
        heartbeat_timeout: float = 20.0,
        sync_on_connect: bool = True,
        ack_delay: float = 0.05,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.user_id = user_id
        self.user_name = user_name
        self.user_avatar = user_avatar
        self.token = token
        # None: the user's anonymous device (one delivery cursor shared by every connection of
        # the user without a deviceId); give a stable id per installation for a cursor of its own
        self.device_id = device_id
        self.connection_device_id: str | None = None  # as auth_ok named it (`anon-…` when None)
        self.session_id: str | None = None
        self.policy = ReconnectPolicy(
            attempts=reconnect_attempts,
            delay=reconnect_delay,
            backoff=backoff,
            max_delay=max_delay,
            jitter=jitter,
        )
        self.connect_timeout = connect_timeout
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.sync_on_connect = sync_on_connect
        self.ack_delay = ack_delay
        self.event_buffer = event_buffer
        self.state = ClientState(user_id, user_name, user_avatar, max_outbox=max_outbox)
        self._rng = rng or random.Random()
        self._nursery: trio.Nursery | None = None
        self._link_scope: trio.CancelScope | None = None  # the session, once the socket is open
        self._stopped = trio.Event()  # set when the connection manager has returned
        self._hurry = trio.Event()  # set when closing: held-back receipts go out at once
        self._drained = trio.Event()  # set by the writer once it wrote everything, closing
        self._closing = False
        self._running = False
        self._lost: str | None = None  # why the client gave up; None while it keeps trying
        self._generation = 0  # count of connections that reached auth_ok
        self._subscribers: list[_Subscriber] = []
        self._changed = trio.Event()
        self._wake_send, self._wake_recv = trio.open_memory_channel[None](1)
        self._requests: dict[str, _Request] = {}
        self._refs = itertools.count(1)
        self._control: list[tuple[Frame, bool]] = []  # (frame, keep while offline)
        self._lifetime_cm: Any = None
        self._task_scopes: set[trio.CancelScope] = set()

    # --- lifetime ---------------------------------------------------------------------------------

    async def __aenter__(self) -> RelayClient:
        self._lifetime_cm = self._lifetime()
        await self._lifetime_cm.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        cm, self._lifetime_cm = self._lifetime_cm, None
        result: bool | None = await cm.__aexit__(exc_type, exc, tb)
        return result

    @asynccontextmanager
    async def _lifetime(self) -> AsyncIterator[None]:
        if self._nursery is not None or self._closing:
            raise ClientError("a RelayClient is entered once")
        body_error: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._start_manager()
                self._spawn(self._sweep_typing)
                try:
                    yield
                except BaseException as exc:
                    # raised again below, once the tasks are gone, so that the caller sees its own
                    # exception rather than a group of one (Cancelled included: it is re-raised)
                    body_error = exc
                finally:
                    await self._close_socket()
                    self._stop_tasks()
            if body_error is not None:
                raise body_error
        finally:
            self._nursery = None
            self._give_up("client closed")
            for sub in self._subscribers:
                sub.send.close()
            self._subscribers.clear()

    async def _close_socket(self) -> None:
        """Stop the connection manager, saying goodbye (close 1000) if a socket is open, so the
        relay need not wait for a timeout; at most about 1 s. (Still connecting: nothing to say.)"""
        self._closing = True
        if self._link_scope is not None and self._running:
            if self.state.connection is ConnectionState.ONLINE:
                # receipts held back by ack_delay go out first, so the senders see them now
                self._hurry.set()
                self._wake()
                with trio.CancelScope(shield=True), trio.move_on_after(0.5):
                    await self._drained.wait()
            self._link_scope.cancel()  # the manager closes the socket on its way out
            with trio.CancelScope(shield=True), trio.move_on_after(1.5):
                await self._stopped.wait()

    async def aclose(self) -> None:
        """Close the connection and stop the client's tasks now (leaving the context does it
        too); pending waits raise ConnectionLost. The caller's own code is not cancelled."""
        await self._close_socket()
        self._stop_tasks()
        self._give_up("client closed")

    def _spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run `fn` in the client's nursery under its own cancel scope (see _stop_tasks): the
        nursery's scope also covers the caller's `async with` body, which must not be cancelled."""
        assert self._nursery is not None
        scope = trio.CancelScope()
        self._task_scopes.add(scope)

        async def run() -> None:
            try:
                with scope:
                    await fn()
            finally:
                self._task_scopes.discard(scope)

        self._nursery.start_soon(run, name=getattr(fn, "__qualname__", None))

    def _stop_tasks(self) -> None:
        for scope in list(self._task_scopes):
            scope.cancel()

    def reconnect(self) -> None:
        """Start connecting again after the client gave up (attempts counted afresh)."""
        if self._nursery is None or self._closing:
            raise ClientError("the client is not open")
        if not self._running:
            self._lost = None
            self._start_manager()

    def _start_manager(self) -> None:
        assert self._nursery is not None
        self._running = True
        self._stopped = trio.Event()
        self._spawn(self._run)

    # --- reading state ----------------------------------------------------------------------------

    @property
    def connection_state(self) -> ConnectionState:
        return self.state.connection

    def events(self, buffer: int | None = None) -> EventStream:
        """Subscribe to change events from now on (see the module docstring on lagging)."""
        send, receive = trio.open_memory_channel[Event](buffer or self.event_buffer)
        if self._closing:
            send.close()
        else:
            self._subscribers.append(_Subscriber(send))
        return EventStream(receive)

    async def wait_until(self, predicate: Callable[[ClientState], bool]) -> None:
        """Return once `predicate(state)` holds; raises ConnectionLost if the client gives up
        first. Re-checked after every change."""
        while not predicate(self.state):
            self._check_alive()
            await self._changed.wait()

    async def wait_online(self) -> None:
        await self.wait_until(lambda s: s.connection is ConnectionState.ONLINE)

    async def wait_message(
        self, message_id: str, status: MessageStatus = MessageStatus.SENT
    ) -> Message:
        """Wait until this user's message has at least `status` (or failed); returns it."""

        def reached(s: ClientState) -> bool:
            m = s.find(message_id)
            return m is not None and (
                m.status is MessageStatus.FAILED or m.status.rank >= status.rank
            )

        await self.wait_until(reached)
        found = self.state.find(message_id)
        assert found is not None
        return found

    async def flush(self) -> None:
        """Wait until the relay answered every message of the outbox."""
        await self.wait_until(lambda s: not s.outbox)

    # --- actions ----------------------------------------------------------------------------------

    async def send_message(
        self,
        to: Target,
        text: str,
        *,
        message_id: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Message:
        """Add a message as `pending` (returned at once) and send it as soon as the link allows.

        `to` is a user id (direct) or a ConversationId. Raises OutboxFull when `max_outbox`
        messages are unconfirmed, ConnectionLost when the client gave up."""
        self._check_alive()
        msg, events = self.state.compose(
            _cid(to), text, timestamp=now_iso(), message_id=message_id, meta=meta
        )
        self._publish(events)
        self._wake()
        return msg

    async def retry(self, message_id: str) -> Message:
        """Send a failed message again with its id."""
        self._check_alive()
        msg, events = self.state.retry(message_id)
        self._publish(events)
        self._wake()
        return msg

    async def mark_read(self, conversation: Target) -> None:
        """Mark everything seen in the conversation read (kept and sent when back online)."""
        frame, events = self.state.mark_read(_cid(conversation))
        self._publish(events)
        if frame is not None:
            self._queue(frame, keep_offline=True)

    async def typing(self, conversation: Target, active: bool = True) -> None:
        """Tell the peer(s) the user is typing (or stopped); `start` is refreshed at most every
        3 s; dropped while offline."""
        frame = self.state.typing_frame(_cid(conversation), active, trio.current_time())
        if frame is not None and self.state.connection is ConnectionState.ONLINE:
            self._queue(frame, keep_offline=False)

    async def set_status(self, status: str) -> None:
        """Announce this user's status (`online`, `away`, `busy`) to their contacts."""
        frame = {"type": "status", "status": status, "userId": self.user_id, "timestamp": now_iso()}
        if self.state.connection is ConnectionState.ONLINE:
            self._queue(frame, keep_offline=False)

    async def open_conversation(self, conversation: Target) -> list[Message]:
        """Make `conversation` the active one (`state.active`) and return its messages, loading
        the newest page from the relay first when online and fewer than a page are known."""
        cid = _cid(conversation)
        self.state.active = cid
        self._notify()
        known = self.state.messages(cid)
        if len(known) < 50 and self.state.connection is ConnectionState.ONLINE:
            await self.load_history(cid)
        return self.state.active_messages()

    async def load_history(
        self, conversation: Target, *, before: int | None = None, limit: int = 50
    ) -> HistoryPage:
        """The page of messages before `before` (default: before the oldest loaded one; the
        newest page when nothing is loaded), oldest first; they join the state too."""
        cid = _cid(conversation)
        if before is None:
            before = self.state.oldest_seq(cid)
        frame: Frame = {"type": "history", **cid.target(), "limit": limit}
        if before is not None:
            frame["before"] = before
        answer = await self._request(frame, "history")
        return self._page(cid, answer)

    async def refresh_conversations(self) -> list[Conversation]:
        """Ask the relay for the conversation list; returns the state's list (newest first)."""
        await self._request({"type": "conversations"}, "conversations")
        return self.state.conversations()

    async def query_presence(self, user_ids: Iterable[str]) -> dict[str, Presence]:
        answer = await self._request({"type": "presence", "userIds": list(user_ids)}, "presence")
        return {
            str(u["userId"]): Presence(str(u["userId"]), str(u["status"]), u.get("lastSeen"))
            for u in answer.get("users", [])
        }

    async def create_group(self, group_id: str, name: str, members: Sequence[str]) -> GroupInfo:
        frame = {
            "type": "group_create",
            "groupId": group_id,
            "name": name,
            "members": list(members),
        }
        return self._group(await self._request(frame, "group"))

    async def add_members(self, group_id: str, user_ids: Sequence[str]) -> GroupInfo:
        frame = {"type": "group_add", "groupId": group_id, "userIds": list(user_ids)}
        return self._group(await self._request(frame, "group"))

    async def remove_members(self, group_id: str, user_ids: Sequence[str]) -> GroupInfo:
        frame = {"type": "group_remove", "groupId": group_id, "userIds": list(user_ids)}
        return self._group(await self._request(frame, "group"))

    async def leave_group(self, group_id: str) -> GroupInfo:
        frame = {"type": "group_leave", "groupId": group_id}
        return self._group(await self._request(frame, "group"))

    async def ping(self) -> str:
        """Round trip to the relay; returns its serverTime."""
        answer = await self._request({"type": "ping"}, "pong")
        return str(answer.get("serverTime", ""))

    async def request(self, frame: Frame, answer: str) -> Frame:
        """Send any frame with a fresh `ref` and return the relay's answer of type `answer`
        (raises RequestFailed for an `error` answer). Written again after a reconnect."""
        return await self._request(dict(frame), answer)

    # --- connection manager -----------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0  # consecutive attempts that did not reach auth_ok
        try:
            while not self._closing:
                self._set_connection(ConnectionState.CONNECTING, failures)
                reached = self._generation
                try:
                    await self._session()
                    reason = "closed by the relay"
                except _AuthRejected as exc:
                    self._give_up(str(exc))
                    return
                except _DROPS as exc:
                    reason = _describe(exc)
                except BaseExceptionGroup as group:
                    try:
                        reason = self._unwrap(group)
                    except _AuthRejected as exc:
                        self._give_up(str(exc))
                        return
                if self._closing:
                    return
                failures = 1 if self._generation != reached else failures + 1
                if failures > self.policy.attempts:
                    self._give_up(f"gave up after {self.policy.attempts} attempts: {reason}")
                    return
                self._set_connection(ConnectionState.OFFLINE, failures, reason)
                await trio.sleep(self.policy.delay_before(failures, self._rng))
        finally:
            self._link_scope = None
            self._running = False
            self._stopped.set()

    def _unwrap(self, group: BaseExceptionGroup[BaseException]) -> str:
        """The reason of the drops in a group; anything else in it (Cancelled included) is
        raised on without them."""
        fatal, rest = group.split(_AuthRejected)
        if fatal is not None and rest is None:
            raise _AuthRejected(str(fatal.exceptions[0]))
        drops, rest = group.split(_DROPS)
        if rest is not None:
            raise rest  # the drops are handled here; cancellation and bugs go on
        assert drops is not None
        first: BaseException = drops
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        return _describe(first)

    async def _session(self) -> None:
        async with trio_websocket.open_websocket_url(
            self.url,
            connect_timeout=self.connect_timeout,
            disconnect_timeout=1.0,
            message_queue_size=64,
            max_message_size=4 * 1024 * 1024,
        ) as ws:
            # Cancelling `_link_scope` ends the session normally, so that leaving this block
            # closes the WebSocket (1000) in this task: trio-websocket's close handshake is not
            # safe against a concurrent aclose() from another task.
            self._link_scope = trio.CancelScope()
            try:
                with self._link_scope:
                    await self._session_body(ws)
            finally:
                self._link_scope = None

    async def _session_body(self, ws: trio_websocket.WebSocketConnection) -> None:
        """Authenticate, then read and write until the link ends."""
        await ws.send_message(orjson.dumps(self._auth_frame()).decode())
        with trio.fail_after(self.connect_timeout):
            ok = await self._await_auth(ws)
        self.connection_device_id = ok.get("deviceId")
        self.session_id = ok.get("sessionId")
        self._generation += 1
        self._set_connection(ConnectionState.ONLINE)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer, ws, self._generation)
            nursery.start_soon(self._resync)
            if self.heartbeat_interval is not None:
                nursery.start_soon(self._heartbeat, ws, self.heartbeat_interval)
            await self._reader(ws)

    def _auth_frame(self) -> Frame:
        frame: Frame = {
            "type": "auth",
            "userId": self.user_id,
            "userName": self.user_name,
            "userAvatar": self.user_avatar,
            "timestamp": now_iso(),
            "acks": True,
        }
        if self.token is not None:
            frame["token"] = self.token
        if self.device_id is not None:
            frame["deviceId"] = self.device_id
        return frame

    async def _await_auth(self, ws: trio_websocket.WebSocketConnection) -> Frame:
        while True:
            frame = _decode(await ws.get_message())
            if frame is None:
                continue
            if frame.get("type") == "auth_ok":
                return frame
            if frame.get("type") == "error" and frame.get("code") == "auth_failed":
                raise _AuthRejected(f"auth_failed: {frame.get('message', '')}")

    async def _reader(self, ws: trio_websocket.WebSocketConnection) -> None:
        while True:
            frame = _decode(await ws.get_message())
            if frame is not None:
                self._on_frame(frame)

    async def _writer(self, ws: trio_websocket.WebSocketConnection, generation: int) -> None:
        while True:
            frames = self.state.take_acks()
            frames += [f for f, _ in self._control]
            self._control.clear()
            frames += self.state.take_unsent(generation)
            for req in list(self._requests.values()):
                if req.written != generation:
                    req.written = generation
                    frames.append(req.frame)
            for frame in frames:
                await ws.send_message(orjson.dumps(frame).decode())
            if self._closing:
                self._drained.set()
            await self._wake_recv.receive()
            if self.ack_delay and not self._urgent(generation) and not self._closing:
                # only delivered receipts are due: let a burst of messages end, then send one
                # receipt per conversation instead of one per message
                with trio.move_on_after(self.ack_delay):
                    await self._hurry.wait()

    def _urgent(self, generation: int) -> bool:
        """Frames other than delivered receipts wait to be written on this connection."""
        return bool(
            self._control
            or self.state.has_unsent(generation)
            or any(r.written != generation for r in self._requests.values())
        )

    async def _resync(self) -> None:
        """After auth_ok: refresh the conversation list, then fill each gap left by the outage.
        A refusal (e.g. a group this user has left) is reported as an event and skipped."""
        seen = self.state.known_conversations()
        if self.sync_on_connect:
            try:
                await self._request({"type": "conversations"}, "conversations")
            except RequestFailed as exc:
                self._publish([ErrorReceived(exc.code, exc.message)])
        for cid, last in seen:
            after = last
            try:
                while True:
                    answer = await self._request(
                        {"type": "history", **cid.target(), "after": after, "limit": 100},
                        "history",
                    )
                    seqs = [m["seq"] for m in answer.get("messages", []) if "seq" in m]
                    if not seqs or not answer.get("hasMore"):
                        break
                    after = max(seqs)
            except RequestFailed as exc:
                self._publish([ErrorReceived(exc.code, exc.message)])
        self._wake()  # acks for what the history brought

    async def _heartbeat(self, ws: trio_websocket.WebSocketConnection, interval: float) -> None:
        """A WebSocket ping every `interval`; a pong missing for `heartbeat_timeout` means the
        link is dead even if TCP has not noticed (a silent network): the session ends and the
        client reconnects."""
        while True:
            await trio.sleep(interval)
            with trio.move_on_after(self.heartbeat_timeout):
                await ws.ping()
                continue
            raise _NoPong(f"no pong within {self.heartbeat_timeout} s")

    async def _sweep_typing(self) -> None:
        while True:
            await trio.sleep(1.0)
            self._publish(self.state.expire_typing(trio.current_time()))

    # --- frames in --------------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        kind = frame.get("type")
        ref = frame.get("ref")
        req: _Request | None = None
        if isinstance(ref, str):
            req = self._requests.get(ref)
        elif kind in ("presence", "pong"):
            req = next((r for r in self._requests.values() if r.answer == kind), None)
        if req is not None and kind == "error":
            req.error = RequestFailed(str(frame.get("code")), str(frame.get("message", "")))
            self._finish(req)
            return
        self._publish(self.state.apply(frame, trio.current_time()))
        if req is not None and kind == req.answer:
            req.result = frame
            self._finish(req)
        if kind in ("message", "history"):
            self._wake()  # delivered receipts are due

    def _finish(self, req: _Request) -> None:
        ref = req.frame.get("ref")
        if isinstance(ref, str):
            self._requests.pop(ref, None)
        req.done.set()

    # --- plumbing ---------------------------------------------------------------------------------

    async def _request(self, frame: Frame, answer: str) -> Frame:
        self._check_alive()
        ref = f"~req-{next(self._refs)}"
        frame["ref"] = ref
        req = _Request(frame, answer)
        self._requests[ref] = req
        self._wake()
        try:
            await req.done.wait()
        finally:
            self._requests.pop(ref, None)
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    def _queue(self, frame: Frame, *, keep_offline: bool) -> None:
        self._control.append((frame, keep_offline))
        self._wake()

    def _wake(self) -> None:
        with suppress(trio.WouldBlock):  # a wake-up is pending already
            self._wake_send.send_nowait(None)

    def _check_alive(self) -> None:
        if self._lost is not None:
            raise ConnectionLost(self._lost)

    def _set_connection(
        self, state: ConnectionState, attempt: int = 0, reason: str | None = None
    ) -> None:
        if state is not ConnectionState.ONLINE:
            self._control = [(f, keep) for f, keep in self._control if keep]
        self._publish(self.state.set_connection(state, attempt, reason), force=True)

    def _give_up(self, reason: str) -> None:
        """Final DISCONNECTED: fail every pending request; waits raise ConnectionLost."""
        if self._lost is None:
            self._lost = reason
            self._set_connection(ConnectionState.DISCONNECTED, 0, reason)
        for req in list(self._requests.values()):
            req.error = ConnectionLost(reason)
            self._finish(req)
        self._notify()

    def _publish(self, events: Sequence[Event], force: bool = False) -> None:
        if not events and not force:
            return
        for sub in list(self._subscribers):
            for event in events:
                try:
                    if sub.dropped:
                        sub.send.send_nowait(Lagged(sub.dropped))
                        sub.dropped = 0
                    sub.send.send_nowait(event)
                except trio.WouldBlock:
                    sub.dropped += 1
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._subscribers.remove(sub)
                    break
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _page(self, cid: ConversationId, answer: Frame) -> HistoryPage:
        found: list[Message] = []
        for item in answer.get("messages", []):
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                m = self.state.find(str(item["id"]), str(item.get("senderId")))
                if m is not None:
                    found.append(m)
        return HistoryPage(cid, tuple(found), bool(answer.get("hasMore")))

    def _group(self, answer: Frame) -> GroupInfo:
        gid = str(answer["groupId"])
        info = self.state.groups.get(gid)
        if info is None:
            info = GroupInfo(gid, str(answer.get("name") or gid), tuple(answer.get("members", [])))
        return info


def _decode(raw: str | bytes) -> Frame | None:
    try:
        frame = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return frame if isinstance(frame, dict) else None
