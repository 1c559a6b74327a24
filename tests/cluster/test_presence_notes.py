"""ClusterPresence (sans-IO): what other nodes say of their users, applied in the order they
said it — a node's key read by the heartbeat after a newer announcement must not bring back a
user that node has let go (nobody would then announce them offline)."""

from __future__ import annotations

from relay.cluster.presence import ClusterPresence


def presence(now: list[float]) -> ClusterPresence:
    return ClusterPresence(0.5, clock=lambda: now[0], ttl=3.0)


def test_a_stale_key_does_not_bring_a_user_back() -> None:
    now = [10.0]
    p = presence(now)
    p.remote_note("b", ["bob"], [], {"bob": 1}, 4, now[0], snapshot=True)  # b's key, v4
    assert p.is_online("bob") and p.remote_devices("bob") == 1
    p.remote_note("b", [], ["bob"], None, 5, now[0])  # b announces: bob's grace ended there
    assert not p.is_online("bob")
    now[0] = 10.5
    p.remote_note("b", ["bob"], [], {"bob": 1}, 4, now[0], snapshot=True)  # the old key, read late
    assert not p.is_online("bob") and p.remote_devices("bob") == 0


def test_a_snapshot_drops_whom_the_node_no_longer_lists() -> None:
    now = [0.0]
    p = presence(now)
    p.remote_note("b", ["ann", "bob"], [], {"ann": 1, "bob": 2}, 1, now[0], snapshot=True)
    p.remote_note("b", ["ann"], [], {"ann": 1}, 3, now[0], snapshot=True)
    assert p.is_online("ann") and not p.is_online("bob")


def test_a_stale_note_still_shows_the_node_alive() -> None:
    now = [0.0]
    p = presence(now)
    p.remote_note("b", ["ann"], [], {"ann": 1}, 7, now[0], snapshot=True)
    now[0] = 2.5
    p.remote_note("b", ["ann"], [], {"ann": 1}, 6, now[0], snapshot=True)  # reordered
    now[0] = 4.0  # past the first note's expiry, within the second's
    assert p.remote_expire(now[0]) == [] and p.is_online("ann")


# --- a user's status (away/busy) is one register across nodes ---------------------------------------
def node(name: str, now: list[float]) -> ClusterPresence:
    return ClusterPresence(0.5, clock=lambda: now[0], ttl=3.0, node=name)


def tell(to: ClusterPresence, origin: ClusterPresence, users: list[str], now: float) -> None:
    """What `origin` says of `users` (an announcement), heard by `to`."""
    to.remote_note(
        origin.node, users, [], {u: 1 for u in users}, origin.version, now,
        statuses=origin.statuses(users),
    )  # fmt: skip


def test_a_status_set_on_one_node_is_what_every_node_answers() -> None:
    now = [0.0]
    a, b, c = node("a", now), node("b", now), node("c", now)
    a.connect("ann")
    a.set_status("ann", "away")
    for other in (b, c):
        tell(other, a, ["ann"], now[0])
    assert [p.status_of("ann") for p in (a, b, c)] == ["away", "away", "away"]


def test_the_status_outlives_the_node_where_it_was_set() -> None:
    now = [0.0]
    a, b, c = node("a", now), node("b", now), node("c", now)
    a.connect("ann")
    a.set_status("ann", "busy")
    tell(b, a, ["ann"], now[0])
    tell(c, a, ["ann"], now[0])
    b.connect("ann")  # ann's phone moves to b, within the grace on a
    tell(a, b, ["ann"], now[0])
    a.disconnect("ann", now[0], "t")
    now[0] = 1.0
    assert a.expired(now[0]) == []  # b holds ann: nobody announces offline
    c.remote_note("a", [], ["ann"], None, a.version, now[0])  # a let ann go
    tell(c, b, ["ann"], now[0])
    assert [p.status_of("ann") for p in (a, b, c)] == ["busy", "busy", "busy"]


def test_the_later_set_wins_and_two_sets_at_once_agree_by_node() -> None:
    now = [0.0]
    a, b = node("a", now), node("b", now)
    a.connect("ann")
    b.connect("ann")  # two devices of ann, one on each node
    a.set_status("ann", "away")
    tell(b, a, ["ann"], now[0])
    b.set_status("ann", "online")  # after b heard "away": it wins everywhere
    tell(a, b, ["ann"], now[0])
    assert (a.status_of("ann"), b.status_of("ann")) == ("online", "online")
    a.set_status("ann", "busy")  # both at once: neither heard the other's
    b.set_status("ann", "away")
    tell(a, b, ["ann"], now[0])
    tell(b, a, ["ann"], now[0])
    assert a.status_of("ann") == b.status_of("ann") == "away"  # same stamp: node b > node a


def test_a_status_ends_when_no_node_holds_the_user_and_a_dead_nodes_goes_with_it() -> None:
    now = [0.0]
    a, b = node("a", now), node("b", now)
    a.connect("ann")
    a.set_status("ann", "away")
    tell(b, a, ["ann"], now[0])
    assert b.status_of("ann") == "away"
    now[0] = 5.0  # a died: its entry lapsed
    assert b.remote_expire(now[0]) == ["a"] and b.status_of("ann") == "offline"
    b.connect("ann")  # back on b, nobody else holds ann: online again
    assert b.status_of("ann") == "online"
