"""Presence (sans-IO): who is online, the grace before `offline`, and who may hear about it.

Invariants:
- a user is online from their first authenticated connection until `grace` seconds after their
  last one closed; a connection within the grace cancels the pending `offline` (nothing is
  announced either way), so a quick reconnect is invisible to others;
- `lastSeen` is the moment the last connection closed (not the end of the grace);
- the interest scope of U is U's contacts (store.contacts: everyone sharing a 1:1 conversation
  or a group with U); the tracker caches it for online users and drops it when they go offline;
- an online user's status is `online` unless they announced `away` or `busy`; it resets to
  `online` when they go offline;
- `expired(now)` examines only the graces due by `now` (relay.core.expiry), not every user
  within one.

A cached scope is a `dict` of user ids to None, used as a set: a dict holding only strings is
not tracked by CPython's collector (a set always is, and each collection of its generation
visits every member), so an online user's contacts cost the collector nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Set

from attrs import define, field

from relay.core.expiry import Expiries

_NONE: frozenset[str] = frozenset()


@define
class PresenceTracker:
    grace: float
    _devices: dict[str, int] = field(factory=dict, init=False)
    _status: dict[str, str] = field(factory=dict, init=False)
    # user -> lastSeen timestamp, due at the end of the grace (the offline announcement)
    _leaving: Expiries[str, str] = field(factory=Expiries, init=False)
    _contacts: dict[str, dict[str, None]] = field(factory=dict, init=False)

    # --- connections ------------------------------------------------------------------------------
    def connect(self, user_id: str) -> bool:
        """A connection of the user authenticated; True when `online` is to be announced."""
        count = self._devices.get(user_id, 0)
        self._devices[user_id] = count + 1
        if count:
            return False
        return not self._leaving.remove(user_id)

    def disconnect(self, user_id: str, now: float, left_at: str) -> bool:
        """An authenticated connection closed; True when the user is offline at once (no grace).
        A user gone offline (here or via `expired`) keeps their contacts until `forget`."""
        count = self._devices.get(user_id, 0) - 1
        if count > 0:
            self._devices[user_id] = count
            return False
        self._devices.pop(user_id, None)
        if self.grace > 0:
            self._leaving.put(user_id, now + self.grace, left_at)
            return False
        return True

    def expired(self, now: float) -> list[tuple[str, str]]:
        """Users whose grace ended: (user id, lastSeen). They are offline from now on."""
        return self._leaving.due(now)

    def forget(self, user_id: str) -> None:
        """Drop what is kept for an online user (status, contacts) once `offline` was announced;
        a no-op for a user who is connected again."""
        if self.is_online(user_id):
            return
        self._status.pop(user_id, None)
        self._contacts.pop(user_id, None)

    # --- state ------------------------------------------------------------------------------------
    def is_online(self, user_id: str) -> bool:
        """Connected, or within the grace after the last connection closed."""
        return user_id in self._devices or user_id in self._leaving

    def status_of(self, user_id: str) -> str:
        if not self.is_online(user_id):
            return "offline"
        return self._status.get(user_id, "online")

    def set_status(self, user_id: str, status: str) -> bool:
        """The user announced online/away/busy; True when it changed."""
        before = self._status.get(user_id, "online")
        if status == "online":
            self._status.pop(user_id, None)
        else:
            self._status[user_id] = status
        return before != status

    def leaving_since(self, user_id: str) -> str | None:
        """lastSeen of a user within the grace (None otherwise)."""
        return self._leaving.value(user_id)

    # --- interest scope ---------------------------------------------------------------------------
    def has_contacts(self, user_id: str) -> bool:
        return user_id in self._contacts

    def set_contacts(self, user_id: str, contacts: Iterable[str]) -> None:
        known = dict.fromkeys(contacts)
        known.pop(user_id, None)
        self._contacts[user_id] = known

    def contacts_of(self, user_id: str) -> Set[str]:
        known = self._contacts.get(user_id)
        return _NONE if known is None else known.keys()

    def link(self, users: Iterable[str], others: Iterable[str]) -> None:
        """Each of `users` now shares a conversation with each of `others` (kept for cached ones)."""
        user_ids = dict.fromkeys(users)
        other_ids = dict.fromkeys(others)
        for user in user_ids:
            known = self._contacts.get(user)
            if known is not None:
                known.update(other_ids)
                known.pop(user, None)
        for other in other_ids:
            known = self._contacts.get(other)
            if known is not None:
                known.update(user_ids)
                known.pop(other, None)

    def pair(self, a: str, b: str) -> None:
        """`a` and `b` share a 1:1 conversation (cheap when already known: the hot path)."""
        if a == b:
            return
        known = self._contacts.get(a)
        if known is not None and b not in known:
            known[b] = None
        known = self._contacts.get(b)
        if known is not None and a not in known:
            known[a] = None

    def unlink(self, user_id: str, others: Iterable[str]) -> None:
        """`user_id` and each of `others` no longer share any conversation."""
        others = set(others)
        known = self._contacts.get(user_id)
        for other in others:
            if known is not None:
                known.pop(other, None)
            theirs = self._contacts.get(other)
            if theirs is not None:
                theirs.pop(user_id, None)
