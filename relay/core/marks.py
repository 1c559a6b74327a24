"""Delivery marks: what acks=false devices had flushed to their sockets, on its way to the store.

A device with acks=false counts a message as delivered once its outbox was flushed to the
kernel. The shell's flush callback is synchronous, so the marks wait here until the next
`maintain()` writes them (relay.core.receipts). Invariants:
- a key (conversation, user, store device) holds the highest (seq, group id) flushed;
- a mark is in `_flushed` until a write takes it, then in `_persisting` until that write ended
  (written, or failed and dropped); a cancelled write puts what it did not write back;
- while a mark is in either, the store may not know it yet: the backlog skips what it covers
  (`marked_upto`) and waits for it before deciding it is done (`unpersisted`);
- a live 1:1 delivery's mark carries its message, whose sender is told at the flush
  (`note_flushed` returns it) rather than after the store write: in a 1:1 every message from
  others is the peer's, so the newest the mark covers is that message. At most once per
  (conversation, reader) between two `take()`s (a tick): a busy conversation's later marks
  are told by maintain()'s receipts, one per tick as before, which keeps the receipts of a
  conversation with many messages a second to about two a tick (with a receipt per flush,
  pairwise gave 2-5% fewer msg/s in four alternating runs). `_told[(conversation, reader)]`
  is the highest seq so told and `_told_tick[...]` the tick it was told in: two tables of
  ints, which the collector never walks (a tuple per entry, made anew at each telling, was a
  third of each young collection at 10,000 connections). Each seq is told once per reader
  (the first of the reader's devices to flush it), and maintain()'s receipts leave out what
  was told (`told_upto`). Both are bounded by TOLD_MAX entries (cleared when reached: a mark
  flushed again after that may be told twice, and a receipt repeated changes nothing, its
  status only moves forward).
- a queued mark (in `_flushed`, `_persisting`) holds no message: the store write needs only
  its seq, so a told message is freed at its flush rather than a tick later. Kept, each was
  one more object for the collector's young generation to walk and promote: at 10,000
  connections and 10k msg/s (bench `sparse`), four alternating runs each, the young
  collections' time in the measured window was 101-124 ms with it and 82-100 ms without.
"""

from __future__ import annotations

from attrs import define, field

from relay.core.session import Mark, Session
from relay.store.base import StoredMessage

#: (conversation, user, store device)
MarkKey = tuple[str, str, str]
#: the (conversation, reader) pairs whose senders were told at the flush, at most
TOLD_MAX = 100_000


@define(eq=False)
class DeliveryMarks:
    _flushed: dict[MarkKey, Mark] = field(factory=dict)
    _persisting: dict[MarkKey, Mark] = field(factory=dict)
    _told: dict[tuple[str, str], int] = field(factory=dict)
    _told_tick: dict[tuple[str, str], int] = field(factory=dict)
    _tick: int = 0  # take()s so far

    def __bool__(self) -> bool:
        """Whether marks wait to be written (not counting a write under way)."""
        return bool(self._flushed)

    def note_flushed(self, session: Session) -> list[StoredMessage]:
        """The session's pending marks reached the kernel: queue them for the store. Returns
        the live 1:1 messages whose senders are to be told now (see the module doc)."""
        marks = session.pending_marks
        flushed = self._flushed
        told = self._told
        told_tick = self._told_tick
        tick = self._tick
        user = session.user_id
        device = session.store_device
        tell: list[StoredMessage] = []
        for conversation, mark in marks.items():
            seq = mark[0]
            key = (conversation, user, device)
            known = flushed.get(key)
            message = mark[2]
            if known is None or known[0] < seq:
                flushed[key] = mark if message is None else (seq, mark[1], None)
            if message is not None:
                pair = (conversation, user)
                last = told.get(pair)
                if last is None or (last < seq and told_tick[pair] != tick):
                    if len(told) >= TOLD_MAX:
                        told.clear()
                        told_tick.clear()
                    told[pair] = seq
                    told_tick[pair] = tick
                    tell.append(message)
        marks.clear()
        return tell

    def told_upto(self, conversation: str, user: str) -> int:
        """The highest seq of `conversation` whose sender was told at the flush that `user`
        has it (0: none)."""
        return self._told.get((conversation, user), 0)

    def take(self) -> dict[MarkKey, Mark]:
        """The queued marks, now being written; the caller deletes each written (or dropped)
        key from the returned dict, and calls `done()` when the write ends."""
        self._persisting = self._flushed
        self._flushed = {}
        self._tick += 1
        return self._persisting

    def done(self) -> None:
        """The write ended: what it did not reach (cancelled) waits for the next one."""
        flushed = self._flushed
        for key, mark in self._persisting.items():
            known = flushed.get(key)
            if known is None or known[0] < mark[0]:
                flushed[key] = mark
        self._persisting = {}

    def marked_upto(self, session: Session, conversation: str) -> int:
        """The highest seq this device had flushed in `conversation` that the store may not
        know yet (0: none)."""
        if not self._flushed and not self._persisting:
            return 0
        key = (conversation, session.user_id, session.store_device)
        flushed = self._flushed.get(key)
        persisting = self._persisting.get(key)
        return max(flushed[0] if flushed else 0, persisting[0] if persisting else 0)

    def unpersisted(self, session: Session) -> bool:
        """Whether marks of this device were flushed but not yet written to the store."""
        return any(
            user == session.user_id and device == session.store_device
            for marks in (self._flushed, self._persisting)
            for _, user, device in marks
        )
