"""Presence across nodes (sans-IO): the local PresenceTracker, plus who is online on other nodes.

Each node keeps in Redis which users it holds — connected, or within the grace after their
last connection there — in a key of its own that it refreshes every `refresh` seconds and that
expires after `ttl` (relay.cluster.envelope), and announces changes at once on `relay:nodes`.
What a node learnt expires `ttl` seconds after it was last refreshed, so a dead node's users
go offline for presence queries when its entries expire.

With each user a node holds it says how many of the user's devices are signed in there (0
within the grace), so that "is any device of this user connected anywhere" (the HTTP API's
presence `devices`, the webhooks' test) is answered across nodes: exact for this node, as of
the other node's last announcement or refresh (at most `refresh` old) for the others.

Invariants (with PresenceTracker's):
- a user is online when online here or held by another node whose entry has not expired;
- `online` is announced only when a user comes online on no node before (a reconnect to
  another node within the grace announces nothing);
- `offline` is announced by the node where the user's grace ended, and only when no other
  node holds the user (so a user who moved to another node within the grace never flaps).
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import define, field

from relay.core.presence import PresenceTracker


@define
class ClusterPresence(PresenceTracker):
    #: told (user, True) when this node starts holding a user, (user, False) when it stops
    changed: Callable[[str, bool], None] = field(default=lambda user, up: None, kw_only=True)
    clock: Callable[[], float] = field(default=lambda: 0.0, kw_only=True)
    ttl: float = field(default=3.0, kw_only=True)
    # user -> {node: monotonic expiry}
    _remote: dict[str, dict[str, float]] = field(factory=dict, init=False)
    # node -> the version of its latest note applied
    _versions: dict[str, int] = field(factory=dict, init=False)
    #: this node's count of holding changes (the version of its notes)
    version: int = field(default=0, init=False)
    # user -> {node: devices signed in there}, for the entries of _remote that said so
    _remote_devices: dict[str, dict[str, int]] = field(factory=dict, init=False)

    # --- what other nodes said ---------------------------------------------------------------------
    def remote_note(
        self,
        node: str,
        up: list[str],
        down: list[str],
        devices: dict[str, int] | None,
        version: int,
        now: float,
        *,
        snapshot: bool = False,
    ) -> None:
        """A note of `node` (an announcement, or its key read by the heartbeat: a `snapshot`
        of every user it holds). A note older
        than one applied already (its `version`) only proves the node alive: it refreshes what
        is known of it and adds nothing, or a key written before a `down` and read after it
        would bring the user back for `ttl` and nobody would announce them offline."""
        known = self._versions.get(node, -1)
        if version < known:
            self.remote_alive(node, now)
            return
        self._versions[node] = version
        if snapshot:  # every user the node holds: the others it listed before are gone
            listed = set(up)
            down = [
                *down,
                *(u for u, nodes in self._remote.items() if node in nodes and u not in listed),
            ]
        self.remote_up(node, up, now, devices)
        self.remote_down(node, down)

    def remote_alive(self, node: str, now: float) -> None:
        expiry = now + self.ttl
        for nodes in self._remote.values():
            if node in nodes:
                nodes[node] = expiry

    def remote_up(
        self, node: str, users: list[str], now: float, devices: dict[str, int] | None = None
    ) -> None:
        """`node` holds `users` (with `devices[user]` devices signed in there, when given)."""
        expiry = now + self.ttl
        counts = self._remote_devices
        for user in users:
            self._remote.setdefault(user, {})[node] = expiry
            if devices is not None:
                count = devices.get(user, 0)
                if count > 0:
                    counts.setdefault(user, {})[node] = count
                else:
                    self._forget_devices(user, node)

    def remote_down(self, node: str, users: list[str]) -> None:
        for user in users:
            self._forget_devices(user, node)
            nodes = self._remote.get(user)
            if nodes is not None:
                nodes.pop(node, None)
                if not nodes:
                    del self._remote[user]

    def _forget_devices(self, user: str, node: str) -> None:
        counts = self._remote_devices.get(user)
        if counts is not None:
            counts.pop(node, None)
            if not counts:
                del self._remote_devices[user]

    def remote_devices(self, user_id: str) -> int:
        """The user's devices signed in on other nodes whose entries have not expired."""
        counts = self._remote_devices.get(user_id)
        if not counts:
            return 0
        nodes = self._remote.get(user_id, {})
        now = self.clock()
        return sum(n for node, n in counts.items() if nodes.get(node, 0.0) > now)

    def remote_expire(self, now: float) -> list[str]:
        """Drop entries not refreshed in time (a dead node's); returns the nodes that lapsed."""
        lapsed: set[str] = set()
        for user in list(self._remote):
            nodes = self._remote[user]
            for node in [n for n, t in nodes.items() if t <= now]:
                del nodes[node]
                self._forget_devices(user, node)
                lapsed.add(node)
            if not nodes:
                del self._remote[user]
        for node in lapsed:  # a node back after a lapse may have restarted its count
            self._versions.pop(node, None)
        return sorted(lapsed)

    def elsewhere(self, user_id: str) -> bool:
        nodes = self._remote.get(user_id)
        if not nodes:
            return False
        now = self.clock()
        return any(t > now for t in nodes.values())

    def nodes_of(self, user_id: str) -> list[str]:
        """The other nodes that hold the user, by entries not expired (relay.cluster.calls)."""
        nodes = self._remote.get(user_id)
        now = self.clock()
        return sorted(n for n, t in nodes.items() if t > now) if nodes else []

    def holds(self, user_id: str) -> bool:
        """Whether this node holds the user (connected here, or within the grace here)."""
        return user_id in self._devices or user_id in self._leaving

    def held(self) -> list[str]:
        """The users this node holds: connected here, or within the grace here."""
        return [*self._devices, *self._leaving]

    # --- PresenceTracker, across nodes ------------------------------------------------------------
    def connect(self, user_id: str) -> bool:
        held_before = user_id in self._devices or user_id in self._leaving
        announce = super().connect(user_id)
        if not held_before:
            self.version += 1
            self.changed(user_id, True)
        return announce and not self.elsewhere(user_id)

    def disconnect(self, user_id: str, now: float, left_at: str) -> bool:
        offline = super().disconnect(user_id, now, left_at)
        if offline:  # no grace: gone from this node at once
            self.version += 1
            self.changed(user_id, False)
            return not self.elsewhere(user_id)
        return False

    def expired(self, now: float) -> list[tuple[str, str]]:
        gone = super().expired(now)
        for user, _ in gone:
            self.version += 1
            self.changed(user, False)
        return [(user, seen) for user, seen in gone if not self.elsewhere(user)]

    def is_online(self, user_id: str) -> bool:
        return super().is_online(user_id) or self.elsewhere(user_id)

    def status_of(self, user_id: str) -> str:
        if super().is_online(user_id):
            return super().status_of(user_id)
        return "online" if self.elsewhere(user_id) else "offline"
