"""The cross-node order of live deliveries (sans-IO): per (conversation, user), in seq order.

Deliveries of one conversation reach a node from several nodes (each publishes its own appends
after they commit), so they may come out of seq order, and a publish may be lost (a node killed
between its commit and its publish, Redis restarted). Invariants:
- per (conversation, user) the orderer releases seqs in increasing order: a delivery of seq s is
  released when s <= upto + 1 (upto: the highest seq released for that key), else held;
- a key not seen yet starts at `position(conversation, user)`, the highest seq the user's
  devices here were sent (None when some device has none for the conversation), or at 0 for
  seq 1: a first delivery that follows it goes at once. Any other first delivery is held and the key is
  `blind`: what the devices lack before it is read from the store at once (their undelivered
  messages) and handed to `fill`. A key must never start at its first delivery: a lower seq
  committed by another node may still be on its way, and once the higher one is sent to a
  device the lower one can no longer be (a device gets a conversation in seq order), so it
  would be lost until the device reconnects. This holds right after a group's members
  changed too: the start read is the store's undelivered messages of the user's devices,
  which begin where the user (re)joined, so a member added again is never given what was said
  while they were out, and every other member's order goes on unbroken;
- a seq with nothing to deliver here (`passed`: the sender's own message, from their only
  device here) takes its turn without being held: the sender's key never waits `gap_wait` for
  the other side's messages on its account, nor reads the store for them;
- a key with held deliveries is `due` once `gap_wait` has passed since its first hold: the
  caller reads the missing seqs up to the highest held from the store and hands them to `fill`,
  which releases them and every held delivery up to that seq in seq order — a gap is filled,
  never skipped, and nothing is released past a seq the read covered (what was held meanwhile
  beyond it follows in turn, or waits again);
- a key without holds is forgotten after `idle` seconds, or when its user leaves the node; a
  group's keys when its members change, except that a key with held deliveries keeps them and
  becomes blind (its start is read from the store again): a gap read (`history`, the whole
  conversation) never spans a change, and nothing held is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from attrs import define, field

from relay.ports import Connection
from relay.rounds import Rounds
from relay.store.base import StoredMessage

#: release(message, users, left out): deliver to these users' local devices
Release = Callable[[StoredMessage, Sequence[str], Connection | None], None]
#: position(conversation, user): the highest seq every device of the user here was sent, None
#: when unknown
Position = Callable[[str, str], "int | None"]
Key = tuple[str, str]  # (conversation, user)


@define
class Orderer:
    release: Release
    gap_wait: float = 0.25
    idle: float = 60.0
    position: Position = lambda conversation, user: None
    #: told when a key became blind (its start is to be read from the store now)
    on_blind: Callable[[], None] = lambda: None
    _blind: set[Key] = field(factory=set)
    _passed: dict[Key, set[int]] = field(factory=dict)  # seqs beyond upto with no delivery here
    _upto: dict[Key, int] = field(factory=dict)
    _held: dict[Key, dict[int, tuple[StoredMessage, Connection | None]]] = field(factory=dict)
    _since: dict[Key, float] = field(factory=dict)  # when the key's oldest hold began
    _used: dict[Key, float] = field(factory=dict)
    _rounds: Rounds[Key] = field(factory=Rounds, init=False)

    def offer(
        self,
        message: StoredMessage,
        users: Sequence[str],
        exclude: Connection | None,
        now: float,
    ) -> None:
        """A delivery for `users` (each with devices on this node)."""
        conversation = message.conversation
        seq = message.seq
        upto_of = self._upto
        ready: list[str] = []
        follow: list[Key] = []
        for user in users:
            key = (conversation, user)
            self._used[key] = now
            upto = upto_of.get(key)
            if upto is None and key not in self._blind:
                # seq 1 has nothing before it
                upto = 0 if seq == 1 else self.position(conversation, user)
                if upto is None or seq > upto + 1:
                    self._blind.add(key)
                    self.on_blind()
                else:
                    upto_of[key] = upto
            if upto is not None and seq <= upto + 1:
                ready.append(user)
                if seq > upto:
                    upto_of[key] = seq
                    if key in self._held or key in self._passed:
                        follow.append(key)
                continue
            held = self._held.get(key)
            if held is None:
                held = self._held[key] = {}
                self._since[key] = now
            held[seq] = (message, exclude)
        if ready:
            self.release(message, ready, exclude)
        for key in follow:
            self._drain(key)

    def passed(self, conversation: str, seq: int, user: str, now: float) -> None:
        """A message of `user`'s that none of their devices here is to get (its sender's own,
        from their only device here): it takes its turn without a delivery, and is never
        held or waited for. A key not started yet is not started by it."""
        key = (conversation, user)
        upto = self._upto.get(key)
        if upto is None:
            return
        self._used[key] = now
        if seq <= upto:
            return
        if seq == upto + 1:
            self._upto[key] = seq
            if key in self._held or key in self._passed:
                self._drain(key)
            return
        self._passed.setdefault(key, set()).add(seq)

    def _drain(self, key: Key) -> None:
        """Release the held deliveries of `key` that are now in turn."""
        held = self._held.get(key, {})
        passed = self._passed.get(key, set())
        upto = self._upto.get(key, 0)
        while True:
            if upto + 1 in held:
                upto += 1
                message, exclude = held.pop(upto)
                self._upto[key] = upto
                self.release(message, [key[1]], exclude)
            elif upto + 1 in passed:
                upto += 1
                passed.discard(upto)
                self._upto[key] = upto
            else:
                break
        for seq in [s for s in held if s <= upto]:  # late copies: already in turn
            message, exclude = held.pop(seq)
            self.release(message, [key[1]], exclude)
        passed.difference_update([s for s in passed if s <= upto])
        if not held:
            self._held.pop(key, None)
            self._since.pop(key, None)
        if not passed:
            self._passed.pop(key, None)

    def due(self, now: float) -> list[tuple[Key, int, int]]:
        """Keys whose gap waited `gap_wait`: (key, upto, the highest seq held) each."""
        found = []
        for key, since in self._since.items():
            if now - since >= self.gap_wait and key not in self._blind:
                found.append((key, self._upto.get(key, 0), max(self._held[key])))
        return found

    def blind(self) -> list[tuple[Key, int]]:
        """Keys whose start is unknown: (key, the highest seq held) each. The caller reads what
        the user's devices here lack of the conversation up to that seq (their undelivered
        messages) and hands it to `fill`."""
        return [(key, max(self._held[key])) for key in self._blind if key in self._held]

    def fill(self, key: Key, missing: Sequence[StoredMessage], top: int, now: float) -> None:
        """The store's messages of `key`'s conversation that its devices lack, up to `top`
        (read once the key was due, or blind): released in seq order together with what is
        held up to `top`; the read covers every seq up to `top`, so the key is then at `top`.
        What was held meanwhile beyond `top` follows in turn, and a gap there waits again — a
        fill never releases past a seq it did not read."""
        self._blind.discard(key)
        held = self._held.get(key)
        if held is None:
            return
        upto = self._upto.get(key, 0)
        for message in missing:
            seq = message.seq
            if upto < seq <= top and seq not in held:
                held[seq] = (message, None)
        for seq in sorted(s for s in held if s <= top):
            message, exclude = held.pop(seq)
            self.release(message, [key[1]], exclude)
        self._upto[key] = max(upto, top)
        if held:
            self._since[key] = now  # what is left waits for its gap from now
        self._drain(key)  # what is in turn beyond the fill

    def forget_user(self, user: str) -> None:
        """The user has no device on this node any more: their keys go (held ones with them:
        their devices are gone, the store keeps the messages for their next connection)."""
        for key in [k for k in self._used if k[1] == user]:
            self._drop(key)

    def forget_conversation(self, conversation: str) -> None:
        """A group's members changed: its keys start again, so that no gap read (the
        conversation's history after `upto`) spans the change — a member removed and added
        again is never given what was said while they were out. A key starts again as a new
        one does: from its devices' position, or from the store's undelivered messages of its
        devices, which begin where the user joined. A key with held deliveries keeps them and
        is blind at once (its start is read now, then everything is released in seq order)."""
        blind = False
        for key in [k for k in self._used if k[0] == conversation]:
            if key in self._held:
                self._upto.pop(key, None)
                self._passed.pop(key, None)
                self._since.pop(key, None)
                self._blind.add(key)
                blind = True
            else:
                self._drop(key)
        if blind:
            self.on_blind()

    def prune(self, now: float) -> None:
        """Forget the keys idle for `idle` seconds without holds, among the next slice of a
        pass over them (relay.rounds: the work per call does not grow with the keys)."""
        used = self._used
        for key in self._rounds.next(used):
            last = used.get(key)
            if last is not None and now - last > self.idle and key not in self._held:
                self._drop(key)

    def _drop(self, key: Key) -> None:
        self._blind.discard(key)
        self._passed.pop(key, None)
        self._used.pop(key, None)
        self._upto.pop(key, None)
        self._held.pop(key, None)
        self._since.pop(key, None)
