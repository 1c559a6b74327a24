"""The backlog: what a device missed, sent after auth_ok in batches, before live delivery.

After auth_ok, store.undelivered for this device, oldest first, in batches of `backlog_batch`,
queued as the outbox drains (never filling more than half of it, so a backlog larger than the
outbox reaches a device that reads); the next batch is fetched once the previous one was marked
delivered (flushed for acks=false, acknowledged for acks=true), so an acks=true device that
stops acknowledging stops receiving until it acknowledges again. While the backlog runs, live
messages from others are not delivered (the backlog brings them in seq order); own messages
from the user's other devices wait in `held` and follow it.

A session's backlog (relay.core.backlog_state) moves through its transition table; the
session's `backlog` is None once it is done. READY and WAITING are where a fetch may start
(`Backlog.pump`): READY after auth_ok or once a fed batch asks for another, WAITING while the
last batch's marks are outstanding (acks=false: the flush, then `maintain()`; acks=true: the
acknowledgements, `Backlog.acknowledged`). A batch's Verdict DONE ends the backlog.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

from attrs import define, field

from relay.core.backlog_state import BacklogEvent, BacklogPhase, BacklogState
from relay.core.broker import queue_message
from relay.core.context import Context
from relay.core.due import Due
from relay.core.marks import DeliveryMarks
from relay.core.session import Session
from relay.fastpath import encode_delivery
from relay.ports import Connection
from relay.store.base import StoredMessage

log = logging.getLogger("relay.core")


_READY, _FETCHING, _FEEDING, _WAITING = BacklogPhase


class Verdict(enum.Enum):
    """What follows a fetched batch once all of it is queued."""

    DONE = "done"  # the backlog is over
    WAIT = "wait"  # for this batch to be marked delivered
    AGAIN = "again"  # fetch the next batch


@define(eq=False)
class Backlog:
    """The backlogs of every session; `ready` are those a `maintain()` pumps next."""

    _ctx: Context
    _marks: DeliveryMarks
    _finished: Callable[[Connection], None]  # a backlog ended: its receipt catch-up is due
    ready: Due = field(factory=Due)

    async def pump(self, conn: Connection, session: Session) -> None:
        """Fetch and queue batches until the backlog is done, or waits for a drain or marks."""
        backlog = session.backlog
        if backlog is None or backlog.phase not in (_READY, _WAITING):
            return
        try:
            await self._batches(conn, session, backlog)
        except Exception:
            # live messages from others keep waiting for the backlog: retry on the next maintain()
            log.exception("backlog of %s failed; retrying", session.user_id)
            if backlog.phase is _FETCHING:
                backlog.handle(BacklogEvent.FAILED)
            self.ready.add(conn)

    async def _batches(self, conn: Connection, session: Session, backlog: BacklogState) -> None:
        limit = self._ctx.config.backlog_batch
        backlog.handle(BacklogEvent.FETCH)
        while True:
            backlog.skipped = False
            batch = await self._ctx.store.undelivered(
                session.user_id, session.store_device, limit=limit
            )
            if not session.active:
                return
            # not what this connection has, nor what the device had flushed (marks not yet written)
            marked_upto = self._marks.marked_upto
            fresh = [
                m
                for m in batch
                if m.seq > session.sent_upto.get(m.conversation, 0)
                and m.seq > marked_upto(session, m.conversation)
            ]
            backlog.queue.extend(fresh)
            backlog.full = len(batch) >= limit
            backlog.fresh = bool(fresh)
            if not self._feed(conn, session, backlog):
                return  # closed
            if backlog.queue:
                backlog.handle(BacklogEvent.FED_PART)  # the rest is fed as the outbox drains
                return
            if self._conclude(conn, session, backlog) is not Verdict.AGAIN:
                return
            backlog.handle(BacklogEvent.AGAIN)

    def flushed(self, conn: Connection, session: Session, backlog: BacklogState) -> None:
        """Everything queued reached the kernel: feed the rest of the batch, or (acks=false)
        let maintain() fetch the next one once the marks are written."""
        if backlog.queue:
            if not self._feed(conn, session, backlog) or backlog.queue:
                return  # closed, or what was just queued must be flushed first
            if self._conclude(conn, session, backlog) is Verdict.AGAIN:
                backlog.handle(BacklogEvent.AGAIN)
                self.ready.add(conn)
            return
        if backlog.phase is _WAITING and not session.acks:
            backlog.need.clear()
            self.ready.add(conn)

    async def acknowledged(
        self, conn: Connection, session: Session, conversation: str, seq: int
    ) -> None:
        """An acks=true device acknowledged `seq` of `conversation`: once the whole batch is
        acknowledged, the next one is fetched."""
        backlog = session.backlog
        if backlog is None or not backlog.need:
            return
        if backlog.need.get(conversation, 0) <= seq:
            backlog.need.pop(conversation, None)
        if not backlog.need and backlog.phase is _WAITING:
            await self.pump(conn, session)

    def forget(self, conn: Connection, session: Session) -> None:
        """The connection closed: nothing of its backlog is sent any more."""
        self.ready.take(conn)
        session.backlog = None

    def _feed(self, conn: Connection, session: Session, backlog: BacklogState) -> bool:
        """Queue fetched messages while the outbox is under half full (one at least when it is
        empty). False when the connection was closed."""
        queue = backlog.queue
        outbox = conn.outbox
        ctx = self._ctx
        while queue:
            if outbox.pending_frames and not ctx.roomy(conn):
                return True
            message = queue.popleft()
            if backlog.held and not self._held_before(conn, session, backlog, message):
                queue.clear()
                return False
            if not queue_message(ctx, conn, session, message, encode_delivery(message)):
                queue.clear()
                return False
            ctx.stats.backlog_sent += 1
            if session.acks:
                backlog.need[message.conversation] = message.seq
        return True

    def _held_before(
        self, conn: Connection, session: Session, backlog: BacklogState, message: StoredMessage
    ) -> bool:
        """Queue the held own messages of `message`'s conversation that precede it: a device
        gets its conversation in seq order, so they go before (queued after it, they would be
        below `sent_upto` and lost). False when the connection was closed."""
        conversation = message.conversation
        seq = message.seq
        keep: list[tuple[StoredMessage, bytes]] = []
        ok = True
        for item in backlog.held:
            held = item[0]
            if ok and held.conversation == conversation and held.seq < seq:
                ok = queue_message(self._ctx, conn, session, held, item[1])
            else:
                keep.append(item)
        backlog.held = keep
        return ok

    def _conclude(self, conn: Connection, session: Session, backlog: BacklogState) -> Verdict:
        """A fetched batch is all queued: end the backlog, wait for its marks, or go again."""
        if not backlog.full:
            if backlog.skipped:
                return Verdict.AGAIN  # live messages arrived meanwhile: they are in the store now
            self._finish(conn, session, backlog)
            return Verdict.DONE
        unpersisted = not session.acks and self._marks.unpersisted(session)
        if backlog.fresh or session.pending_marks or backlog.need or unpersisted:
            backlog.handle(BacklogEvent.WAIT)
            if not session.acks and not session.pending_marks:
                self.ready.add(conn)  # flushed already: maintain() goes on
            return Verdict.WAIT
        # a whole batch of messages this connection already has, with nothing pending: the
        # store cannot tell us more; what remains comes with the next connection
        self._finish(conn, session, backlog)
        return Verdict.DONE

    def _finish(self, conn: Connection, session: Session, backlog: BacklogState) -> None:
        session.backlog = None
        self._finished(conn)
        for message, frame in backlog.held:
            if not queue_message(self._ctx, conn, session, message, frame):
                return
