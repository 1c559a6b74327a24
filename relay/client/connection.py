"""RelayClient: the Trio shell around ClientState — one WebSocket to the relay, kept alive.

    async with RelayClient("ws://localhost:8080", user_id="alice", user_name="Alice") as client:
        await client.wait_online()
        msg = await client.send_message("bob", "hello")      # pending at once
        await client.wait_message(msg.id, MessageStatus.DELIVERED)

Lifetime: entering the context opens a nursery that runs the connection manager (connect,
authenticate with `acks: true`, read, write, reconnect); leaving it closes the WebSocket
(1000) and cancels every task. Entering does not wait for the relay: `wait_online()` does.

Several URLs (the nodes of one relay, `RelayClient([url1, url2, url3], ...)`): each attempt
after a failure or a drop goes to the next URL in turn, so a client whose node died moves to a
surviving one; the backoff below is the same.

Reconnection: after a drop the client waits `policy.delay_before(n)` and tries again, up to
`policy.attempts` attempts (default 5, 3 s apart on average as in the original app, each delay
spread by +-50%, `jitter`, so that clients dropped together do not return together). An
attempt that reaches `auth_ok` resets the count. When the attempts are spent (or the relay refuses authentication)
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

import random
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import attrs
import trio

import relay.client.files as files
from relay.client.backoff import DEFAULT_JITTER, ReconnectPolicy
from relay.client.calls import (
    CallInfo,
    accept_frame,
    end_frame,
    invite_frame,
    reject_frame,
    signal_frame,
)
from relay.client.events import EventHub, EventStream
from relay.client.files import FileInfo
from relay.client.frames import Frame, auth_frame, now_iso, parse_message
from relay.client.lifecycle import Lifecycle, Phase
from relay.client.link import DROPS, AuthRejected, Link, describe, drop_reason
from relay.client.model import (
    ConnectionState,
    Conversation,
    ConversationId,
    GroupInfo,
    HistoryPage,
    Message,
    MessageStatus,
    Presence,
    SearchResults,
)
from relay.client.outgoing import Outgoing
from relay.client.state import ClientState
from relay.errors import ClientError, ConnectionLost

Target = str | ConversationId


def _cid(target: Target) -> ConversationId:
    return target if isinstance(target, ConversationId) else ConversationId.direct(target)


class RelayClient:
    """A client of a relay speaking protocol v1. See the module docstring."""

    def __init__(
        self,
        url: str | Sequence[str],
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
        jitter: float = DEFAULT_JITTER,
        max_outbox: int = 1000,
        event_buffer: int = 256,
        connect_timeout: float = 10.0,
        heartbeat_interval: float | None = 20.0,
        heartbeat_timeout: float = 20.0,
        sync_on_connect: bool = True,
        ack_delay: float = 0.05,
        rng: random.Random | None = None,
    ) -> None:
        # several URLs: the nodes of one relay; each attempt after a failure or a drop goes to
        # the next one in turn (first the one that failed is left)
        self.urls = [url] if isinstance(url, str) else list(url)
        if not self.urls:
            raise ValueError("RelayClient needs at least one URL")
        self._url_at = 0
        self.user_id = user_id
        self.user_name = user_name
        self.user_avatar = user_avatar
        self.token = token
        # None: the user's anonymous device (one delivery cursor shared by every connection of
        # the user without a deviceId); give a stable id per installation for a cursor of its own
        self.device_id = device_id
        self.connection_device_id: str | None = None  # as auth_ok named it (`anon-…` when None)
        self.session_id: str | None = None
        self.ice_servers: list[dict[str, Any]] = []  # auth_ok's iceServers (RTCIceServer dicts)
        self.http_token: str | None = None  # auth_ok's, for /files (contract v2)
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
        self._life = Lifecycle()
        self._hub = EventHub()
        self._outgoing = Outgoing(self.state)
        self._nursery: trio.Nursery | None = None
        self._link: Link | None = None  # the session of the running connection manager
        self._stopped = trio.Event()  # set when the connection manager has returned
        self._lifetime_cm: Any = None
        self._task_scopes: set[trio.CancelScope] = set()

    # --- lifetime ---------------------------------------------------------------------------------

    async def __aenter__(self) -> RelayClient:
        # checked before the lifetime starts, so that a second entry leaves the first intact
        if self._life.phase is not Phase.IDLE:
            raise ClientError("a RelayClient is entered once")
        cm = self._lifetime()
        await cm.__aenter__()
        self._lifetime_cm = cm
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
            self._closed()
            self._hub.close()

    async def _close_socket(self) -> None:
        """Stop the connection manager, saying goodbye (close 1000) if a socket is open, so the
        relay need not wait for a timeout; at most about 1 s. (Still connecting: nothing to say.)"""
        if self._life.closing:
            return
        self._life.move(Phase.CLOSING)
        # receipts held back by ack_delay go out first, so the senders see them now
        self._outgoing.close()
        link = self._link
        if link is not None and link.is_open:
            if self.state.connection is ConnectionState.ONLINE:
                with trio.CancelScope(shield=True), trio.move_on_after(0.5):
                    await self._outgoing.drained.wait()
            link.hang_up()  # the manager closes the socket on its way out
            with trio.CancelScope(shield=True), trio.move_on_after(1.5):
                await self._stopped.wait()

    async def aclose(self) -> None:
        """Close the connection and stop the client's tasks now (leaving the context does it
        too); pending waits raise ConnectionLost. The caller's own code is not cancelled."""
        await self._close_socket()
        self._stop_tasks()
        self._closed()

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

        self._nursery.start_soon(run, name=fn)

    def _stop_tasks(self) -> None:
        for scope in list(self._task_scopes):
            scope.cancel()

    def reconnect(self) -> None:
        """Start connecting again after the client gave up (attempts counted afresh)."""
        if self._nursery is None or self._life.closing:
            raise ClientError("the client is not open")
        if self._life.phase is Phase.GAVE_UP:
            self._start_manager()

    def _start_manager(self) -> None:
        assert self._nursery is not None
        self._life.move(Phase.RUNNING)
        self._stopped = trio.Event()
        self._spawn(self._run)

    # --- reading state ----------------------------------------------------------------------------

    @property
    def connection_state(self) -> ConnectionState:
        return self.state.connection

    def events(self, buffer: int | None = None) -> EventStream:
        """Subscribe to change events from now on (see the module docstring on lagging)."""
        return self._hub.subscribe(buffer or self.event_buffer, closed=self._life.closing)

    async def wait_until(self, predicate: Callable[[ClientState], bool]) -> None:
        """Return once `predicate(state)` holds; raises ConnectionLost if the client gives up
        first. Re-checked after every change."""
        while not predicate(self.state):
            self._check_alive()
            await self._hub.wait_changed()

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
        attachments: Sequence[FileInfo] | None = None,
    ) -> Message:
        """Add a message as `pending` (returned at once) and send it as soon as the link allows.

        `to` is a user id (direct) or a ConversationId; `attachments` are files this user
        uploaded (upload_file), 1-10, and `text` may then be "". Raises OutboxFull when
        `max_outbox` messages are unconfirmed, ConnectionLost when the client gave up."""
        self._check_alive()
        msg, events = self.state.compose(
            _cid(to),
            text,
            timestamp=now_iso(),
            message_id=message_id,
            meta=meta,
            attachments=tuple(attachments) if attachments else None,
        )
        self._hub.publish(events)
        self._outgoing.wake()
        return msg

    async def retry(self, message_id: str) -> Message:
        """Send a failed message again with its id."""
        self._check_alive()
        msg, events = self.state.retry(message_id)
        self._hub.publish(events)
        self._outgoing.wake()
        return msg

    async def mark_read(self, conversation: Target) -> None:
        """Mark everything seen in the conversation read (kept and sent when back online)."""
        frame, events = self.state.mark_read(_cid(conversation))
        self._hub.publish(events)
        if frame is not None:
            self._outgoing.queue(frame, keep_offline=True)

    async def typing(self, conversation: Target, active: bool = True) -> None:
        """Tell the peer(s) the user is typing (or stopped); `start` is refreshed at most every
        3 s; dropped while offline."""
        frame = self.state.typing_frame(_cid(conversation), active, trio.current_time())
        if frame is not None and self.state.connection is ConnectionState.ONLINE:
            self._outgoing.queue(frame, keep_offline=False)

    async def set_status(self, status: str) -> None:
        """Announce this user's status (`online`, `away`, `busy`) to their contacts."""
        frame = {"type": "status", "status": status, "userId": self.user_id, "timestamp": now_iso()}
        if self.state.connection is ConnectionState.ONLINE:
            self._outgoing.queue(frame, keep_offline=False)

    async def open_conversation(self, conversation: Target) -> list[Message]:
        """Make `conversation` the active one (`state.active`) and return its messages, loading
        the newest page from the relay first when online and fewer than a page are known."""
        cid = _cid(conversation)
        self.state.active = cid
        self._hub.notify()
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
        return _history_page(self.state, cid, answer)

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
        return _group_info(self.state, await self._request(frame, "group"))

    async def add_members(self, group_id: str, user_ids: Sequence[str]) -> GroupInfo:
        frame = {"type": "group_add", "groupId": group_id, "userIds": list(user_ids)}
        return _group_info(self.state, await self._request(frame, "group"))

    async def remove_members(self, group_id: str, user_ids: Sequence[str]) -> GroupInfo:
        frame = {"type": "group_remove", "groupId": group_id, "userIds": list(user_ids)}
        return _group_info(self.state, await self._request(frame, "group"))

    async def leave_group(self, group_id: str) -> GroupInfo:
        frame = {"type": "group_leave", "groupId": group_id}
        return _group_info(self.state, await self._request(frame, "group"))

    # --- calls (contract v2; relay.client.calls) --------------------------------------------------
    # Call frames are written only while online (a call cannot outlive its connection: the
    # relay ends it when the connection drops); offline, these raise ClientError. Answers come
    # as events (CallRinging, CallAccepted, CallEnded, CallSignalled, CallInvited) and in
    # `state.calls`; `wait_call` waits for a phase.

    async def place_call(
        self, peer_id: str, sdp: str, *, media: str = "audio", call_id: str | None = None
    ) -> CallInfo:
        """Call `peer_id` with the SDP offer `sdp`; the call is `calling` until the relay
        answers `ringing` (or ends it: busy, unavailable)."""
        self._check_online()
        call = self.state.calls.place(peer_id, media, call_id)
        self._outgoing.queue(invite_frame(call, sdp), keep_offline=False)
        self._hub.notify()
        return call

    async def answer_call(self, call_id: str, sdp: str) -> None:
        """Accept a call ringing on this device with the SDP answer `sdp`."""
        self._check_online()
        self.state.calls.answered_here(call_id)
        self._outgoing.queue(accept_frame(call_id, sdp), keep_offline=False)
        self._hub.notify()

    async def reject_call(self, call_id: str) -> None:
        """Decline a call ringing on this device (the caller gets `rejected`)."""
        self._check_online()
        self.state.calls.end_here(call_id, "rejected")
        self._outgoing.queue(reject_frame(call_id), keep_offline=False)
        self._hub.notify()

    async def hang_up(self, call_id: str) -> None:
        """End a call of this device (the other side gets `hangup`)."""
        self._check_online()
        self.state.calls.end_here(call_id, "hangup")
        self._outgoing.queue(end_frame(call_id), keep_offline=False)
        self._hub.notify()

    async def send_call_signal(self, call_id: str, payload: dict[str, Any]) -> None:
        """Send `payload` (an ICE candidate, a renegotiation) to the other device of the call."""
        self._check_online()
        self._outgoing.queue(signal_frame(call_id, payload), keep_offline=False)

    async def wait_call(self, call_id: str, *phases: str) -> CallInfo:
        """Wait until the call is in one of `phases` (calling, ringing, incoming, answered,
        ended); returns it."""

        def reached(s: ClientState) -> bool:
            call = s.calls.get(call_id)
            return call is not None and call.phase in phases

        await self.wait_until(reached)
        call = self.state.calls.get(call_id)
        assert call is not None
        return call

    def _check_online(self) -> None:
        self._check_alive()
        if self.state.connection is not ConnectionState.ONLINE:
            raise ClientError("not connected to the relay: calls need a live connection")

    async def search(
        self,
        query: str,
        *,
        conversation: Target | None = None,
        before: str | None = None,
        limit: int = 20,
    ) -> SearchResults:
        """Search the user's conversations (only `conversation` when given) for `query`: words
        (all must match), `word*` prefixes and `"a phrase"`. Newest first; page on with
        `before=results.next`. The messages found do not join the state."""
        frame: Frame = {"type": "search", "query": query, "limit": limit}
        if conversation is not None:
            frame.update(_cid(conversation).target())
        if before is not None:
            frame["before"] = before
        answer = await self._request(frame, "search_result")
        return _search_results(self.user_id, answer)

    async def upload_file(
        self,
        data: bytes | AsyncIterable[bytes],
        *,
        name: str,
        mime: str | None = None,
        context: ssl.SSLContext | None = None,
    ) -> FileInfo:
        """Upload a file (`POST /files`) with this session's httpToken; its FileInfo."""
        return await files.upload(
            self.url, self._token(), data, name=name, mime=mime, context=context
        )

    async def send_file(
        self,
        to: Target,
        data: bytes | AsyncIterable[bytes],
        *,
        name: str,
        mime: str | None = None,
        text: str = "",
        context: ssl.SSLContext | None = None,
    ) -> Message:
        """Upload a file, then send it in a message to `to` (with `text`, if any): the pending
        message, as send_message answers."""
        info = await self.upload_file(data, name=name, mime=mime, context=context)
        return await self.send_message(to, text, attachments=[info])

    async def download(
        self, file_id: str, *, context: ssl.SSLContext | None = None
    ) -> AsyncIterator[bytes]:
        """A file's bytes, chunk by chunk (`GET /files/{fileId}`)."""
        async for chunk in files.download(self.url, self._token(), file_id, context=context):
            yield chunk

    def _token(self) -> str:
        if self.http_token is None:
            raise ClientError("no httpToken yet: the client has not been online")
        return self.http_token

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
            while not self._life.closing:
                self._set_connection(ConnectionState.CONNECTING, failures)
                link = self._link = self._new_link()
                try:
                    await link.run()
                    reason = "closed by the relay"
                except AuthRejected as exc:
                    self._give_up(str(exc))
                    return
                except DROPS as exc:
                    reason = describe(exc)
                except BaseExceptionGroup as group:
                    try:
                        reason = drop_reason(group)
                    except AuthRejected as exc:
                        self._give_up(str(exc))
                        return
                if self._life.closing:
                    return
                failures = 1 if link.came_online else failures + 1
                self._url_at = (self._url_at + 1) % len(self.urls)  # the next node
                if failures > self.policy.attempts:
                    self._give_up(f"gave up after {self.policy.attempts} attempts: {reason}")
                    return
                self._set_connection(ConnectionState.OFFLINE, failures, reason)
                await trio.sleep(self.policy.delay_before(failures, self._rng))
        finally:
            self._link = None
            self._stopped.set()

    @property
    def url(self) -> str:
        """The URL of the current (or next) connection attempt."""
        return self.urls[self._url_at]

    def _new_link(self) -> Link:
        return Link(
            url=self.url,
            auth=auth_frame(
                self.user_id, self.user_name, self.user_avatar, self.token, self.device_id
            ),
            state=self.state,
            outgoing=self._outgoing,
            hub=self._hub,
            online=self._online,
            connect_timeout=self.connect_timeout,
            heartbeat_interval=self.heartbeat_interval,
            heartbeat_timeout=self.heartbeat_timeout,
            ack_delay=self.ack_delay,
            sync_on_connect=self.sync_on_connect,
        )

    def _online(self, ok: Frame) -> None:
        self.connection_device_id = ok.get("deviceId")
        self.session_id = ok.get("sessionId")
        servers = ok.get("iceServers")  # contract v2: STUN/TURN for calls, [] when none
        self.ice_servers = servers if isinstance(servers, list) else []
        token = ok.get("httpToken")
        self.http_token = token if isinstance(token, str) else None
        self._set_connection(ConnectionState.ONLINE)

    async def _sweep_typing(self) -> None:
        while True:
            await trio.sleep(1.0)
            self._hub.publish(self.state.expire_typing(trio.current_time()))

    # --- plumbing ---------------------------------------------------------------------------------

    async def _request(self, frame: Frame, answer: str) -> Frame:
        self._check_alive()
        return await self._outgoing.request(frame, answer)

    def _check_alive(self) -> None:
        if self._life.lost is not None:
            raise ConnectionLost(self._life.lost)

    def _set_connection(
        self, state: ConnectionState, attempt: int = 0, reason: str | None = None
    ) -> None:
        if state is not ConnectionState.ONLINE:
            self._outgoing.offline()
        self._hub.publish(self.state.set_connection(state, attempt, reason), force=True)

    def _give_up(self, reason: str) -> None:
        """The manager stops trying: DISCONNECTED until reconnect(). (A client closing is
        closed rather than given up, whatever ended its last attempt.)"""
        if self._life.closing:
            return
        self._life.move(Phase.GAVE_UP, reason)
        self._disconnected(reason, announce=True)

    def _closed(self) -> None:
        """The client is closed: final DISCONNECTED (announced unless it gave up before)."""
        if not self._life.closing:
            self._life.move(Phase.CLOSING)
        announce = self._life.lost is None
        if self._life.phase is Phase.CLOSING:
            self._life.move(Phase.CLOSED, "client closed")
        self._disconnected("client closed", announce=announce)

    def _disconnected(self, reason: str, *, announce: bool) -> None:
        """Every pending request and wait raises ConnectionLost(reason)."""
        if announce:
            self._set_connection(ConnectionState.DISCONNECTED, 0, reason)
        self._outgoing.fail_all(ConnectionLost(reason))
        self._hub.notify()


def _history_page(state: ClientState, cid: ConversationId, answer: Frame) -> HistoryPage:
    """The page a `history` answer stands for, as the state holds its messages."""
    found: list[Message] = []
    for item in answer.get("messages", []):
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            m = state.find(str(item["id"]), str(item.get("senderId")))
            if m is not None:
                found.append(m)
    return HistoryPage(cid, tuple(found), bool(answer.get("hasMore")))


def _search_results(user_id: str, answer: Frame) -> SearchResults:
    """The messages of a `search_result` answer, with the status each item carries."""
    statuses = {s.value: s for s in MessageStatus}
    found: list[Message] = []
    for item in answer.get("items", []):
        if not isinstance(item, dict):
            continue
        message = parse_message(item, user_id)
        if message is None:
            continue
        status = statuses.get(str(item.get("status")))
        found.append(attrs.evolve(message, status=status) if status is not None else message)
    cursor = answer.get("next")
    return SearchResults(
        tuple(found), bool(answer.get("hasMore")), cursor if isinstance(cursor, str) else None
    )


def _group_info(state: ClientState, answer: Frame) -> GroupInfo:
    """The group a `group` answer stands for, as the state holds it."""
    gid = str(answer["groupId"])
    info = state.groups.get(gid)
    if info is None:
        info = GroupInfo(gid, str(answer.get("name") or gid), tuple(answer.get("members", [])))
    return info
