"""What every concern of the core shares: settings, store, clocks, routing, and sending.

One `Context` per MessagingService; each concern (pipeline, backlog, receipts, groups, history,
presence, typing) holds it and nothing of the others but what it is handed. Its rate limiters
(per user: messages, group changes) are pruned by the service's tick. Sending rules:
- `send` queues a frame that must not be dropped: a full outbox closes the connection with
  1013 (`slow`), and what it missed stays in the store for its next connection;
- nothing is queued to a session once it is closing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from attrs import define, field

from relay.clock import WallClock, iso_utc
from relay.config import RelayConfig
from relay.core.attachments import FileCatalog
from relay.core.presence import PresenceTracker
from relay.core.ratelimit import RateLimiter
from relay.core.router import Router
from relay.core.session import Phase, Session
from relay.core.typing_state import TypingTracker
from relay.fastpath import OP_TEXT, encode_frame
from relay.metrics import Stats
from relay.ports import Connection
from relay.protocol import Limits, encode_error
from relay.store.base import Group, Store

CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN_LATER = 1013

_CLOSING = Phase.CLOSING


def wire(json_bytes: bytes) -> bytes:
    """One unfragmented WebSocket text frame around an encoded server frame."""
    return encode_frame(OP_TEXT, json_bytes)


@define(eq=False)
class Context:
    config: RelayConfig
    store: Store
    clock: Callable[[], float]  # monotonic: deadlines, grace, lapse, rate limits
    wall: WallClock  # timestamps on the wire and in the store
    limits: Limits
    router: Router = field(factory=Router)
    #: the relay's counters (relay.metrics); the service is handed the shell's (`instrument`)
    stats: Stats = field(factory=Stats)
    presence: PresenceTracker = field(init=False)
    typing: TypingTracker = field(init=False)
    limiter: RateLimiter = field(init=False)  # messages
    group_limiter: RateLimiter = field(init=False)  # group changes
    #: the files messages carry (relay.core.attachments): None where no file service runs, and
    #: a message with attachments is then refused
    files: FileCatalog | None = None
    _iso_ms: int = -1  # the wall-clock millisecond `_iso` was formatted for
    _iso: str = ""

    def __attrs_post_init__(self) -> None:
        config = self.config
        self.presence = PresenceTracker(config.presence_grace)
        self.typing = TypingTracker(config.typing_lapse, config.typing_rate_limit)
        self.limiter = RateLimiter(config.rate_limit_messages, config.rate_limit_burst)
        self.group_limiter = RateLimiter(config.group_rate_limit, config.group_rate_burst)

    def now_iso(self) -> str:
        """The wall clock as the protocol writes it (formatted once per millisecond)."""
        now = self.wall()
        millis = int(now * 1000)
        if millis != self._iso_ms:
            self._iso = iso_utc(now)
            self._iso_ms = millis
        return self._iso

    # --- sending ----------------------------------------------------------------------------------
    def send(self, conn: Connection, session: Session, json_bytes: bytes) -> bool:
        """Queue a frame that must not be dropped; a full outbox closes the connection (1013)."""
        return self.send_wire(conn, session, encode_frame(OP_TEXT, json_bytes))

    def send_wire(self, conn: Connection, session: Session, frame: bytes) -> bool:
        """`send` of an already framed server frame."""
        return self.send_wire_all(conn, session, (frame,))

    def send_wire_all(self, conn: Connection, session: Session, frames: Sequence[bytes]) -> bool:
        """Queue already framed server frames, in order, stopping at the first that does not
        fit (a full outbox closes the connection with 1013); nothing once it is closing. One call
        into the connection for all of them: a read's answers."""
        if session.phase is _CLOSING:
            return False
        if conn.send_all(frames):
            return True
        self.slow(conn, session)
        return False

    def slow(self, conn: Connection, session: Session) -> None:
        """The connection cannot take what it must: close it with 1013."""
        session.close()
        conn.close(CLOSE_TRY_AGAIN_LATER, "slow consumer")

    def error(
        self,
        conn: Connection,
        session: Session,
        code: str,
        message: str,
        *,
        ref: str | None = None,
        field: str | None = None,
    ) -> None:
        self.stats.error_frame(code)
        self.send(conn, session, encode_error(code, message, ref=ref, field=field))

    async def member_group(
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
            self.error(conn, session, "not_found", "no such group", ref=ref, field="groupId")
            return None
        if group is None or session.user_id not in group.members:
            self.error(
                conn, session, "forbidden", "not a member of this group", ref=ref, field="groupId"
            )
            return None
        return group

    def roomy(self, conn: Connection) -> bool:
        """Whether the outbox is under half full (by bytes and by frames): optional traffic
        (backlog batches, receipt catch-up) is queued only then, so it never makes a
        connection slow."""
        outbox = conn.outbox
        return (
            outbox.pending_bytes < self.config.outbox_max_bytes // 2
            and outbox.pending_frames < self.config.outbox_max_frames // 2
        )
