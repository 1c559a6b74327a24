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
  node holds the user (so a user who moved to another node within the grace never flaps);
- a user's status (online/away/busy, the `status` frame) is one register per user across
  nodes: a `Register` (stamp, origin node, status), and the greatest (stamp, origin) wins. A
  status set here takes a stamp above every one this node knows for the user (a set after
  another one was heard wins over it; two sets at once are ordered by node id, the same way on
  every node). Each node that holds the user keeps the latest register it knows (its own set, or
  one heard from another node holding the user, or found there when it starts holding them)
  and says it with the user in its notes, so the status outlives the node where it was set as
  long as some node holds the user, and every node answers the same. A node that stops holding
  the user drops its register; once no node holds them it is `online` again on their return.
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import define, field

from relay.core.presence import PresenceTracker

#: a user's status as a node knows it: (stamp, origin node, status); the greatest wins
Register = tuple[int, str, str]


@define
class ClusterPresence(PresenceTracker):
    #: told (user, True) when this node starts holding a user, (user, False) when it stops
    changed: Callable[[str, bool], None] = field(default=lambda user, up: None, kw_only=True)
    clock: Callable[[], float] = field(default=lambda: 0.0, kw_only=True)
    ttl: float = field(default=3.0, kw_only=True)
    #: this node's id (it orders two status registers of the same stamp)
    node: str = field(default="", kw_only=True)
    # user -> the register this node keeps for a user it holds (see the module docstring)
    _own: dict[str, Register] = field(factory=dict, init=False)
    # user -> {node: the register that node said with the user}
    _remote_status: dict[str, dict[str, Register]] = field(factory=dict, init=False)
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
        statuses: dict[str, Register] | None = None,
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
        self.remote_up(node, up, now, devices, statuses)
        self.remote_down(node, down)

    def remote_alive(self, node: str, now: float) -> None:
        expiry = now + self.ttl
        for nodes in self._remote.values():
            if node in nodes:
                nodes[node] = expiry

    def remote_up(
        self,
        node: str,
        users: list[str],
        now: float,
        devices: dict[str, int] | None = None,
        statuses: dict[str, Register] | None = None,
    ) -> None:
        """`node` holds `users` (with `devices[user]` devices signed in there, when given, and
        the status register `statuses[user]` it keeps for them, none when absent)."""
        expiry = now + self.ttl
        counts = self._remote_devices
        known = self._remote_status
        own = self._own
        for user in users:
            register = statuses.get(user) if statuses is not None else None
            if register is None:
                self._forget_status(user, node)
            else:
                known.setdefault(user, {})[node] = register
                mine = own.get(user)
                if (mine is None or register[:2] > mine[:2]) and self.holds(user):
                    self._keep(user, register)
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
            self._forget_status(user, node)
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

    def _forget_status(self, user: str, node: str) -> None:
        registers = self._remote_status.get(user)
        if registers is not None:
            registers.pop(node, None)
            if not registers:
                del self._remote_status[user]

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
                self._forget_status(user, node)
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

    # --- status registers -------------------------------------------------------------------------
    def statuses(self, users: list[str]) -> dict[str, Register]:
        """The registers this node keeps for those of `users` that have one (for its notes)."""
        own = self._own
        return {u: own[u] for u in users if u in own}

    def _latest(self, user_id: str) -> Register | None:
        """The greatest register known for the user: this node's, and those of the other nodes
        that hold the user (entries not expired)."""
        best = self._own.get(user_id)
        registers = self._remote_status.get(user_id)
        if registers:
            nodes = self._remote.get(user_id, {})
            now = self.clock()
            for node, register in registers.items():
                if nodes.get(node, 0.0) > now and (best is None or register[:2] > best[:2]):
                    best = register
        return best

    def _keep(self, user_id: str, register: Register) -> None:
        self._own[user_id] = register
        super().set_status(user_id, register[2])

    def _let_go(self, user_id: str) -> None:
        """This node no longer holds the user: its register goes."""
        self._own.pop(user_id, None)
        super().set_status(user_id, "online")

    # --- PresenceTracker, across nodes ------------------------------------------------------------
    def connect(self, user_id: str) -> bool:
        held_before = user_id in self._devices or user_id in self._leaving
        announce = super().connect(user_id)
        if not held_before:
            latest = self._latest(user_id)  # another node's, the user being held there
            if latest is not None:
                self._keep(user_id, latest)
            self.version += 1
            self.changed(user_id, True)
        return announce and not self.elsewhere(user_id)

    def disconnect(self, user_id: str, now: float, left_at: str) -> bool:
        offline = super().disconnect(user_id, now, left_at)
        if offline:  # no grace: gone from this node at once
            self._let_go(user_id)
            self.version += 1
            self.changed(user_id, False)
            return not self.elsewhere(user_id)
        return False

    def expired(self, now: float) -> list[tuple[str, str]]:
        gone = super().expired(now)
        for user, _ in gone:
            self._let_go(user)
            self.version += 1
            self.changed(user, False)
        return [(user, seen) for user, seen in gone if not self.elsewhere(user)]

    def set_status(self, user_id: str, status: str) -> bool:
        """A device of the user here announced a status: a register above every one known for
        the user, said to the other nodes at once."""
        before = self.status_of(user_id)
        stamps = [r[0] for r in self._remote_status.get(user_id, {}).values()]
        mine = self._own.get(user_id)
        if mine is not None:
            stamps.append(mine[0])
        self._keep(user_id, (max(stamps, default=0) + 1, self.node, status))
        self.version += 1
        self.changed(user_id, True)
        return before != status

    def is_online(self, user_id: str) -> bool:
        return super().is_online(user_id) or self.elsewhere(user_id)

    def status_of(self, user_id: str) -> str:
        if not self.is_online(user_id):
            return "offline"
        latest = self._latest(user_id)
        return "online" if latest is None else latest[2]
