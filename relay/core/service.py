"""MessagingService: the messaging core, the ConnectionHandler the shell drives (relay.ports).

It imports no trio: the shell calls `on_open`, `on_messages_nowait` (in its poller), awaits
`on_messages`, calls `on_flushed`/`on_close`, calls `tick(now)` about every 250 ms and awaits
`maintain()` about as often. Each concern is a part of its own (relay/core/*.py): the message
pipeline, the backlog, receipts, groups, history, presence (status), typing (indicators); this
module only routes to them: frame type -> handler, by the table `_handlers`.

Session: the first frame must be `auth` within `auth_timeout` (else close 1008); any other
valid frame before it gets error `unauthenticated` (the connection stays); a failed auth gets
error `auth_failed`, then close 1008. A second `auth` on an active connection gets `invalid`.
An unexpected exception while handling one frame is logged and answered with error `internal`;
the connection stays. The contract is documented in docs/PROTOCOL.md.

Logs (relay.logs): a refused sign-in is one INFO line on `relay.auth` (the reason word of
relay_auth_failures_total and the relay's own message; never the token); a session's first
malformed frame (bad_json, bad_frame, unknown_type, invalid) is one INFO line on `relay.core`
(code and field, never the frame), later ones DEBUG, so that a client cannot flood the log;
a sign-in is DEBUG. None of them carries a traceback: they are the client's mistakes.
Metrics (relay.metrics.Stats, `instrument`): users and devices online, auth failures by reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from attrs import define, field

from relay.auth import Authenticator, AuthRefused, authenticator_from_config
from relay.clock import WallClock
from relay.config import RelayConfig
from relay.core.backlog import Backlog
from relay.core.backlog_state import BacklogState
from relay.core.broker import Broker, Joining, LocalBroker
from relay.core.calls import Calls, RoutesCalls
from relay.core.context import CLOSE_INTERNAL, CLOSE_POLICY, Context
from relay.core.groups import Groups
from relay.core.history import History
from relay.core.indicators import Indicators
from relay.core.keys import Keys
from relay.core.marks import DeliveryMarks
from relay.core.pipeline import Item, Pipeline
from relay.core.receipts import Receipts
from relay.core.search import Search
from relay.core.session import ANONYMOUS_DEVICE, Event, Phase, Session
from relay.core.status import Status
from relay.errors import FrameError
from relay.files.tokens import HttpTokens
from relay.health import HealthReporting
from relay.ice import ice_servers
from relay.metrics import Instrumented, RelayMetrics
from relay.ports import Connection
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
    SearchFrame,
    StatusFrame,
    TypingFrame,
    encode_auth_ok,
    encode_error,
    encode_pong,
    parse_client_frame,
)
from relay.protocol.calls import (
    CallAcceptFrame,
    CallEndFrame,
    CallInviteFrame,
    CallRejectFrame,
    CallSignalFrame,
)
from relay.protocol.keys import KeysGetFrame, KeysPublishFrame
from relay.store.base import Store, StoredMessage

log = logging.getLogger("relay.core")
auth_log = logging.getLogger("relay.auth")

#: The longest stretch of maintain() work between two of its pauses, s.
MAINTAIN_SLICE = 0.0002
#: bound of the devices this process registered in the store (cleared when reached)
REGISTERED_MAX = 100_000
_monotonic = time.monotonic

_ACTIVE = Phase.ACTIVE
_CLOSING = Phase.CLOSING

#: a frame handler of an active session
Handler = Callable[[Connection, Session, Any], Coroutine[Any, Any, None] | None]


@define(init=False, eq=False)
class MessagingService:
    """The messaging core; see the module docstring for the behaviour it guarantees."""

    ctx: Context
    authenticator: Authenticator
    pipeline: Pipeline
    backlog: Backlog
    receipts: Receipts
    groups: Groups
    history: History
    search: Search
    http_tokens: HttpTokens  # the sessions' httpToken (contract v2), for /files
    status: Status
    indicators: Indicators
    calls: Calls
    keys: Keys
    _marks: DeliveryMarks
    _handlers: dict[type, Handler]
    _awaiting: dict[int, Connection] = field(factory=dict)  # not yet authenticated
    _registered: set[tuple[str, str]] = field(factory=set)  # devices registered in the store
    _maintaining: bool = False
    _manage_store: bool = True
    _violators: set[int] = field(factory=set)  # connections whose malformed frame was logged
    broker: Broker | None = None
    _joining: Joining | None = None
    _health: list[HealthReporting] = field(factory=list)

    def __init__(
        self,
        config: RelayConfig,
        store: Store,
        *,
        authenticator: Authenticator | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: WallClock = time.time,
        manage_store: bool = True,
        broker: Callable[[Context], Broker] | None = None,
    ) -> None:
        ctx = self.ctx = Context(config, store, clock, wall, Limits.from_config(config))
        # None: what the config asks for (token auth when a key is configured, else trusting)
        self.authenticator = (
            authenticator if authenticator is not None else authenticator_from_config(config)
        )
        # `broker`: how this node reaches devices; LocalBroker alone for one node
        port = self.broker = LocalBroker(ctx) if broker is None else broker(ctx)
        self._joining = port if isinstance(port, Joining) else None
        self._marks = DeliveryMarks()
        self.status = Status(ctx, port)
        self.indicators = Indicators(ctx, port)
        self.groups = Groups(ctx, port, self.indicators)
        self.history = History(ctx)
        self.search = Search(ctx)
        self.http_tokens = HttpTokens(config.http_token_ttl, clock)
        self.receipts = Receipts(ctx, port, self._marks)
        self.backlog = self.receipts.backlog = Backlog(ctx, self._marks, self.receipts.catch_up_due)
        self.pipeline = Pipeline(ctx, port)
        self._health = [p for p in (store, port) if isinstance(p, HealthReporting)]
        if self._health:  # else nothing to ask per message
            self.pipeline.health = self.problem
        self.calls = Calls(ctx, self.pipeline.publish)
        if isinstance(port, RoutesCalls):  # several nodes: callee devices on other nodes
            self.calls.routing = port.call_routing(self.calls)
        self.keys = Keys(ctx)
        self._awaiting = {}
        self._registered = set()
        self._violators = set()
        self._maintaining = False
        self._manage_store = manage_store
        self._handlers = {
            ReceiptFrame: self.receipts.on_receipt,
            TypingFrame: self.indicators.on_typing,
            StatusFrame: self.status.on_status,
            PresenceFrame: self.status.on_presence,
            ConversationsFrame: self.history.on_conversations,
            HistoryFrame: self.history.on_history,
            GroupCreateFrame: self.groups.on_create,
            GroupAddFrame: self.groups.on_add,
            GroupRemoveFrame: self.groups.on_remove,
            GroupLeaveFrame: self.groups.on_leave,
            PingFrame: self._on_ping,
            CallInviteFrame: self.calls.on_invite,
            CallAcceptFrame: self.calls.on_accept,
            CallRejectFrame: self.calls.on_reject,
            CallEndFrame: self.calls.on_end,
            CallSignalFrame: self.calls.on_signal,
            KeysPublishFrame: self.keys.on_publish,
            KeysGetFrame: self.keys.on_get,
            SearchFrame: self.search.on_search,
        }

    def problem(self) -> str | None:
        """relay.health.HealthReporting: why this node cannot take messages now (its store or
        its broker lost PostgreSQL or Redis), None while it can."""
        for part in self._health:
            problem = part.problem()
            if problem is not None:
                return problem
        return None

    @property
    def store(self) -> Store:
        return self.ctx.store

    @property
    def config(self) -> RelayConfig:
        return self.ctx.config

    # --- metrics (relay.metrics.Instrumented) ----------------------------------------------------
    def instrument(self, metrics: RelayMetrics) -> None:
        """Count into the relay's metrics from now on (and have the store do so)."""
        self.ctx.stats = metrics.stats
        store = self.ctx.store
        if isinstance(store, Instrumented):
            store.instrument(metrics)

    # --- lifecycle (relay.ports.Lifecycle) --------------------------------------------------------
    async def start(self) -> None:
        """Open the store, unless `manage_store=False` (its owner opens and closes it)."""
        if self._manage_store:
            await self.ctx.store.open()

    async def aclose(self) -> None:
        """Write what is pending (delivery marks, lastSeen), then close the store (unless
        `manage_store=False`)."""
        await self.maintain()
        if self._manage_store:
            await self.ctx.store.close()

    # --- ConnectionHandler ------------------------------------------------------------------------
    def on_open(self, conn: Connection) -> None:
        conn.state = Session(auth_deadline=self.ctx.clock() + self.ctx.config.auth_timeout)
        self._awaiting[conn.id] = conn

    def on_messages_nowait(self, conn: Connection, payloads: list[bytes]) -> int:
        """relay.ports.InlineHandler: the leading message frames of an active session's read,
        through the pipeline's inline entry."""
        session = conn.state
        if session.__class__ is not Session or session.phase is not _ACTIVE:
            return 0
        try:
            return self.pipeline.inline(conn, session, payloads)
        except Exception:
            log.exception("internal error handling messages")
            self.ctx.error(conn, session, "internal", "internal error")
            return len(payloads)

    async def on_messages(self, conn: Connection, payloads: list[bytes]) -> None:
        session = conn.state
        if session.__class__ is not Session:
            return
        ctx = self.ctx
        limits = ctx.limits
        batch: list[Item] = []
        for payload in payloads:
            if session.phase is _CLOSING:
                return
            try:
                frame: ClientFrame = parse_client_frame(payload, limits)
            except MessageRefused as refused:
                if session.active:
                    batch.append(refused)
                else:
                    ctx.error(
                        conn, session, "unauthenticated", "authenticate first", ref=refused.ref
                    )
                continue
            except FrameError as exc:
                if batch:
                    await self._messages(conn, session, batch)
                    batch = []
                self._on_frame_error(conn, session, exc)
                continue
            if frame.__class__ is MessageFrame and session.phase is _ACTIVE:
                batch.append(frame)
                continue
            if batch:
                await self._messages(conn, session, batch)
                batch = []
                if session.closing:
                    return
            try:
                await self._dispatch(conn, session, frame)
            except Exception:
                log.exception("internal error handling a %s frame", type(frame).__name__)
                ctx.error(conn, session, "internal", "internal error", ref=frame.ref)
        if batch and session.phase is not _CLOSING:
            await self._messages(conn, session, batch)

    def on_flushed(self, conn: Connection) -> None:
        session = conn.state
        if session.__class__ is not Session or session.phase is not _ACTIVE:
            return
        if conn.outbox.pending_frames:
            return  # frames queued after this flush began: their marks wait for the next one
        if session.pending_marks:
            tell = self._marks.note_flushed(session)
            if tell:
                self.receipts.status_receipts(tell, session.user_id, "delivered", None)
        backlog = session.backlog
        if backlog is not None:
            self.backlog.flushed(conn, session, backlog)

    def on_close(self, conn: Connection, code: int) -> None:
        session = conn.state
        if not isinstance(session, Session):
            return
        self._awaiting.pop(conn.id, None)
        self._violators.discard(conn.id)
        self.receipts.due.take(conn)
        self.calls.dropped(conn)
        was_registered = session.registered
        self.http_tokens.release(conn.id, self.ctx.clock())  # valid http_token_ttl longer
        session.close()  # not flushed: those messages stay undelivered
        session.registered = False
        self.backlog.forget(conn, session)
        if not was_registered:
            return
        ctx = self.ctx
        user = session.user_id
        remaining = ctx.router.remove(user, conn)
        stats = ctx.stats
        stats.devices_online -= 1
        if not remaining:
            stats.users_online -= 1
        left_at = ctx.now_iso()
        offline_now = ctx.presence.disconnect(user, ctx.clock(), left_at)  # counts every one
        if remaining:
            return
        if self._joining is not None:
            self._joining.left(user)
        self.indicators.user_left(user)
        if offline_now:
            self.status.offline(user, left_at)

    def tick(self, now: float) -> None:
        # A connection whose frames wait in the shell's line is not late: its `auth` may be
        # among them (a reconnect storm's sign-ins wait there, in order).
        expired = [
            c for c in self._awaiting.values() if c.state.auth_expired(now) and not c.input_queued
        ]
        for conn in expired:
            self._awaiting.pop(conn.id, None)
            conn.state.close()
            self._log_refusal(conn, "timeout", "authentication timeout", None)
            conn.close(CLOSE_POLICY, "authentication timeout")
        for user, seen in self.ctx.presence.expired(now):
            self.status.offline(user, seen)
        self.indicators.lapse(now)
        self.ctx.limiter.prune(now)
        self.ctx.group_limiter.prune(now)
        self.pipeline.prune(now)
        self.calls.tick()
        self.http_tokens.prune(now)

    async def maintain(self, pause: Callable[[], Awaitable[None]] | None = None) -> None:
        """relay.ports.Maintained: store work the sync callbacks queued — delivery marks of
        flushed frames (and the receipts they cause), lastSeen of users gone offline, backlog
        batches waiting for those marks, receipt catch-ups of finished backlogs. Safe to call
        concurrently; cheap when there is nothing to do.

        `pause` (the shell passes one that lets its other tasks run) is awaited whenever
        MAINTAIN_SLICE of this work has gone by without one, so a tick's worth of marks and
        receipts never stalls live traffic for longer than that (an in-memory store's calls
        return without yielding)."""
        if self._maintaining:
            return
        self._maintaining = True
        resume_at = _monotonic() + MAINTAIN_SLICE

        async def breathe() -> None:
            nonlocal resume_at
            if pause is not None and _monotonic() >= resume_at:
                await pause()
                resume_at = _monotonic() + MAINTAIN_SLICE

        try:
            await self.receipts.write_marks(breathe)
            await self.status.write_last_seen(breathe)
            # backlogs waiting for the marks this call wrote; one that fails or waits again is
            # retried by the next call
            await self.backlog.ready.run(self.backlog.pump, breathe)
            # after the pumps: the backlogs they finished are caught up in this call
            await self.receipts.catch_up_all(breathe)
            await self.calls.store_records(breathe)
        finally:
            self._maintaining = False

    async def publish(self, *args: Any, **message: Any) -> StoredMessage:
        """relay.ports.Publisher: see Pipeline.publish."""
        return await self.pipeline.publish(*args, **message)

    # --- routing ----------------------------------------------------------------------------------
    async def _messages(self, conn: Connection, session: Session, batch: list[Item]) -> None:
        try:
            await self.pipeline.frames(conn, session, batch)
        except Exception:
            log.exception("internal error handling messages")
            self.ctx.error(conn, session, "internal", "internal error")

    async def _dispatch(self, conn: Connection, session: Session, frame: ClientFrame) -> None:
        if frame.__class__ is AuthFrame:
            assert isinstance(frame, AuthFrame)
            await self._on_auth(conn, session, frame)
            return
        if not session.active:
            self.ctx.error(conn, session, "unauthenticated", "authenticate first", ref=frame.ref)
            return
        # MessageFrame is batched by on_messages and has no entry: a KeyError here is a bug
        done = self._handlers[frame.__class__](conn, session, frame)
        if done is not None:
            await done

    def _on_frame_error(self, conn: Connection, session: Session, exc: FrameError) -> None:
        if exc.code == "auth_failed" and not session.active:
            self._fail_auth(conn, session, exc.message, "invalid_frame", field=exc.field)
            return
        code = "invalid" if exc.code == "auth_failed" else exc.code
        self._log_violation(conn, code, exc.field)
        self.ctx.error(conn, session, code, exc.message, ref=exc.ref, field=exc.field)

    def _on_ping(self, conn: Connection, session: Session, frame: PingFrame) -> None:
        self.ctx.send(conn, session, encode_pong(self.ctx.now_iso(), ref=frame.ref))

    # --- auth -------------------------------------------------------------------------------------
    def _log_violation(self, conn: Connection, code: str, field: str | None) -> None:
        """A malformed frame: INFO for a connection's first, DEBUG after (see the module doc)."""
        first = conn.id not in self._violators
        level = logging.INFO if first else logging.DEBUG
        if not log.isEnabledFor(level):
            return
        self._violators.add(conn.id)
        log.log(
            level,
            "connection %d sent a malformed frame: %s%s",
            conn.id,
            code,
            f" ({field})" if field else "",
            extra={"conn": conn.id, "peer": conn.remote, "code": code, "field": field},
        )

    def _log_refusal(self, conn: Connection, reason: str, message: str, user: str | None) -> None:
        """A refused sign-in: counted by reason, and one INFO line (never the token)."""
        self.ctx.stats.auth_failed(reason)
        if auth_log.isEnabledFor(logging.INFO):
            auth_log.info(
                "connection %d from %s: sign-in refused (%s): %s",
                conn.id,
                conn.remote,
                reason,
                message,
                extra={"conn": conn.id, "peer": conn.remote, "user": user, "reason": reason},
            )

    def _fail_auth(
        self,
        conn: Connection,
        session: Session,
        message: str,
        reason: str,
        *,
        field: str | None = None,
        user: str | None = None,
    ) -> None:
        self._log_refusal(conn, reason, message, user)
        self.ctx.stats.error_frame("auth_failed")
        self._awaiting.pop(conn.id, None)
        self.ctx.send(conn, session, encode_error("auth_failed", message, field=field))
        session.close()
        conn.close(CLOSE_POLICY, "authentication failed")

    async def _on_auth(self, conn: Connection, session: Session, frame: AuthFrame) -> None:
        ctx = self.ctx
        if session.phase is not Phase.AWAITING_AUTH:
            ctx.error(
                conn, session, "invalid", "already authenticated", ref=frame.ref, field="type"
            )
            return
        session.handle(Event.AUTH_BEGIN)
        try:
            user = await self.authenticator.authenticate(frame)
        except FrameError as exc:
            if not session.closing:
                reason = exc.reason if isinstance(exc, AuthRefused) else "refused"
                self._fail_auth(
                    conn, session, exc.message, reason, field=exc.field, user=frame.user_id
                )
            return
        except Exception:
            log.exception("authenticator failed")
            if not session.closing:
                self._log_refusal(conn, "unavailable", "authenticator failed", frame.user_id)
                self._awaiting.pop(conn.id, None)
                ctx.send(conn, session, encode_error("internal", "authentication unavailable"))
                session.close()
                conn.close(CLOSE_INTERNAL, "authentication unavailable")
            return
        try:
            await self._register(user, frame)
        except Exception:
            if not session.closing:
                session.handle(Event.AUTH_RETRY)  # the client may try again
            raise
        if self._joining is not None:
            await self._joining.joined(user)  # before the backlog is read
        if session.closing:
            return
        # Counted here, with no await before router.add: concurrent auths cannot all pass.
        devices = len(ctx.router.table().get(user, ()))
        if devices >= ctx.config.max_devices_per_user:
            self._fail_auth(
                conn,
                session,
                f"too many connections for this user: {devices} are signed in "
                f"(max_devices_per_user {ctx.config.max_devices_per_user})",
                "too_many_devices",
                user=user,
            )
            return
        self._awaiting.pop(conn.id, None)
        conn.authenticated()
        session.activate(
            user,
            BacklogState(),
            device_id=frame.device_id,
            acks=frame.acks,
            user_name=frame.user_name,
            user_avatar=frame.user_avatar,
        )
        stats = ctx.stats
        stats.devices_online += 1
        if ctx.router.add(user, conn) == 1:
            stats.users_online += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "connection %d signed in as %s",
                conn.id,
                user,
                extra={
                    "conn": conn.id,
                    "peer": conn.remote,
                    "user": user,
                    "device": frame.device_id,
                },
            )
        announce = ctx.presence.connect(user)
        ctx.send(
            conn,
            session,
            encode_auth_ok(
                user,
                session.device_id,
                session.session_id,
                ctx.now_iso(),
                ice_servers=ice_servers(ctx.config, user, ctx.wall()),
                http_token=self.http_tokens.issue(user, conn.id),
            ),
        )
        if announce:
            self.status.online(user)
        if self._marks:
            await self.maintain()  # this device's marks from an earlier connection first
        await self.backlog.pump(conn, session)
        if self.receipts.due.take(conn):  # the backlog is done already
            await self.receipts.catch_up(conn, session)

    async def _register(self, user: str, frame: AuthFrame) -> None:
        """The user's contacts into presence, and the device into the store: it is owed what
        is accepted from now on, even what its user's other devices have delivered before it
        comes back (registered before it can miss anything)."""
        ctx = self.ctx
        presence = ctx.presence
        if not presence.has_contacts(user):
            contacts = await ctx.store.contacts(user)
            if not presence.has_contacts(user):
                presence.set_contacts(user, contacts)
        device = (user, frame.device_id if frame.device_id is not None else ANONYMOUS_DEVICE)
        if device not in self._registered:
            await ctx.store.register_device(*device)
            if len(self._registered) >= REGISTERED_MAX:
                self._registered.clear()
            self._registered.add(device)
