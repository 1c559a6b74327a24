"""Receipts: `delivered` and `read` watermarks, the receipts they cause, and their catch-up.

- A device with acks=true marks delivered with `delivered` (or `read`) receipts; a device with
  acks=false counts as delivered once its outbox was flushed (relay.core.marks), written by the
  next `maintain()` (within a tick). Either way the store records it, and each sender whose
  messages the reader's watermark newly covers gets a `receipt` (id and seq of its newest
  covered message, `userId` the reader); a `read` also reaches the reader's other devices.
  A live 1:1 message's sender is told at the recipient's flush (relay.core.marks), and
  `write_marks` leaves out what was told so.
- `delivered` receipts go out by `Connection.send_later`: with whatever the sender's
  connection writes next, within a tick (no socket write of their own); `read` ones at once.
  One told at the flush joins the sender's `sent`: the pipeline queues the answers after the
  deliveries, so the shell writes the recipient first. Measured at 10,000 connections each
  sending a message a second (sparse@10000, 2026-12-07, two alternating runs each): 2.61 ->
  1.79 socket writes, 72.2 -> 68.6 us of CPU and p99 1.93 -> 1.37 ms per message; at 1,000
  connections (ten a second each) and in pairwise, within the runs' spread (+1.5 us, -1%).
- Receipts are clamped to the conversation's last seq; one for a conversation the user is not
  in gets error `forbidden`; stale ones are ignored.
- Catch-up: once a device's backlog is done it gets the `delivered`/`read` receipts that the
  other participants' current watermarks give its user's messages (store.coverage: most
  recently active conversations first, at most `receipt_catchup` watermarks examined), while
  its outbox is at most half full (never the cause of a slow-consumer close). A watermark
  receipt is idempotent (status only moves forward), so one bounded store read per connect is
  cheaper than a per-device cursor written on every connect.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

from attrs import define, field

from relay.core.backlog import Backlog
from relay.core.broker import Broker, Deferring
from relay.core.context import Context
from relay.core.due import Due
from relay.core.marks import DeliveryMarks
from relay.core.session import Session
from relay.fastpath import encode_receipt_frame
from relay.ports import Connection
from relay.protocol import ReceiptFrame
from relay.store.base import (
    InlineAppend,
    StoredMessage,
    direct_conversation,
    group_conversation,
)

log = logging.getLogger("relay.core")

#: Delivery marks maintain() hands the store in one write (store.mark_delivered_many).
MARKS_PER_WRITE = 256
#: The same for a store whose calls complete without waiting (InlineAppend: MemoryStore).
#: Its write and read of a chunk run in one go, between two of maintain()'s pauses: 256 marks
#: held the event loop 1.5 ms (about 3 us a mark each way), which made sparse@1000's p99
#: 1.8 ms; 32 take about MAINTAIN_SLICE, and p99 was 0.7 ms (2026-12-07).
MARKS_PER_INLINE_WRITE = 32


@define(eq=False)
class Receipts:
    _ctx: Context
    _broker: Broker
    _marks: DeliveryMarks
    backlog: Backlog = field(init=False)  # set by the service once both exist
    due: Due = field(factory=Due)  # backlog done, catch-up not yet sent
    #: how `delivered` receipts reach their senders: with each sender connection's next write
    #: (relay.core.broker.Deferring) when the broker can, else at once
    _to_users_later: Callable[[Iterable[str], bytes], None] = field(init=False)
    #: marks to a store write (MARKS_PER_WRITE, or MARKS_PER_INLINE_WRITE)
    _per_write: int = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._per_write = (
            MARKS_PER_INLINE_WRITE if isinstance(self._ctx.store, InlineAppend) else MARKS_PER_WRITE
        )
        broker = self._broker
        self._to_users_later = (
            broker.to_users_later if isinstance(broker, Deferring) else broker.to_users
        )

    def catch_up_due(self, conn: Connection) -> None:
        """A backlog ended: its receipt catch-up is sent by auth or the next maintain()."""
        if self._ctx.config.receipt_catchup:
            self.due.add(conn)

    # --- frames -----------------------------------------------------------------------------------
    async def on_receipt(self, conn: Connection, session: Session, frame: ReceiptFrame) -> None:
        ctx = self._ctx
        store = ctx.store
        user = session.user_id
        if frame.group_id is not None:
            group = await ctx.member_group(
                conn, session, frame.group_id, frame.ref, hide_unknown=True
            )
            if group is None:
                return
            conversation = group_conversation(frame.group_id)
        else:
            assert frame.peer_id is not None
            conversation = direct_conversation(user, frame.peer_id)
        last = await store.last_seq(conversation)
        if last == 0:
            ctx.error(
                conn,
                session,
                "forbidden",
                "no such conversation of yours",
                ref=frame.ref,
                field="peerId",
            )
            return
        seq = min(frame.seq, last)
        before = await store.mark_delivered(conversation, user, session.store_device, seq)
        if frame.status == "read":
            before_read = await store.mark_read(conversation, user, seq)
            if seq > before_read.read_seq:
                await self._notify_senders(
                    conversation, before_read.read_seq, seq, user, "read", frame.group_id
                )
                self._broker.to_users(
                    [user],
                    encode_receipt_frame(
                        None, seq, "read", user, ctx.now_iso(), frame.peer_id, frame.group_id
                    ),
                    exclude=conn,
                )
        elif seq > before.delivered_seq:
            await self._notify_senders(
                conversation, before.delivered_seq, seq, user, "delivered", frame.group_id
            )
        await self.backlog.acknowledged(conn, session, conversation, seq)

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
        newest = await self._ctx.store.latest_by_sender(conversation, after, upto, reader)
        self.status_receipts(newest, reader, status, group_id)

    def status_receipts(
        self,
        newest: list[StoredMessage],
        reader: str,
        status: str,
        group_id: str | None,
        timestamp: str | None = None,
    ) -> None:
        """A `status` receipt from `reader` to the sender of each of `newest` (each its
        sender's newest message the reader's watermark covers, as latest_by_sender gives),
        stamped `timestamp` (default: now)."""
        if timestamp is None:
            timestamp = self._ctx.now_iso()
        # `delivered` rides the sender's next write: measured at 1,000 connections and one
        # message per wake-up, a receipt of its own was 0.6 socket writes per message more
        send = self._to_users_later if status == "delivered" else self._broker.to_users
        for message in newest:
            frame = encode_receipt_frame(
                message.id,
                message.seq,
                status,
                reader,
                timestamp,
                None if group_id is not None else reader,
                group_id,
            )
            send([message.sender_id], frame)

    # --- maintain() -------------------------------------------------------------------------------
    async def write_marks(self, breathe: Callable[[], Awaitable[None]]) -> None:
        """One pass over the delivery marks queued so far, `_per_write` to a store write,
        and the `delivered` receipts of the watermarks they moved. Marks flushed during it (its
        pauses, the store's awaits) wait for the next pass, so a pass ends however busy the
        relay is and each write batches a tick's worth of flushes."""
        store = self._ctx.store
        marks = self._marks.take()
        try:
            pending = list(marks.items())
            per_write = self._per_write
            for start in range(0, len(pending), per_write):
                chunk = pending[start : start + per_write]
                await breathe()  # before the write: a chunk cancelled here stays in `marks`
                try:
                    befores = await store.mark_delivered_many(
                        [(c, user, device, seq) for (c, user, device), (seq, _, _) in chunk]
                    )
                except Exception:
                    log.exception("recording %d deliveries failed", len(chunk))
                    for key, _mark in chunk:
                        del marks[key]
                    continue
                # receipts to the senders whose messages the moved watermarks now cover, but for
                # what the flush told them already (core.marks)
                told_upto = self._marks.told_upto
                moved = [
                    (conversation, before.delivered_seq, seq, user, group_id)
                    for ((conversation, user, _device), (seq, group_id, _)), before in zip(
                        chunk, befores, strict=True
                    )
                    if seq > before.delivered_seq and told_upto(conversation, user) < seq
                ]
                try:
                    newest = await store.latest_by_sender_many(
                        [(c, after, upto, user) for c, after, upto, user, _ in moved]
                    )
                except Exception:  # the marks stand; the receipts come with the catch-up of the
                    # senders' next connections
                    log.exception("finding the senders of %d deliveries failed", len(moved))
                else:
                    # one stamp per chunk: the chunk's marks were flushed within one tick
                    timestamp = self._ctx.now_iso()
                    for (_c, _a, _u, user, group_id), messages in zip(moved, newest, strict=True):
                        await breathe()
                        self.status_receipts(messages, user, "delivered", group_id, timestamp)
                for key, _mark in chunk:
                    del marks[key]
        finally:
            self._marks.done()

    async def catch_up_all(self, breathe: Callable[[], Awaitable[None]]) -> None:
        """The catch-ups due, once each; those not reached (cancelled) wait for the next call."""
        await self.due.run(self.catch_up, breathe)

    async def catch_up(self, conn: Connection, session: Session) -> None:
        """The receipts the peers' current watermarks give this user's messages, to this device
        (see the module doc). A failed read is logged: the next connection tries again."""
        ctx = self._ctx
        user = session.user_id
        try:
            covered = await ctx.store.coverage(user, limit=ctx.config.receipt_catchup)
        except Exception:
            log.exception("receipt catch-up of %s failed", user)
            return
        if not covered or not session.active:
            return
        timestamp = ctx.now_iso()
        for coverage in covered:
            for status, message in (("delivered", coverage.delivered), ("read", coverage.read)):
                if message is None:
                    continue
                if not ctx.roomy(conn):
                    return  # never the cause of a slow-consumer close
                receipt = encode_receipt_frame(
                    message.id,
                    message.seq,
                    status,
                    coverage.reader,
                    timestamp,
                    None if coverage.group_id is not None else coverage.reader,
                    coverage.group_id,
                )
                if not ctx.send_wire(conn, session, receipt):
                    return
