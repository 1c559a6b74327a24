"""The cross-node order of live deliveries (sans-IO): per (conversation, user), in seq order.

Deliveries of one conversation reach a node from several nodes (each publishes its own appends
after they commit), so they may come out of seq order, and a publish may be lost (a node killed
between its commit and its publish, Redis restarted). Invariants:
- per (conversation, user) the orderer releases seqs in increasing order: a delivery of seq s is
  released when s <= upto + 1 (upto: the highest seq released for that key; a key not seen yet
  releases anything and starts there), else held;
- a key with held deliveries is `due` once `gap_wait` has passed since its first hold: the
  caller reads the missing seqs from the store and hands them to `fill`, which releases them and
  every held delivery in seq order — a gap is filled, never skipped;
- a key without holds is forgotten after `idle` seconds, or when its user leaves the node; a
  group's keys when its members change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from attrs import define, field

from relay.ports import Connection
from relay.store.base import StoredMessage

#: release(message, users, left out): deliver to these users' local devices
Release = Callable[[StoredMessage, Sequence[str], Connection | None], None]
Key = tuple[str, str]  # (conversation, user)


@define
class Orderer:
    release: Release
    gap_wait: float = 0.25
    idle: float = 60.0
    _upto: dict[Key, int] = field(factory=dict)
    _held: dict[Key, dict[int, tuple[StoredMessage, Connection | None]]] = field(factory=dict)
    _since: dict[Key, float] = field(factory=dict)  # when the key's oldest hold began
    _used: dict[Key, float] = field(factory=dict)

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
            if upto is None or seq <= upto + 1:
                ready.append(user)
                if upto is None or seq > upto:
                    upto_of[key] = seq
                    if key in self._held:
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

    def _drain(self, key: Key) -> None:
        """Release the held deliveries of `key` that are now in turn."""
        held = self._held.get(key)
        if held is None:
            return
        upto = self._upto.get(key, 0)
        while upto + 1 in held:
            upto += 1
            message, exclude = held.pop(upto)
            self._upto[key] = upto
            self.release(message, [key[1]], exclude)
        for seq in [s for s in held if s <= upto]:  # late copies: already in turn
            message, exclude = held.pop(seq)
            self.release(message, [key[1]], exclude)
        if not held:
            del self._held[key]
            self._since.pop(key, None)

    def due(self, now: float) -> list[tuple[Key, int, int]]:
        """Keys whose gap waited `gap_wait`: (key, upto, the highest seq held) each."""
        found = []
        for key, since in self._since.items():
            if now - since >= self.gap_wait:
                found.append((key, self._upto.get(key, 0), max(self._held[key])))
        return found

    def fill(self, key: Key, missing: Sequence[StoredMessage]) -> None:
        """The store's messages of `key`'s conversation after its upto (read once it was due):
        released in seq order together with everything held."""
        held = self._held.get(key)
        if held is None:
            return
        for message in missing:
            if message.seq not in held and message.seq > self._upto.get(key, 0):
                held[message.seq] = (message, None)
        upto = self._upto.get(key, 0)
        for seq in sorted(held):
            message, exclude = held.pop(seq)
            if seq > upto:
                upto = seq
                self._upto[key] = seq
            self.release(message, [key[1]], exclude)
        del self._held[key]
        self._since.pop(key, None)

    def forget_user(self, user: str) -> None:
        """The user has no device on this node any more: their keys go (held ones with them:
        their devices are gone, the store keeps the messages for their next connection)."""
        for key in [k for k in self._used if k[1] == user]:
            self._drop(key)

    def forget_conversation(self, conversation: str) -> None:
        """A group's members changed: its keys start again at the next delivery, so a gap
        never spans a change (a member removed and added again is never given, from the
        store, what was said while they were out)."""
        for key in [k for k in self._used if k[0] == conversation]:
            self._drop(key)

    def prune(self, now: float) -> None:
        for key in [k for k, t in self._used.items() if now - t > self.idle]:
            if key not in self._held:
                self._drop(key)

    def _drop(self, key: Key) -> None:
        self._used.pop(key, None)
        self._upto.pop(key, None)
        self._held.pop(key, None)
        self._since.pop(key, None)
