"""MessagingService: the messaging core of relay — client frames in, store calls, frames out.

It implements the shell's ConnectionHandler (docs/ARCHITECTURE.md) and imports no trio: the shell
calls `on_open`, awaits `on_messages` inline, calls `on_flushed`/`on_close`, calls `tick(now)`
about every 250 ms and awaits `maintain()` about as often (store work that sync callbacks cannot
do: delivery marks of flushed frames, lastSeen, backlog continuation).

Behaviour (the v1 contract of /work/shared/protocol.md; limits from RelayConfig):
- Session: the first frame must be `auth` within `auth_timeout` (else close 1008); any other
  valid frame before it gets error `unauthenticated` (the connection stays); a failed auth gets
  error `auth_failed`, then close 1008. A second `auth` on an active connection gets `invalid`.
  See relay/session.py for how a missing `deviceId` maps (the user's anonymous device).
- Messages: the consecutive `message` frames of one read are checked in order (senderId must be
  the user -> failed/forbidden; contract field checks -> failed/invalid or too_long; group
  unknown -> failed/not_found, not a member -> failed/forbidden; then the per-user token bucket
  `rate_limit_messages`/s, burst `rate_limit_burst` -> failed/rate_limited) and the accepted
  ones stored with ONE store.append_many. Only after it returned does the sender get `sent`
  (seq); then the message goes to every live device of the recipient(s) and to the sender's
  other devices. A duplicate (senderId, id) gets the same `sent` receipt and seq and is not
  delivered again. A store failure answers every message of the batch failed/internal.
  Live deliveries are released in seq order per conversation whatever order concurrent
  appends return in (a later seq waits for the earlier ones), so every device sees a
  conversation in seq order. A message without senderName/senderAvatar carries the
  userName/userAvatar its sender authenticated with.
- Delivered: a device with acks=true marks delivered with `delivered` (or `read`) receipts; a
  device with acks=false counts as delivered once its outbox was flushed. Either way the store
  records it, and each sender whose messages the reader's delivered/read watermark newly covers
  gets a `receipt` (id and seq of its newest covered message, `userId` the reader); a `read`
  also reaches the reader's other devices. The `delivered` receipt for acks=false devices
  comes with the next `maintain()` after the flush (within a tick, ~250 ms). Receipts are clamped to the conversation's last seq;
  a receipt for a conversation the user is not in (no such 1:1 conversation, or a group they
  are not a member of) gets error `forbidden`; stale ones are ignored.
- Backlog: after auth_ok, store.undelivered for this device, oldest first, in batches of
  `backlog_batch`, queued as the outbox drains (never filling more than half of it, so a
  backlog larger than the outbox reaches a device that reads); the next batch is fetched once
  the previous one was marked delivered (flushed for acks=false, acknowledged for acks=true),
  so an acks=true device that stops acknowledging stops receiving until it acknowledges again.
- Receipt catch-up: once a device's backlog is done (in `_on_auth`, or in the `maintain()` after
  the flush or acknowledgement that ended it), it gets the `delivered`/`read` receipts that the
  other participants' current watermarks give its user's messages: per conversation and reader
  (each group member apart, as live), a `delivered` receipt and, when the read watermark covers
  one too, a `read` receipt, naming the newest covered message, in the shape of the live ones
  (store.coverage: most recently active conversations first, at most `receipt_catchup`
  watermarks examined). They are sent while the outbox is at most half full (the rest comes
  with the next connection), never make a connection slow, and carry no device cursor: a
  watermark receipt is idempotent (status only moves forward), so one bounded store read per
  connect is cheaper than a per-device cursor written on every connect.
- History: the user's own messages carry `status` as the other participants' watermarks give
  it: `read` / `delivered` when every other current participant's read / delivered watermark
  covers the message (the peer's in a 1:1; all the other members' in a group), else `sent`.
  Messages of others, and pages of a conversation without another participant, say `delivered`.
  A page is at most `limit` messages and at most half of `outbox_max_bytes` encoded;
  a page cut short by the size keeps the end the client pages toward (the oldest for `after`,
  the newest otherwise) and says `hasMore: true`. The `conversations` answer is cut the same
  way (newest first), with `hasMore: true` only when it was cut.
- Groups: group_create (the creator is always a member; at most `max_group_members`),
  group_add (any member may add), group_remove (only the group's creator, while a member, may
  remove others; anyone may remove themselves, which is the same as group_leave), group_leave
  (any member). The `group` frame (with `event`: create/add/remove/leave) goes to every member
  after the change and to everyone removed; the requesting connection's copy carries `ref`.
  Unknown group -> error `not_found`; a non-member asking about it -> `forbidden`; a taken
  group id -> `invalid` (field groupId). Group items of `conversations` carry the group `name`.
- Presence and typing: see relay/presence.py and relay/typing_state.py. Their frames are sent
  droppable (the outbox drops them first when a connection is slow). A `presence` query may name
  any user ids (at most 1000) and answers online/away/busy or offline with lastSeen.
- Flow control: a message, receipt or answer that does not fit a connection's outbox closes it
  with 1013 (what it missed stays in the store for its next connection).
- Robustness: an unexpected exception while handling one frame is logged and answered with
  error `internal`; the connection stays.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, NamedTuple

import orjson
from attrs import define, field

from relay.auth import Authenticator, authenticator_from_config
from relay.clock import WallClock, iso_utc
from relay.config import RelayConfig
from relay.errors import Conflict, FrameError, NotFound
from relay.fastpath import OP_TEXT, encode_delivery, encode_frame, encode_sent_frame, record
from relay.presence import PresenceTracker
from relay.protocol import (
    AuthFrame,
    ClientFrame,
    ConversationsFrame,
    GroupAddFrame,
    GroupCreateFrame,
    GroupLeaveFrame,
    GroupRemoveFrame,
    HistoryFrame,
    Limits,
    MessageFrame,
    MessageRefused,
    PingFrame,
    PresenceFrame,
    ReceiptFrame,
    StatusFrame,
    TypingFrame,
    conversation_item,
    encode_auth_ok,
    encode_conversations,
    encode_error,
    encode_group,
    encode_history,
    encode_pong,
    encode_presence,
    encode_receipt_failed,
    encode_receipt_status,
    encode_status,
    encode_typing,
    message_dict,
    parse_client_frame,
    validate_message,
)
from relay.ratelimit import RateLimiter
from relay.router import Router
from relay.session import ANONYMOUS_DEVICE, Connection, Phase, Session
from relay.store.base import (
    Appended,
    Group,
    NewMessage,
    Store,
    StoredMessage,
    direct_conversation,
    group_conversation,
)
from relay.typing_state import TypingKey, TypingTracker

log = logging.getLogger("relay.service")

#: The longest stretch of maintain() work between two of its pauses, s.
MAINTAIN_SLICE = 0.0002
#: Delivery marks maintain() hands the store in one write (store.mark_delivered_many).
MARKS_PER_WRITE = 256
_monotonic = time.monotonic

CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN_LATER = 1013
_ACTIVE = Phase.ACTIVE
_CLOSING = Phase.CLOSING
#: bound of the remembered 1:1 conversation keys and registered devices (cleared when reached)
DIRECT_KEYS_MAX = 100_000


def _wire(json_bytes: bytes) -> bytes:
    """One unfragmented WebSocket text frame around an encoded server frame."""
    return encode_frame(OP_TEXT, json_bytes)


#: a live delivery waiting for its turn: (message, audience, connection left out)
_Delivery = tuple[StoredMessage, Sequence[str], Connection | None]
#: a stored message ready for the sequencer: (conversation, seq, message, audience, left out)
_Ready = tuple[str, int, StoredMessage, Sequence[str], Connection | None]


def _new_message(
    session: Session, item: MessageFrame, conversation: str, timestamp: str
) -> NewMessage:
    """The NewMessage of a checked message frame of the session's user (senderName and
    senderAvatar default to what the user authenticated with)."""
    sender_name = item.sender_name
    sender_avatar = item.sender_avatar
    # NewMessage(...) in one allocation (fastpath.record): its fields, in order
    return record(
        NewMessage,
        (
            conversation,
            item.id,
            session.user_id,
            item.text,
            timestamp,
            item.recipient_id,
            item.group_id,
            session.user_name if sender_name is None else sender_name,
            session.user_avatar if sender_avatar is None else sender_avatar,
            item.client_timestamp,
            item.meta,
        ),
    )


class _Pending(NamedTuple):
    """A checked batch of messages between its append and its answers (see _begin_batch)."""

    entries: list[tuple[NewMessage, tuple[str, ...]] | bytes]  # per frame: to store, or refused
    accepted: list[NewMessage]  # what to store, in order
    conversations: Sequence[str]  # each once: the sequencer's turn
    timestamp: str  # the server time of the batch


#: a conversation's last released seq is forgotten after this long without appends
SEQUENCER_IDLE = 60.0


@define
class _Sequencer:
    """Releases live deliveries in seq order per conversation, whatever order appends return in.

    A store assigns seqs in its acceptance order, which need not be the order append_many was
    called in, and concurrent callers resume in any order. Invariants:
    - `_inflight[c]` counts the appends touching conversation c whose caller has not resumed;
    - `_released[c]` is the highest seq of c released (kept while c is in use, forgotten after
      SEQUENCER_IDLE seconds without appends);
    - a delivery of seq s of c is released when s == _released[c] + 1 (0 for a c never released:
      nothing precedes seq 1), or when no append of c is
      in flight (then every lower seq was accepted earlier and its caller has already resumed
      and released it); otherwise it is held. Held deliveries of c are released lowest first.
      Failed and cancelled appends only end.
    """

    _release: Callable[[StoredMessage, Sequence[str], Connection | None], None]
    _inflight: dict[str, int] = field(factory=dict)
    _released: dict[str, int] = field(factory=dict)
    _held: dict[str, dict[int, _Delivery]] = field(factory=dict)
    _used: dict[str, float] = field(factory=dict)

    def begin(self, conversations: Iterable[str], now: float) -> None:
        inflight = self._inflight
        used = self._used
        for conversation in conversations:
            inflight[conversation] = inflight.get(conversation, 0) + 1
            used[conversation] = now

    def end(
        self,
        conversations: Iterable[str],
        deliveries: Iterable[_Ready],
    ) -> None:
        inflight = self._inflight
        for conversation in conversations:
            left = inflight[conversation] - 1
            if left:
                inflight[conversation] = left
            else:
                del inflight[conversation]
        held = self._held
        released = self._released
        release = self._release
        for conversation, seq, message, audience, exclude in deliveries:
            # the common case, decided at once: the next seq of a conversation holding nothing
            if conversation not in held and released.get(conversation, 0) == seq - 1:
                released[conversation] = seq
                try:
                    release(message, audience, exclude)
                except Exception:
                    log.exception("delivery of %s #%d failed", conversation, seq)
                continue
            held.setdefault(conversation, {})[seq] = (message, audience, exclude)
        if held:
            for conversation in conversations:
                if conversation in held:
                    self._drain(conversation)

    def _drain(self, conversation: str) -> None:
        held = self._held.get(conversation)
        if not held:
            return
        last = self._released.get(conversation)
        if conversation in self._inflight:
            # appends still in flight: only the unbroken run after the last released seq may go
            if last is None:
                return
            order: list[int] = []
            while last + len(order) + 1 in held:
                order.append(last + len(order) + 1)
        else:
            order = sorted(held)
        for seq in order:
            message, audience, exclude = held.pop(seq)
            last = seq if last is None else max(last, seq)
            try:
                self._release(message, audience, exclude)
            except Exception:
                log.exception("delivery of %s #%d failed", conversation, seq)
        if last is not None:
            self._released[conversation] = last
        if not held:
            del self._held[conversation]

    def busy(self) -> bool:
        """Whether any append is in flight or any delivery held (else each release may go
        at once, in the order appends return: see `released`)."""
        return bool(self._inflight) or bool(self._held)

    def released(self, conversation: str, seq: int, now: float) -> None:
        """`seq` of `conversation` was appended and released at once, the sequencer not being
        busy: the same bookkeeping as begin() + end() of a lone delivery."""
        self._released[conversation] = seq
        self._used[conversation] = now

    def prune(self, now: float) -> None:
        """Forget conversations idle for SEQUENCER_IDLE seconds (nothing in flight or held)."""
        idle = [
            c
            for c, used in self._used.items()
            if now - used >= SEQUENCER_IDLE and c not in self._inflight and c not in self._held
        ]
        for conversation in idle:
            del self._used[conversation]
            self._released.pop(conversation, None)


@define(init=False)
class MessagingService:
    """The messaging core; see the module docstring for the behaviour it guarantees."""

    config: RelayConfig
    store: Store
    authenticator: Authenticator
    clock: Callable[[], float]
    wall: WallClock
    limits: Limits
    router: Router
    presence: PresenceTracker
    typing: TypingTracker
    limiter: RateLimiter
    _awaiting: dict[int, Connection]
    _sequencer: _Sequencer
    # (conversation, user, store device) -> (seq, group id) flushed but not yet in the store
    _flushed: dict[tuple[str, str, str], tuple[int, str | None]]
    _persisting: dict[tuple[str, str, str], tuple[int, str | None]]  # being written now
    _last_seen: dict[str, str]
    _backlog_ready: dict[int, Connection]
    _catchup_due: dict[int, Connection]  # backlog done, receipt catch-up not yet sent
    _maintaining: bool
    _manage_store: bool
    _direct_keys: dict[tuple[str, str], str]
    _registered: set[tuple[str, str]]  # devices this process registered in the store
    _iso_ms: int  # the wall-clock millisecond `_iso` was formatted for
    _iso: str
    # the store's append without waiting, when it has one (Store.append_now): on_messages_nowait
    _append_now: Callable[[Sequence[NewMessage]], list[Appended]] | None
    # the store's queued append and its room check, when it has them (Store.append_soon)
    _append_soon: Callable[[Sequence[NewMessage], Callable[..., None]], None] | None
    _store_has_room: Callable[[], bool]
    _table: dict[str, dict[int, Connection]]  # the router's table (Router.table), for delivery

    def __init__(
        self,
        config: RelayConfig,
        store: Store,
        *,
        authenticator: Authenticator | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: WallClock = time.time,
        manage_store: bool = True,
    ) -> None:
        self.config = config
        self.store = store
        # None: what the config asks for (token auth when a key is configured, else trusting).
        self.authenticator = (
            authenticator if authenticator is not None else authenticator_from_config(config)
        )
        self.clock = clock
        self.wall = wall
        self.limits = Limits.from_config(config)
        self.router = Router()
        self.presence = PresenceTracker(config.presence_grace)
        self.typing = TypingTracker(config.typing_lapse, config.typing_rate_limit)
        self.limiter = RateLimiter(config.rate_limit_messages, config.rate_limit_burst)
        self._awaiting = {}
        self._sequencer = _Sequencer(self._release)
        self._direct_keys = {}
        self._registered = set()
        self._iso_ms = -1
        self._iso = ""
        self._flushed = {}
        self._persisting = {}
        self._last_seen = {}
        self._backlog_ready = {}
        self._catchup_due = {}
        self._maintaining = False
        self._manage_store = manage_store
        self._append_now = getattr(store, "append_now", None)
        self._table = self.router.table()
        self._append_soon = getattr(store, "append_soon", None)
        self._store_has_room = getattr(store, "has_room", lambda: False)

    # --- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the store, unless `manage_store=False` (its owner opens and closes it)."""
        if self._manage_store:
            await self.store.open()

    async def aclose(self) -> None:
        """Write what is pending (delivery marks, lastSeen), then close the store (unless
        `manage_store=False`)."""
        await self.maintain()
        if self._manage_store:
            await self.store.close()

    def _now_iso(self) -> str:
        """The wall clock as the protocol writes it (formatted once per millisecond)."""
        now = self.wall()
        millis = int(now * 1000)
        if millis != self._iso_ms:
            self._iso = iso_utc(now)
            self._iso_ms = millis
        return self._iso

    # --- ConnectionHandler ------------------------------------------------------------------------
    def on_open(self, conn: Connection) -> None:
        conn.state = Session(auth_deadline=self.clock() + self.config.auth_timeout)
        self._awaiting[conn.id] = conn

    async def on_messages(self, conn: Connection, payloads: list[bytes]) -> None:
        session = conn.state
        if session.__class__ is not Session:
            return
        limits = self.limits
        batch: list[MessageFrame | MessageRefused] = []
        for payload in payloads:
            if session.phase is _CLOSING:
                return
            try:
                frame: ClientFrame = parse_client_frame(payload, limits)
            except MessageRefused as refused:
                if session.active:
                    batch.append(refused)
                else:
                    self._error(
                        conn, session, "unauthenticated", "authenticate first", ref=refused.ref
                    )
                continue
            except FrameError as exc:
                if batch:
                    await self._guarded_batch(conn, session, batch)
                    batch = []
                self._on_frame_error(conn, session, exc)
                continue
            if frame.__class__ is MessageFrame and session.phase is _ACTIVE:
                batch.append(frame)
                continue
            if batch:
                await self._guarded_batch(conn, session, batch)
                batch = []
                if session.closing:
                    return
            try:
                await self._dispatch(conn, session, frame)
            except Exception:
                log.exception("internal error handling a %s frame", type(frame).__name__)
                self._error(conn, session, "internal", "internal error", ref=frame.ref)
        if batch and session.phase is not _CLOSING:
            try:  # _guarded_batch, inlined: one coroutine less per read
                await self._message_batch(conn, session, batch)
            except Exception:
                log.exception("internal error handling messages")
                self._error(conn, session, "internal", "internal error")

    def on_flushed(self, conn: Connection) -> None:
        session = conn.state
        if session.__class__ is not Session or session.phase is not _ACTIVE:
            return
        if conn.outbox.pending_frames:
            return  # frames queued after this flush began: their marks wait for the next one
        marks = session.pending_marks
        if marks:
            flushed = self._flushed
            user = session.user_id
            device = session.store_device
            for conversation, mark in marks.items():  # mark: (seq, group id)
                key = (conversation, user, device)
                known = flushed.get(key)
                if known is None or known[0] < mark[0]:
                    flushed[key] = mark
            marks.clear()
        if not session.backlog_active:
            return  # the backlog's queue and its waiting exist only while it runs
        if session.backlog_queue:
            fed = self._feed_backlog(conn, session) and not session.backlog_queue
            if fed and self._batch_verdict(conn, session) == "again":
                self._backlog_ready[conn.id] = conn
            return  # what was just queued must be flushed first
        if session.backlog_waiting and not session.acks:
            session.backlog_need.clear()
            self._backlog_ready[conn.id] = conn

    def on_close(self, conn: Connection, code: int) -> None:
        session = conn.state
        if not isinstance(session, Session):
            return
        self._awaiting.pop(conn.id, None)
        self._backlog_ready.pop(conn.id, None)
        self._catchup_due.pop(conn.id, None)
        was_registered = session.registered
        session.phase = Phase.CLOSING
        session.registered = False
        session.pending_marks.clear()  # not flushed: those messages stay undelivered
        session.held.clear()
        session.backlog_queue.clear()
        if not was_registered:
            return
        user = session.user_id
        remaining = self.router.remove(user, conn)
        left_at = self._now_iso()
        offline_now = self.presence.disconnect(user, self.clock(), left_at)  # counts every one
        if remaining:
            return
        for key in self.typing.clear_user(user):
            self._send_typing(key, "stop")
        if offline_now:
            self._announce_offline(user, left_at)

    def tick(self, now: float) -> None:
        for conn in [c for c in self._awaiting.values() if c.state.auth_expired(now)]:
            self._awaiting.pop(conn.id, None)
            conn.state.phase = Phase.CLOSING
            conn.close(CLOSE_POLICY, "authentication timeout")
        for user, seen in self.presence.expired(now):
            self._announce_offline(user, seen)
        for key in self.typing.lapsed(now):
            self._send_typing(key, "stop")
        self.limiter.prune(now)
        self._sequencer.prune(now)

    async def maintain(self, pause: Callable[[], Awaitable[None]] | None = None) -> None:
        """Store work the sync callbacks queued: delivery marks of flushed frames (and the
        receipts they cause), lastSeen of users gone offline, backlog batches waiting for those
        marks, receipt catch-ups of finished backlogs. Safe to call concurrently; cheap when
        there is nothing to do.

        `pause` (the shell passes one that lets its other tasks run) is awaited whenever
        MAINTAIN_SLICE of this work has gone by without one, so a tick's worth of marks and
        receipts never stalls live traffic for longer than that (an in-memory store's calls
        return without yielding)."""
        if self._maintaining:
            return
        self._maintaining = True
        resume_at = _monotonic() + MAINTAIN_SLICE
        ready: dict[int, Connection] = {}
        due: dict[int, Connection] = {}

        async def breathe() -> None:
            nonlocal resume_at
            if pause is not None and _monotonic() >= resume_at:
                await pause()
                resume_at = _monotonic() + MAINTAIN_SLICE

        try:
            # one pass over the marks queued so far: those of flushes during it (its pauses, the
            # store's awaits) wait for the next call, so a call ends however busy the relay is
            # and each mark batches a tick's worth of flushes
            marks = self._persisting = self._flushed
            self._flushed = {}
            pending = list(marks.items())
            for start in range(0, len(pending), MARKS_PER_WRITE):
                chunk = pending[start : start + MARKS_PER_WRITE]
                await breathe()  # before the write: a chunk cancelled here stays in `marks`
                try:
                    befores = await self.store.mark_delivered_many(
                        [(c, user, device, seq) for (c, user, device), (seq, _) in chunk]
                    )
                except Exception:
                    log.exception("recording %d deliveries failed", len(chunk))
                    for key, _mark in chunk:
                        del marks[key]
                    continue
                # receipts to the senders whose messages the moved watermarks now cover
                moved = [
                    (conversation, before.delivered_seq, seq, user, group_id)
                    for ((conversation, user, _device), (seq, group_id)), before in zip(
                        chunk, befores, strict=True
                    )
                    if seq > before.delivered_seq
                ]
                try:
                    newest = await self.store.latest_by_sender_many(
                        [(c, after, upto, user) for c, after, upto, user, _ in moved]
                    )
                except Exception:  # the marks stand; the receipts come with the catch-up of the
                    # senders' next connections
                    log.exception("finding the senders of %d deliveries failed", len(moved))
                else:
                    for (_c, _a, _u, user, group_id), messages in zip(moved, newest, strict=True):
                        await breathe()
                        self._status_receipts(messages, user, "delivered", group_id)
                for key, _mark in chunk:
                    del marks[key]
            # kept in _last_seen until written, so presence answers have it meanwhile
            for user, timestamp in list(self._last_seen.items()):
                await breathe()
                try:
                    await self.store.set_last_seen(user, timestamp)
                except Exception:
                    log.exception("recording lastSeen of %s failed; retrying", user)
                    continue
                if self._last_seen.get(user) == timestamp:
                    del self._last_seen[user]
            # once per call: a batch that fails or waits again is retried by the next call
            ready, self._backlog_ready = self._backlog_ready, {}
            for conn_id, conn in list(ready.items()):
                await breathe()  # cancelled here: `finally` queues what is left again
                del ready[conn_id]
                session = conn.state
                if isinstance(session, Session) and session.active:
                    await self._pump_backlog(conn, session)
            # after the pumps: the backlogs they finished are caught up in this call
            due, self._catchup_due = self._catchup_due, {}
            for conn_id, conn in list(due.items()):
                await breathe()
                del due[conn_id]
                session = conn.state
                if isinstance(session, Session) and session.active:
                    await self._catch_up(conn, session)
        finally:
            # marks not written (cancelled) go back to the queue for the next call
            for key, mark in self._persisting.items():
                known = self._flushed.get(key)
                if known is None or known[0] < mark[0]:
                    self._flushed[key] = mark
            self._persisting = {}
            # pumps and catch-ups not reached (cancelled) wait for the next call
            self._backlog_ready = {**ready, **self._backlog_ready}
            self._catchup_due = {**due, **self._catchup_due}
            self._maintaining = False

    # --- sending ----------------------------------------------------------------------------------
    def _send(self, conn: Connection, session: Session, json_bytes: bytes) -> bool:
        """Queue a frame that must not be dropped; a full outbox closes the connection (1013)."""
        if session.phase is _CLOSING:
            return False
        if conn.send(encode_frame(OP_TEXT, json_bytes)):
            return True
        self._slow(conn, session)
        return False

    def _slow(self, conn: Connection, session: Session) -> None:
        session.phase = Phase.CLOSING
        session.pending_marks.clear()
        conn.close(CLOSE_TRY_AGAIN_LATER, "slow consumer")

    def _error(
        self,
        conn: Connection,
        session: Session,
        code: str,
        message: str,
        *,
        ref: str | None = None,
        field: str | None = None,
    ) -> None:
        self._send(conn, session, encode_error(code, message, ref=ref, field=field))

    def _to_users(
        self,
        users: Iterable[str],
        wire: bytes,
        *,
        droppable: bool = False,
        exclude: Connection | None = None,
    ) -> None:
        """The same encoded frame to every active connection of `users`."""
        for user in users:
            for conn in self.router.connections(user):
                if conn is exclude:
                    continue
                session = conn.state
                if not isinstance(session, Session) or not session.active:
                    continue
                if droppable:
                    conn.send(wire, True)
                elif not conn.send(wire):
                    self._slow(conn, session)

    def _on_frame_error(self, conn: Connection, session: Session, exc: FrameError) -> None:
        if exc.code == "auth_failed" and not session.active:
            self._fail_auth(conn, session, exc.message, field=exc.field)
            return
        code = "invalid" if exc.code == "auth_failed" else exc.code
        self._error(conn, session, code, exc.message, ref=exc.ref, field=exc.field)

    # --- dispatch ---------------------------------------------------------------------------------
    async def _dispatch(self, conn: Connection, session: Session, frame: ClientFrame) -> None:
        if isinstance(frame, AuthFrame):
            await self._on_auth(conn, session, frame)
            return
        if not session.active:
            self._error(conn, session, "unauthenticated", "authenticate first", ref=frame.ref)
            return
        if isinstance(frame, ReceiptFrame):
            await self._on_receipt(conn, session, frame)
        elif isinstance(frame, TypingFrame):
            await self._on_typing(conn, session, frame)
        elif isinstance(frame, StatusFrame):
            self._on_status(conn, session, frame)
        elif isinstance(frame, PresenceFrame):
            await self._on_presence(conn, session, frame)
        elif isinstance(frame, ConversationsFrame):
            await self._on_conversations(conn, session, frame)
        elif isinstance(frame, HistoryFrame):
            await self._on_history(conn, session, frame)
        elif isinstance(frame, GroupCreateFrame):
            await self._on_group_create(conn, session, frame)
        elif isinstance(frame, GroupAddFrame):
            await self._on_group_add(conn, session, frame)
        elif isinstance(frame, GroupRemoveFrame):
            await self._on_group_remove(conn, session, frame)
        elif isinstance(frame, GroupLeaveFrame):
            await self._on_group_leave(conn, session, frame)
        elif isinstance(frame, PingFrame):
            self._send(conn, session, encode_pong(self._now_iso(), ref=frame.ref))
        else:  # MessageFrame is batched by on_messages
            raise AssertionError(f"unhandled frame {frame!r}")

    # --- auth -------------------------------------------------------------------------------------
    def _fail_auth(
        self, conn: Connection, session: Session, message: str, *, field: str | None = None
    ) -> None:
        self._awaiting.pop(conn.id, None)
        self._send(conn, session, encode_error("auth_failed", message, field=field))
        session.phase = Phase.CLOSING
        conn.close(CLOSE_POLICY, "authentication failed")

    async def _on_auth(self, conn: Connection, session: Session, frame: AuthFrame) -> None:
        if session.phase is not Phase.AWAITING_AUTH:
            self._error(
                conn, session, "invalid", "already authenticated", ref=frame.ref, field="type"
            )
            return
        session.phase = Phase.AUTHENTICATING
        try:
            user = await self.authenticator.authenticate(frame)
        except FrameError as exc:
            if not session.closing:
                self._fail_auth(conn, session, exc.message, field=exc.field)
            return
        except Exception:
            log.exception("authenticator failed")
            if not session.closing:
                self._awaiting.pop(conn.id, None)
                self._send(conn, session, encode_error("internal", "authentication unavailable"))
                session.phase = Phase.CLOSING
                conn.close(CLOSE_INTERNAL, "authentication unavailable")
            return
        if not self.presence.has_contacts(user):
            try:
                contacts = await self.store.contacts(user)
            except Exception:
                if not session.closing:
                    session.phase = Phase.AWAITING_AUTH  # the client may try again
                raise
            if not self.presence.has_contacts(user):
                self.presence.set_contacts(user, contacts)
        # The device is owed what is accepted from now on, even what its user's other devices
        # have delivered before it comes back (registered before it can miss anything).
        device = (user, frame.device_id if frame.device_id is not None else ANONYMOUS_DEVICE)
        if device not in self._registered:
            try:
                await self.store.register_device(*device)
            except Exception:
                if not session.closing:
                    session.phase = Phase.AWAITING_AUTH  # the client may try again
                raise
            if len(self._registered) >= DIRECT_KEYS_MAX:
                self._registered.clear()
            self._registered.add(device)
        if session.closing:
            return
        self._awaiting.pop(conn.id, None)
        session.activate(
            user,
            device_id=frame.device_id,
            acks=frame.acks,
            user_name=frame.user_name,
            user_avatar=frame.user_avatar,
        )
        session.registered = True
        self.router.add(user, conn)
        announce = self.presence.connect(user)
        now_iso = self._now_iso()
        self._send(
            conn, session, encode_auth_ok(user, session.device_id, session.session_id, now_iso)
        )
        if announce:
            self._announce(user, encode_status(user, "online", now_iso))
        if self._flushed:
            await self.maintain()  # this device's marks from an earlier connection first
        await self._pump_backlog(conn, session)
        if self._catchup_due.pop(conn.id, None) is not None:  # the backlog is done already
            await self._catch_up(conn, session)

    # --- backlog ----------------------------------------------------------------------------------
    async def _pump_backlog(self, conn: Connection, session: Session) -> None:
        """Send the next batches of this device's undelivered messages (see the module doc)."""
        if session.backlog_running or not session.backlog_active:
            return
        session.backlog_running = True
        try:
            await self._backlog_batches(conn, session)
        except Exception:
            # live messages from others keep waiting for the backlog: retry on the next maintain()
            log.exception("backlog of %s failed; retrying", session.user_id)
            session.backlog_waiting = True
            self._backlog_ready[conn.id] = conn
        finally:
            session.backlog_running = False

    async def _backlog_batches(self, conn: Connection, session: Session) -> None:
        """Fetch batches until the backlog is done, or it waits for a flush or for marks."""
        limit = self.config.backlog_batch
        while session.active and not session.backlog_queue:
            session.backlog_skipped = False
            session.backlog_waiting = False
            batch = await self.store.undelivered(session.user_id, session.store_device, limit=limit)
            if not session.active:
                return
            # not what this connection has, nor what the device had flushed (marks not yet written)
            fresh = [
                m
                for m in batch
                if m.seq > session.sent_upto.get(m.conversation, 0)
                and m.seq > self._marked_upto(session, m.conversation)
            ]
            session.backlog_queue.extend(fresh)
            session.backlog_full = len(batch) >= limit
            session.backlog_fresh = bool(fresh)
            if not self._feed_backlog(conn, session) or session.backlog_queue:
                return  # closed, or the rest is fed as the outbox drains (on_flushed)
            if self._batch_verdict(conn, session) != "again":
                return

    def _feed_backlog(self, conn: Connection, session: Session) -> bool:
        """Queue fetched backlog messages while the outbox is under half full (one at least when
        it is empty). False when the connection was closed."""
        queue = session.backlog_queue
        outbox = conn.outbox
        max_bytes = self.config.outbox_max_bytes // 2
        max_frames = self.config.outbox_max_frames // 2
        while queue:
            if outbox.pending_frames and (
                outbox.pending_bytes >= max_bytes or outbox.pending_frames >= max_frames
            ):
                return True
            message = queue.popleft()
            if session.held and not self._queue_held_before(conn, session, message):
                queue.clear()
                return False
            if not self._queue_message(conn, session, message, encode_delivery(message)):
                queue.clear()
                return False
            if session.acks:
                session.backlog_need[message.conversation] = message.seq
        return True

    def _batch_verdict(self, conn: Connection, session: Session) -> str:
        """A fetched batch is all queued: "done" (backlog over), "wait" (for this batch to be
        marked delivered: flushed for acks=false, acknowledged for acks=true) or "again"."""
        if not session.backlog_full:
            if session.backlog_skipped:
                return "again"  # live messages arrived meanwhile: they are in the store now
            self._finish_backlog(conn, session)
            return "done"
        unpersisted = not session.acks and self._unpersisted(session)
        if session.backlog_fresh or session.pending_marks or session.backlog_need or unpersisted:
            session.backlog_waiting = True
            if not session.acks and not session.pending_marks:
                self._backlog_ready[conn.id] = conn  # flushed already: maintain() goes on
            return "wait"
        # a whole batch of messages this connection already has, with nothing pending: the
        # store cannot tell us more; what remains comes with the next connection
        self._finish_backlog(conn, session)
        return "done"

    def _unpersisted(self, session: Session) -> bool:
        """Whether marks of this device were flushed but not yet written to the store."""
        return any(
            user == session.user_id and device == session.store_device
            for marks in (self._flushed, self._persisting)
            for _, user, device in marks
        )

    def _marked_upto(self, session: Session, conversation: str) -> int:
        """The highest seq this device had flushed in `conversation` that the store may not
        know yet (0: none)."""
        if not self._flushed and not self._persisting:
            return 0
        key = (conversation, session.user_id, session.store_device)
        flushed = self._flushed.get(key)
        persisting = self._persisting.get(key)
        return max(flushed[0] if flushed else 0, persisting[0] if persisting else 0)

    def _queue_held_before(
        self, conn: Connection, session: Session, message: StoredMessage
    ) -> bool:
        """Queue the held own messages of `message`'s conversation that precede it: a device
        gets its conversation in seq order, so they go before (queued after it, they would be
        below `sent_upto` and lost). False when the connection was closed."""
        conversation = message.conversation
        seq = message.seq
        keep: list[tuple[StoredMessage, bytes]] = []
        ok = True
        for item in session.held:
            held = item[0]
            if ok and held.conversation == conversation and held.seq < seq:
                ok = self._queue_message(conn, session, held, item[1])
            else:
                keep.append(item)
        session.held = keep
        return ok

    def _finish_backlog(self, conn: Connection, session: Session) -> None:
        session.backlog_active = False
        session.backlog_waiting = False
        session.backlog_need.clear()
        if self.config.receipt_catchup:
            self._catchup_due[conn.id] = conn  # sent by _on_auth or the next maintain()
        held, session.held = session.held, []
        for message, wire in held:
            if not self._queue_message(conn, session, message, wire):
                return

    # --- messages ---------------------------------------------------------------------------------
    def _queue_message(
        self, conn: Connection, session: Session, message: StoredMessage, wire: bytes
    ) -> bool:
        """Queue a message frame to one connection unless it has it; False if it was closed."""
        conversation = message.conversation
        if message.seq <= session.sent_upto.get(conversation, 0):
            return True
        if not conn.send(wire):
            self._slow(conn, session)
            return False
        session.sent_upto[conversation] = message.seq
        if not session.acks and message.sender_id != session.user_id:
            session.pending_marks[conversation] = (message.seq, message.group_id)
        return True

    def _release(
        self, message: StoredMessage, audience: Sequence[str], exclude: Connection | None
    ) -> None:
        """A stored message's turn came (see _Sequencer): deliver it live to every active
        connection of its audience but `exclude`, encoded once, the same bytes to every outbox."""
        sender = message.sender_id
        recipient = message.recipient_id
        if recipient is not None and message.group_id is None:
            self.presence.pair(sender, recipient)
        wire = encode_delivery(message)
        conversation = message.conversation
        seq = message.seq
        mark: tuple[int, str | None] | None = None
        failed: list[tuple[Connection, Session]] | None = None
        table = self._table
        for user in audience:
            conns = table.get(user)
            if conns is None:
                continue
            for conn in conns.values():
                if conn is exclude:
                    continue
                session = conn.state
                if session.__class__ is not Session or session.phase is not _ACTIVE:
                    continue
                if session.backlog_active:
                    if sender == session.user_id:
                        session.held.append((message, wire))
                    else:
                        session.backlog_skipped = True
                    continue
                sent_upto = session.sent_upto
                if seq <= sent_upto.get(conversation, 0):
                    continue
                if not conn.outbox.push(wire):
                    if failed is None:
                        failed = []
                    failed.append((conn, session))
                    continue
                conn.flush_soon()
                sent_upto[conversation] = seq
                if not session.acks and sender != session.user_id:
                    if mark is None:
                        mark = (seq, message.group_id)
                    session.pending_marks[conversation] = mark
        if failed:  # did not fit: the connection ends (its marks are dropped with it)
            for conn, session in failed:
                self._slow(conn, session)

    async def _guarded_batch(
        self, conn: Connection, session: Session, batch: list[MessageFrame | MessageRefused]
    ) -> None:
        try:
            await self._message_batch(conn, session, batch)
        except Exception:
            log.exception("internal error handling messages")
            self._error(conn, session, "internal", "internal error")

    @staticmethod
    def _refuse(frame: MessageFrame, reason: str, detail: str, field: str | None = None) -> bytes:
        return encode_receipt_failed(
            frame.id,
            reason,
            peer_id=frame.recipient_id,
            group_id=frame.group_id,
            field=field,
            detail=detail,
        )

    def _direct_key(self, user: str, peer: str) -> str:
        """direct_conversation(user, peer), remembered (bounded) for the hot path."""
        keys = self._direct_keys
        pair = (user, peer)
        key = keys.get(pair)
        if key is None:
            if len(keys) >= DIRECT_KEYS_MAX:
                keys.clear()
            key = keys[pair] = direct_conversation(user, peer)
        return key

    def _check_message(
        self,
        session: Session,
        frame: MessageFrame,
        now: float,
        timestamp: str,
        group: Group | None = None,
    ) -> tuple[NewMessage, tuple[str, ...]] | bytes:
        """The checks of a message that need the session (a group's: `group`, looked up):
        (the message to store, the users it is for), or the encoded `failed` receipt."""
        user = session.user_id
        sender_id = frame.sender_id
        if sender_id is not None and sender_id != user:
            return self._refuse(
                frame, "forbidden", "senderId is not the authenticated user", "senderId"
            )
        group_id = frame.group_id
        if group_id is not None:
            if group is None:
                return self._refuse(frame, "not_found", "no such group", "groupId")
            if user not in group.members:
                return self._refuse(frame, "forbidden", "not a member of this group", "groupId")
            audience: tuple[str, ...] = group.members
            conversation = group_conversation(group.group_id)
        else:
            peer = frame.recipient_id
            assert peer is not None
            audience = (peer,) if peer == user else (peer, user)
            conversation = self._direct_key(user, peer)
        if not self.limiter.allow(user, now):
            return self._refuse(frame, "rate_limited", "too many messages; slow down")
        return _new_message(session, frame, conversation, timestamp), audience

    def on_messages_nowait(self, conn: Connection, payloads: list[bytes]) -> int:
        """The part of on_messages that needs no waiting, for the shell's poller: the leading
        `message` frames of `payloads` (1:1, or to a group the router has cached) of an active
        session, when the store appends without waiting (`append_now`). Returns how many
        payloads it handled; the shell awaits on_messages with the rest, in order."""
        append_now = self._append_now
        session = conn.state
        if session.__class__ is not Session or session.phase is not _ACTIVE:
            return 0
        if append_now is None:
            return self._messages_soon(conn, session, payloads)
        frames = self._leading_messages(payloads)
        handled = 0
        # One at a time while it can; answers keep the frames' order: from the first frame
        # that needs a batch (refused, a group, another senderId) the batch takes the rest.
        # Only a batch makes the sequencer busy: idle now, it stays idle until then.
        if frames and not self._sequencer.busy():
            direct_now = self._direct_now
            now = self.clock()
            timestamp = self._now_iso()
            for frame in frames:
                if frame.__class__ is not MessageFrame:
                    break
                assert isinstance(frame, MessageFrame)
                try:
                    if not direct_now(conn, session, frame, append_now, now, timestamp):
                        break
                except Exception:
                    log.exception("internal error handling a message")
                    self._error(conn, session, "internal", "internal error", ref=frame.ref)
                handled += 1
                if session.phase is not _ACTIVE:
                    return len(payloads)  # closed (slow consumer): on_messages drops the rest
        if handled < len(frames):
            try:
                self._message_batch_now(conn, session, frames[handled:], append_now)
            except Exception:
                log.exception("internal error handling messages")
                self._error(conn, session, "internal", "internal error")
        return len(frames)

    def _leading_messages(self, payloads: list[bytes]) -> list[MessageFrame | MessageRefused]:
        """The leading message frames of `payloads` (refused ones included) that need no
        waiting: 1:1, or to a group in the router's cache."""
        limits = self.limits
        cached_group = self.router.cached_group
        batch: list[MessageFrame | MessageRefused] = []
        for payload in payloads:
            try:
                frame = parse_client_frame(payload, limits)
            except MessageRefused as refused:
                batch.append(refused)
                continue
            except FrameError:
                break
            if frame.__class__ is not MessageFrame:
                break
            assert isinstance(frame, MessageFrame)
            if frame.group_id is not None and cached_group(frame.group_id) is None:
                break
            batch.append(frame)
        return batch

    def _messages_soon(self, conn: Connection, session: Session, payloads: list[bytes]) -> int:
        """on_messages_nowait with a store that queues appends (Store.append_soon): the
        leading message frames are checked now and queued as one append; the sender's answers
        and the deliveries follow from the store's callback once the append is durable. While
        the store has no room this does nothing (the awaited path then waits for room)."""
        append_soon = self._append_soon
        if append_soon is None or not self._store_has_room():
            return 0
        batch = self._leading_messages(payloads)
        if not batch:
            return 0
        pending = self._begin_batch(conn, session, batch)
        if pending is None:
            return len(batch)

        def stored(results: list[Appended] | None, error: BaseException | None) -> None:
            if error is not None:
                log.error("storing %d message(s) failed: %s", len(pending.accepted), error)
            try:
                self._finish_batch(conn, session, pending, results)
            except Exception:
                log.exception("internal error answering stored messages")

        try:
            append_soon(pending.accepted, stored)
        except BaseException:
            self._sequencer.end(pending.conversations, ())
            raise
        return len(batch)

    def _direct_now(
        self,
        conn: Connection,
        session: Session,
        item: MessageFrame,
        append_now: Callable[[Sequence[NewMessage]], list[Appended]],
        now: float,
        timestamp: str,
    ) -> bool:
        """One 1:1 message, appended inline, answered and delivered: what _message_batch_now
        does with a batch of one, flattened (the hot path), the sequencer being idle (the
        caller checked). False, with nothing done, when it is not that case: a group or
        another senderId."""
        user = session.user_id
        sender_id = item.sender_id
        if item.group_id is not None or (sender_id is not None and sender_id != user):
            return False
        peer = item.recipient_id
        assert peer is not None
        conversation = self._direct_keys.get((user, peer)) or self._direct_key(user, peer)
        if not self.limiter.allow(user, now):
            self._send(
                conn, session, self._refuse(item, "rate_limited", "too many messages; slow down")
            )
            return True
        message = _new_message(session, item, conversation, timestamp)
        try:
            appended = append_now((message,))[0]
        except Exception:
            log.exception("storing 1 message failed")
            self._answer_batch(conn, session, [(message, ())], None, timestamp, [])
            return True
        done = appended.message
        if session.phase is not _CLOSING:
            if conn.outbox.push(
                encode_sent_frame(done.id, done.recipient_id, done.group_id, done.seq, timestamp)
            ):
                conn.flush_soon()
            else:
                self._slow(conn, session)
        if not appended.duplicate:
            self._sequencer.released(conversation, done.seq, now)
            self._release(done, (peer,) if peer == user else (peer, user), conn)
        return True

    def _begin_batch(
        self, conn: Connection, session: Session, batch: list[MessageFrame | MessageRefused]
    ) -> _Pending | None:
        """Check `batch` (groups from the router's cache) and give its deliveries their turn in
        the sequencer: what to store and to answer once stored. None when nothing is to be
        stored (the refusals were sent). Every _Pending must reach _finish_batch, or
        sequencer.end with no deliveries."""
        now = self.clock()
        timestamp = self._now_iso()
        entries, accepted = self._accept_batch(session, batch, now, timestamp)
        if not accepted:
            for entry in entries:
                assert isinstance(entry, bytes)
                self._send(conn, session, entry)
            return None
        conversations = self._conversations(accepted)
        self._sequencer.begin(conversations, now)
        return _Pending(entries, accepted, conversations, timestamp)

    def _finish_batch(
        self,
        conn: Connection,
        session: Session,
        pending: _Pending,
        results: list[Appended] | None,
    ) -> None:
        """Answer the sender (`failed` for all when `results` is None: the store failed), then
        release the new messages' deliveries; the batch's turn ends whatever happens."""
        deliveries: list[_Ready] = []
        try:
            self._answer_batch(
                conn, session, pending.entries, results, pending.timestamp, deliveries
            )
        finally:
            self._sequencer.end(pending.conversations, deliveries)

    async def _message_batch(
        self, conn: Connection, session: Session, batch: list[MessageFrame | MessageRefused]
    ) -> None:
        for item in batch:  # the groups into the router's cache: _accept_batch reads it
            if item.__class__ is MessageFrame:
                assert isinstance(item, MessageFrame)
                if item.group_id is not None:
                    await self.router.group(self.store, item.group_id)
        pending = self._begin_batch(conn, session, batch)
        if pending is None:
            return
        try:
            results: list[Appended] | None = await self.store.append_many(pending.accepted)
        except Exception:
            log.exception("storing %d message(s) failed", len(pending.accepted))
            results = None
        except BaseException:  # cancelled: nothing to answer, the turn ends
            self._sequencer.end(pending.conversations, ())
            raise
        self._finish_batch(conn, session, pending, results)

    def _message_batch_now(
        self,
        conn: Connection,
        session: Session,
        batch: list[MessageFrame | MessageRefused],
        append_now: Callable[[Sequence[NewMessage]], list[Appended]],
    ) -> None:
        """_message_batch with a store that appends without waiting, and every group of
        `batch` in the router's cache."""
        pending = self._begin_batch(conn, session, batch)
        if pending is None:
            return
        try:
            results: list[Appended] | None = append_now(pending.accepted)
        except Exception:
            log.exception("storing %d message(s) failed", len(pending.accepted))
            results = None
        self._finish_batch(conn, session, pending, results)

    @staticmethod
    def _conversations(accepted: list[NewMessage]) -> Sequence[str]:
        """Each conversation of `accepted` once, in order."""
        if len(accepted) == 1:
            return (accepted[0].conversation,)
        # no comprehension: it is a function call of its own in 3.11
        return list(dict.fromkeys([m.conversation for m in accepted]))

    def _accept_batch(
        self,
        session: Session,
        batch: list[MessageFrame | MessageRefused],
        now: float,
        timestamp: str,
    ) -> tuple[list[tuple[NewMessage, tuple[str, ...]] | bytes], list[NewMessage]]:
        """Check each message of `batch` (groups from the router's cache): per message the
        encoded `failed` receipt, or (message, audience) to store; and the messages to store."""
        entries: list[tuple[NewMessage, tuple[str, ...]] | bytes] = []
        accepted: list[NewMessage] = []
        user = session.user_id
        allow = self.limiter.allow
        direct_keys = self._direct_keys
        for item in batch:
            if item.__class__ is MessageFrame:
                assert isinstance(item, MessageFrame)
                sender_id = item.sender_id
                if item.group_id is None and (sender_id is None or sender_id == user):
                    # _check_message of a 1:1 message, inlined (the hot path)
                    peer = item.recipient_id
                    assert peer is not None
                    conversation = direct_keys.get((user, peer)) or self._direct_key(user, peer)
                    if not allow(user, now):
                        entries.append(
                            self._refuse(item, "rate_limited", "too many messages; slow down")
                        )
                        continue
                    message = _new_message(session, item, conversation, timestamp)
                    accepted.append(message)
                    entries.append((message, (peer,) if peer == user else (peer, user)))
                    continue
                if item.group_id is None:
                    entry = self._check_message(session, item, now, timestamp)
                else:
                    group = self.router.cached_group(item.group_id)
                    entry = self._check_message(session, item, now, timestamp, group)
                if entry.__class__ is not bytes:
                    assert isinstance(entry, tuple)
                    accepted.append(entry[0])
                entries.append(entry)
            else:
                assert isinstance(item, MessageRefused)
                entries.append(
                    encode_receipt_failed(
                        item.message_id,
                        item.code,
                        peer_id=item.peer_id,
                        group_id=item.group_id,
                        field=item.field,
                        detail=item.message,
                    )
                )
        return entries, accepted

    def _answer_batch(
        self,
        conn: Connection,
        session: Session,
        entries: list[tuple[NewMessage, tuple[str, ...]] | bytes],
        results: list[Appended] | None,
        timestamp: str,
        deliveries: list[_Ready],
    ) -> None:
        """The sender's answers in batch order (`sent`, or `failed` when `results` is None:
        the store failed); the new messages' deliveries go to `deliveries` for the sequencer."""
        stored = iter(results or ())
        outbox = conn.outbox
        flush = False
        for entry in entries:
            if entry.__class__ is bytes:
                assert isinstance(entry, bytes)
                self._send(conn, session, entry)
                continue
            assert isinstance(entry, tuple)
            message, audience = entry
            if results is None:
                self._send(
                    conn,
                    session,
                    encode_receipt_failed(
                        message.id,
                        "internal",
                        peer_id=message.recipient_id,
                        group_id=message.group_id,
                        detail="the message was not stored",
                    ),
                )
                continue
            appended = next(stored)
            done = appended.message
            # _send, inlined: pushed like a delivery, written at the end of the tick
            if session.phase is not _CLOSING:
                if outbox.push(
                    encode_sent_frame(
                        done.id, done.recipient_id, done.group_id, done.seq, timestamp
                    )
                ):
                    flush = True
                else:
                    self._slow(conn, session)
            if not appended.duplicate:
                deliveries.append((message.conversation, done.seq, done, audience, conn))
        if flush:
            conn.flush_soon()

    # --- receipts ---------------------------------------------------------------------------------
    async def _notify_senders(
        self,
        conversation: str,
        after: int,
        upto: int,
        reader: str,
        status: str,
        group_id: str | None,
    ) -> None:
        """Tell each sender whose messages in (after, upto] the reader's watermark now covers."""
        newest = await self.store.latest_by_sender(conversation, after, upto, reader)
        self._status_receipts(newest, reader, status, group_id)

    def _status_receipts(
        self, newest: list[StoredMessage], reader: str, status: str, group_id: str | None
    ) -> None:
        """A `status` receipt from `reader` to the sender of each of `newest` (each its
        sender's newest message the reader's watermark covers, as latest_by_sender gives)."""
        timestamp = self._now_iso()
        for message in newest:
            wire = _wire(
                encode_receipt_status(
                    message_id=message.id,
                    seq=message.seq,
                    status=status,
                    user_id=reader,
                    timestamp=timestamp,
                    peer_id=None if group_id is not None else reader,
                    group_id=group_id,
                )
            )
            self._to_users([message.sender_id], wire)

    async def _catch_up(self, conn: Connection, session: Session) -> None:
        """The receipts the peers' current watermarks give this user's messages, to this device
        (see the module doc). A failed read is logged: the next connection tries again."""
        user = session.user_id
        try:
            covered = await self.store.coverage(user, limit=self.config.receipt_catchup)
        except Exception:
            log.exception("receipt catch-up of %s failed", user)
            return
        if not covered or not session.active:
            return
        timestamp = self._now_iso()
        outbox = conn.outbox
        max_bytes = self.config.outbox_max_bytes // 2
        max_frames = self.config.outbox_max_frames // 2
        for coverage in covered:
            for status, message in (("delivered", coverage.delivered), ("read", coverage.read)):
                if message is None:
                    continue
                if outbox.pending_bytes >= max_bytes or outbox.pending_frames >= max_frames:
                    return  # never the cause of a slow-consumer close
                receipt = encode_receipt_status(
                    message_id=message.id,
                    seq=message.seq,
                    status=status,
                    user_id=coverage.reader,
                    timestamp=timestamp,
                    peer_id=None if coverage.group_id is not None else coverage.reader,
                    group_id=coverage.group_id,
                )
                if not self._send(conn, session, receipt):
                    return

    async def _on_receipt(self, conn: Connection, session: Session, frame: ReceiptFrame) -> None:
        user = session.user_id
        if frame.group_id is not None:
            group = await self._member_group(
                conn, session, frame.group_id, frame.ref, hide_unknown=True
            )
            if group is None:
                return
            conversation = group_conversation(frame.group_id)
        else:
            assert frame.peer_id is not None
            conversation = direct_conversation(user, frame.peer_id)
        last = await self.store.last_seq(conversation)
        if last == 0:
            self._error(
                conn,
                session,
                "forbidden",
                "no such conversation of yours",
                ref=frame.ref,
                field="peerId",
            )
            return
        seq = min(frame.seq, last)
        before = await self.store.mark_delivered(conversation, user, session.store_device, seq)
        if frame.status == "read":
            before_read = await self.store.mark_read(conversation, user, seq)
            if seq > before_read.read_seq:
                await self._notify_senders(
                    conversation, before_read.read_seq, seq, user, "read", frame.group_id
                )
                self._to_users(
                    [user],
                    _wire(
                        encode_receipt_status(
                            message_id=None,
                            seq=seq,
                            status="read",
                            user_id=user,
                            timestamp=self._now_iso(),
                            peer_id=frame.peer_id,
                            group_id=frame.group_id,
                        )
                    ),
                    exclude=conn,
                )
        elif seq > before.delivered_seq:
            await self._notify_senders(
                conversation, before.delivered_seq, seq, user, "delivered", frame.group_id
            )
        if session.backlog_need:
            if session.backlog_need.get(conversation, 0) <= seq:
                session.backlog_need.pop(conversation, None)
            if not session.backlog_need and session.backlog_waiting:
                await self._pump_backlog(conn, session)

    # --- presence ---------------------------------------------------------------------------------
    def _announce(self, user: str, json_bytes: bytes) -> None:
        """A presence frame about `user` to every connected contact of theirs (droppable)."""
        wire = _wire(json_bytes)
        audience = [u for u in self.presence.contacts_of(user) if self.router.is_connected(u)]
        self._to_users(audience, wire, droppable=True)

    def _announce_offline(self, user: str, left_at: str) -> None:
        self._announce(user, encode_status(user, "offline", self._now_iso(), last_seen=left_at))
        self.presence.forget(user)
        self._last_seen[user] = left_at

    def _on_status(self, conn: Connection, session: Session, frame: StatusFrame) -> None:
        user = session.user_id
        if frame.user_id is not None and frame.user_id != user:
            self._error(
                conn,
                session,
                "forbidden",
                "userId is not the authenticated user",
                ref=frame.ref,
                field="userId",
            )
            return
        self.presence.set_status(user, frame.status)
        self._announce(user, encode_status(user, frame.status, self._now_iso()))

    async def _on_presence(self, conn: Connection, session: Session, frame: PresenceFrame) -> None:
        offline = [u for u in frame.user_ids if not self.presence.is_online(u)]
        # lastSeen not yet written, taken before reading (the write may finish meanwhile)
        pending = {u: self._last_seen[u] for u in offline if u in self._last_seen}
        seen = await self.store.last_seen(offline) if offline else {}
        seen.update(pending)
        users = [
            (u, self.presence.status_of(u), None if self.presence.is_online(u) else seen.get(u))
            for u in frame.user_ids
        ]
        self._send(conn, session, encode_presence(users, ref=frame.ref))

    # --- typing -----------------------------------------------------------------------------------
    def _typing_audience(self, key: TypingKey) -> list[str]:
        if key.group_id is not None:
            group = self.router.cached_group(key.group_id)
            return [m for m in group.members if m != key.user_id] if group else []
        return [key.recipient_id] if key.recipient_id is not None else []

    def _send_typing(self, key: TypingKey, state: str) -> None:
        wire = _wire(encode_typing(key.user_id, state, group_id=key.group_id))
        self._to_users(self._typing_audience(key), wire, droppable=True)

    async def _on_typing(self, conn: Connection, session: Session, frame: TypingFrame) -> None:
        user = session.user_id
        if frame.group_id is not None:
            group = await self._member_group(
                conn, session, frame.group_id, frame.ref, hide_unknown=True
            )
            if group is None:
                return
        key = TypingKey(user, frame.recipient_id, frame.group_id)
        if frame.state == "start":
            forward = self.typing.start(key, self.clock())
        else:
            forward = self.typing.stop(key)
        if forward:
            self._send_typing(key, frame.state)

    # --- conversations and history ----------------------------------------------------------------
    async def _on_conversations(
        self, conn: Connection, session: Session, frame: ConversationsFrame
    ) -> None:
        summaries = await self.store.conversations(session.user_id, limit=frame.limit)
        items = []
        for summary in summaries:
            name = None
            if summary.group_id is not None:
                group = await self.router.group(self.store, summary.group_id)
                name = group.name if group else None
            items.append(conversation_item(summary, group_name=name))
        answer = encode_conversations(items, ref=frame.ref)
        budget = self.config.outbox_max_bytes // 2
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
        self._send(conn, session, answer)

    async def _on_history(self, conn: Connection, session: Session, frame: HistoryFrame) -> None:
        user = session.user_id
        if frame.group_id is not None:
            if await self._member_group(conn, session, frame.group_id, frame.ref) is None:
                return
            conversation = group_conversation(frame.group_id)
        else:
            assert frame.peer_id is not None
            conversation = direct_conversation(user, frame.peer_id)
        messages, has_more = await self.store.history(
            conversation, before=frame.before, after=frame.after, limit=frame.limit
        )
        statuses = await self._history_statuses(user, conversation, messages)
        page = encode_history(
            messages,
            has_more,
            peer_id=frame.peer_id,
            group_id=frame.group_id,
            ref=frame.ref,
            statuses=statuses,
        )
        budget = self.config.outbox_max_bytes // 2
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
        self._send(conn, session, page)

    async def _history_statuses(
        self, user: str, conversation: str, messages: Sequence[StoredMessage]
    ) -> list[str]:
        """The `status` of each message of a history page (see the module doc)."""
        statuses = ["delivered"] * len(messages)
        if not any(m.sender_id == user for m in messages):
            return statuses
        others = [
            w for u, w in (await self.store.member_watermarks(conversation)).items() if u != user
        ]
        if not others:
            return statuses  # a note to self, or a group of one
        delivered = min(w.delivered_seq for w in others)
        read = min(w.read_seq for w in others)
        for i, message in enumerate(messages):
            if message.sender_id == user:
                seq = message.seq
                statuses[i] = "read" if seq <= read else "delivered" if seq <= delivered else "sent"
        return statuses

    # --- groups -----------------------------------------------------------------------------------
    def _group_changed(
        self,
        conn: Connection,
        session: Session,
        group: Group,
        event: str,
        ref: str | None,
        also: Iterable[str] = (),
    ) -> None:
        """The `group` frame to every member and to `also` (those removed); `ref` to the asker."""
        self.router.put_group(group)
        wire = _wire(encode_group(group, event=event))
        audience = dict.fromkeys([*group.members, *also])
        self._to_users(audience, wire, exclude=conn)
        self._send(conn, session, encode_group(group, event=event, ref=ref))

    async def _member_group(
        self,
        conn: Connection,
        session: Session,
        group_id: str,
        ref: str | None,
        *,
        hide_unknown: bool = False,
    ) -> Group | None:
        """The group when the session's user is a member; else answers the error and returns None.
        An unknown group is `not_found`, or, with hide_unknown, the same `forbidden` a
        non-member gets."""
        group = await self.router.group(self.store, group_id)
        if group is None and not hide_unknown:
            self._error(conn, session, "not_found", "no such group", ref=ref, field="groupId")
            return None
        if group is None or session.user_id not in group.members:
            self._error(
                conn, session, "forbidden", "not a member of this group", ref=ref, field="groupId"
            )
            return None
        return group

    def _too_many(
        self, conn: Connection, session: Session, count: int, ref: str | None, field: str
    ) -> bool:
        if count <= self.config.max_group_members:
            return False
        self._error(
            conn,
            session,
            "invalid",
            f"a group has at most {self.config.max_group_members} members",
            ref=ref,
            field=field,
        )
        return True

    async def _on_group_create(
        self, conn: Connection, session: Session, frame: GroupCreateFrame
    ) -> None:
        user = session.user_id
        members = tuple(sorted({*frame.members, user}))
        if self._too_many(conn, session, len(members), frame.ref, "members"):
            return
        try:
            group = await self.store.create_group(
                Group(
                    group_id=frame.group_id,
                    name=frame.name,
                    members=members,
                    created_by=user,
                    created_at=self._now_iso(),
                )
            )
        except Conflict:
            self._error(
                conn, session, "invalid", "this group id is taken", ref=frame.ref, field="groupId"
            )
            return
        self.presence.link(group.members, group.members)
        self._group_changed(conn, session, group, "create", frame.ref)

    async def _on_group_add(self, conn: Connection, session: Session, frame: GroupAddFrame) -> None:
        group = await self._member_group(conn, session, frame.group_id, frame.ref)
        if group is None:
            return
        members = tuple(sorted({*group.members, *frame.user_ids}))
        if self._too_many(conn, session, len(members), frame.ref, "userIds"):
            return
        group = await self._set_members(conn, session, group, members, frame.ref)
        if group is None:
            return
        self.presence.link(frame.user_ids, group.members)
        self._group_changed(conn, session, group, "add", frame.ref)

    async def _on_group_remove(
        self, conn: Connection, session: Session, frame: GroupRemoveFrame
    ) -> None:
        user = session.user_id
        group = await self._member_group(conn, session, frame.group_id, frame.ref)
        if group is None:
            return
        if group.created_by != user and set(frame.user_ids) != {user}:
            self._error(
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

    async def _on_group_leave(
        self, conn: Connection, session: Session, frame: GroupLeaveFrame
    ) -> None:
        group = await self._member_group(conn, session, frame.group_id, frame.ref)
        if group is None:
            return
        await self._remove_members(conn, session, group, [session.user_id], "leave", frame.ref)

    async def _set_members(
        self,
        conn: Connection,
        session: Session,
        group: Group,
        members: Sequence[str],
        ref: str | None,
    ) -> Group | None:
        try:
            return await self.store.set_group_members(group.group_id, members)
        except NotFound:
            self.router.forget_group(group.group_id)
            self._error(conn, session, "not_found", "no such group", ref=ref, field="groupId")
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
        gone = set(removed)
        updated = await self._set_members(
            conn, session, group, [m for m in group.members if m not in gone], ref
        )
        if updated is None:
            return
        self._group_changed(conn, session, updated, event, ref, also=removed)
        for user in removed:
            for key in [k for k in self.typing.keys_of(user) if k.group_id == group.group_id]:
                if self.typing.stop(key):
                    self._send_typing(key, "stop")
            if self.presence.has_contacts(user) or any(
                self.presence.has_contacts(m) for m in updated.members
            ):
                still = await self.store.contacts(user)
                self.presence.unlink(user, [m for m in group.members if m not in still])

    # --- in-process publishing --------------------------------------------------------------------
    async def publish(
        self,
        *,
        sender_id: str,
        text: str,
        recipient_id: str | None = None,
        group_id: str | None = None,
        message_id: str | None = None,
        sender_name: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> StoredMessage:
        """Send a message as `sender_id` from inside the process (no connection).

        The same checks as a client's message (raises MessageRefused, a FrameError, with the
        receipt reason as `code`: invalid, too_long, not_found, forbidden) except the rate limit;
        the same store and delivery path (every live device of the recipients and of the
        sender). `message_id` defaults to a random one; publishing an id again returns the
        stored message without delivering it again.
        """
        if not isinstance(sender_id, str) or not sender_id:
            raise FrameError("invalid", "sender_id must be a non-empty string", field="senderId")
        mid = message_id if message_id is not None else secrets.token_hex(16)
        if not isinstance(mid, str) or not 1 <= len(mid) <= 64:
            raise FrameError("invalid", "message_id must be 1-64 characters", field="id")
        obj = {
            "text": text,
            "recipientId": recipient_id,
            "groupId": group_id,
            "senderId": sender_id,
            "senderName": sender_name,
            "meta": meta,
        }
        frame = validate_message(obj, self.limits, message_id=mid)
        if frame.group_id is not None:
            group = await self.router.group(self.store, frame.group_id)
            if group is None:
                raise MessageRefused(
                    "not_found",
                    "no such group",
                    message_id=mid,
                    field="groupId",
                    group_id=frame.group_id,
                )
            if sender_id not in group.members:
                raise MessageRefused(
                    "forbidden",
                    "the sender is not a member of this group",
                    message_id=mid,
                    field="groupId",
                    group_id=frame.group_id,
                )
            audience: tuple[str, ...] = group.members
            conversation = group_conversation(frame.group_id)
        else:
            assert frame.recipient_id is not None
            audience = tuple(dict.fromkeys((frame.recipient_id, sender_id)))
            conversation = direct_conversation(sender_id, frame.recipient_id)
        message = NewMessage(
            conversation=conversation,
            id=mid,
            sender_id=sender_id,
            text=frame.text,
            server_timestamp=self._now_iso(),
            recipient_id=frame.recipient_id,
            group_id=frame.group_id,
            sender_name=sender_name,
            meta=frame.meta,
        )
        deliveries: list[tuple[str, int, StoredMessage, Sequence[str], Connection | None]] = []
        self._sequencer.begin([conversation], self.clock())
        try:
            appended = (await self.store.append_many([message]))[0]
            if not appended.duplicate:
                deliveries.append(
                    (conversation, appended.message.seq, appended.message, audience, None)
                )
        finally:
            self._sequencer.end([conversation], deliveries)
        return appended.message
