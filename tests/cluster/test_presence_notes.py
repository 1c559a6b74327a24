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
