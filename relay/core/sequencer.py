"""The sequencer: live deliveries released in seq order per conversation.

A store assigns seqs in its acceptance order, which need not be the order appends were called
in, and concurrent callers resume in any order; the sequencer holds a delivery back until every
lower seq of its conversation was released (or can no longer come), so every device sees a
conversation in seq order.

It hands the broker runs, not single messages: the consecutive deliveries of one conversation
to one audience that are released together (a read's several messages to one peer), so the
broker looks the audience's devices up once per run rather than once per message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

from attrs import define, field

from relay.ports import Connection
from relay.rounds import Rounds
from relay.store.base import StoredMessage

log = logging.getLogger("relay.core")

#: a live delivery waiting for its turn: (message, audience, connection left out)
Delivery = tuple[StoredMessage, Sequence[str], Connection | None]
#: a stored message ready for the sequencer: (conversation, seq, message, audience, left out)
Ready = tuple[str, int, StoredMessage, Sequence[str], Connection | None]
#: how the sequencer releases a run: (one conversation's messages in seq order, audience, left out)
Release = Callable[[Sequence[StoredMessage], Sequence[str], Connection | None], None]


#: a conversation's last released seq is forgotten after this long without appends
SEQUENCER_IDLE = 60.0


@define
class Sequencer:
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
    - released deliveries reach `_release` in release order, as runs: consecutive deliveries
      of one conversation, audience and left-out connection go in one call.
    """

    _release: Release
    _inflight: dict[str, int] = field(factory=dict)
    _released: dict[str, int] = field(factory=dict)
    _held: dict[str, dict[int, Delivery]] = field(factory=dict)
    _used: dict[str, float] = field(factory=dict)
    _rounds: Rounds[str] = field(factory=Rounds, init=False)

    def begin(self, conversations: Iterable[str], now: float) -> None:
        inflight = self._inflight
        used = self._used
        for conversation in conversations:
            inflight[conversation] = inflight.get(conversation, 0) + 1
            used[conversation] = now

    def end(
        self,
        conversations: Iterable[str],
        deliveries: Iterable[Ready],
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
        ready: list[Ready] = []
        for delivery in deliveries:
            conversation, seq, message, audience, exclude = delivery
            # the common case, decided at once: the next seq of a conversation holding nothing
            if conversation not in held and released.get(conversation, 0) == seq - 1:
                released[conversation] = seq
                ready.append(delivery)
                continue
            held.setdefault(conversation, {})[seq] = (message, audience, exclude)
        if ready:
            self._release_runs(ready)
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
        ready: list[Ready] = []
        for seq in order:
            message, audience, exclude = held.pop(seq)
            last = seq if last is None else max(last, seq)
            ready.append((conversation, seq, message, audience, exclude))
        if ready:
            self._release_runs(ready)
        if last is not None:
            self._released[conversation] = last
        if not held:
            del self._held[conversation]

    def busy(self) -> bool:
        """Whether any append is in flight or any delivery held (else each release may go
        at once, in the order appends return: see `released`)."""
        return bool(self._inflight) or bool(self._held)

    def run(self, conversations: Sequence[str], deliveries: list[Ready], now: float) -> None:
        """begin() + end() of an append that completed without waiting (nothing else could
        run in between). With nothing in flight or held, every lower seq was released already:
        the deliveries go at once, in the order given (seq order per conversation), without
        the in-flight bookkeeping."""
        if self._inflight or self._held:
            self.begin(conversations, now)
            self.end(conversations, deliveries)
            return
        released = self._released
        used = self._used
        for delivery in deliveries:
            conversation = delivery[0]
            released[conversation] = delivery[1]
            used[conversation] = now
        self._release_runs(deliveries)

    def _release_runs(self, deliveries: list[Ready]) -> None:
        """Hand `deliveries` (released, in order) to `_release` as runs; a run that fails is
        logged and the others still go."""
        release = self._release
        if len(deliveries) == 1:  # a lone message: the common case of real traffic
            conversation, seq, message, audience, exclude = deliveries[0]
            try:
                release((message,), audience, exclude)
            except Exception:
                log.exception("delivery of %s #%d failed", conversation, seq)
            return
        runs: list[tuple[str, list[StoredMessage], Sequence[str], Connection | None]] = []
        run: list[StoredMessage] = []
        last_conversation = None
        last_audience: Sequence[str] = ()
        last_exclude: Connection | None = None
        for conversation, _seq, message, audience, exclude in deliveries:
            if (
                conversation == last_conversation
                and exclude is last_exclude
                and (audience is last_audience or audience == last_audience)
            ):
                run.append(message)
                continue
            run = [message]
            runs.append((conversation, run, audience, exclude))
            last_conversation = conversation
            last_audience = audience
            last_exclude = exclude
        for conversation, messages, audience, exclude in runs:
            try:
                release(messages, audience, exclude)
            except Exception:
                log.exception(
                    "delivery of %s #%d-%d failed", conversation, messages[0].seq, messages[-1].seq
                )

    def prune(self, now: float) -> None:
        """Forget the conversations idle for SEQUENCER_IDLE seconds (nothing in flight or
        held) among the next slice of a pass over them (relay.rounds: the work per call is
        bounded, whatever the number of conversations)."""
        used = self._used
        inflight = self._inflight
        held = self._held
        for conversation in self._rounds.next(used):
            last = used.get(conversation)
            if (
                last is not None
                and now - last >= SEQUENCER_IDLE
                and conversation not in inflight
                and conversation not in held
            ):
                del used[conversation]
                self._released.pop(conversation, None)
