"""The small sans-IO parts on their own: token buckets, presence with grace, typing lapse."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from support import CountingNow

from relay.core.presence import PresenceTracker
from relay.core.ratelimit import RateLimiter, TokenBucket
from relay.core.typing_state import TypingKey, TypingTracker
from relay.store.base import direct_conversation, direct_users, group_conversation


def test_token_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0, tokens=3.0, updated=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5)  # one token back after 0.5 s at 2/s
    assert not bucket.take(0.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped at burst


def test_rate_limiter_is_per_key_and_prunes_full_buckets() -> None:
    limiter = RateLimiter(rate=1.0, burst=1.0)
    assert limiter.allow("a", 0.0) and not limiter.allow("a", 0.0)
    assert limiter.allow("b", 0.0)
    assert len(limiter) == 2
    assert limiter.prune(0.5) == 0
    assert limiter.prune(1.0) == 2 and len(limiter) == 0
    assert limiter.allow("a", 1.0)


def test_presence_first_device_last_device_and_grace() -> None:
    p = PresenceTracker(grace=5.0)
    assert p.connect("u") is True
    assert p.connect("u") is False  # second device
    assert p.disconnect("u", 10.0, "T1") is False
    assert p.disconnect("u", 11.0, "T2") is False  # grace starts
    assert p.is_online("u") and p.leaving_since("u") == "T2"
    assert p.expired(15.9) == []
    assert p.connect("u") is False  # back within the grace: nothing to announce
    assert p.disconnect("u", 20.0, "T3") is False
    assert p.expired(25.0) == [("u", "T3")]
    assert not p.is_online("u") and p.status_of("u") == "offline"
    assert p.connect("u") is True


def test_presence_without_grace_and_status() -> None:
    p = PresenceTracker(grace=0.0)
    p.connect("u")
    p.set_contacts("u", {"a", "u"})
    assert p.contacts_of("u") == {"a"}
    assert p.set_status("u", "away") and p.status_of("u") == "away"
    assert not p.set_status("u", "away")
    assert p.disconnect("u", 1.0, "T") is True
    assert p.contacts_of("u") == {"a"}  # kept until the offline announcement went out
    p.forget("u")
    assert p.contacts_of("u") == set() and p.status_of("u") == "offline"
    p.connect("u")
    assert p.status_of("u") == "online"


def test_presence_links_and_unlinks_cached_contacts() -> None:
    p = PresenceTracker(grace=0.0)
    p.set_contacts("a", set())
    p.set_contacts("b", set())
    p.link(["a"], ["b", "c"])
    assert p.contacts_of("a") == {"b", "c"} and p.contacts_of("b") == {"a"}
    assert p.contacts_of("c") == set()  # not cached: loaded from the store when c connects
    p.unlink("a", ["b"])
    assert p.contacts_of("a") == {"c"} and p.contacts_of("b") == set()
    p.pair("b", "a")
    assert "b" in p.contacts_of("a") and p.contacts_of("b") == {"a"}
    p.pair("a", "a")
    assert "a" not in p.contacts_of("a")


def test_typing_lapse_stop_and_rate() -> None:
    t = TypingTracker(lapse=10.0, rate=2.0)
    key = TypingKey("u", recipient_id="v")
    assert t.start(key, 0.0) and t.active(key)
    assert t.lapsed(9.9) == []
    assert t.start(key, 9.0)  # refresh
    assert t.lapsed(18.9) == [] and t.lapsed(19.0) == [key]
    assert not t.stop(key)  # already lapsed: nothing to stop
    assert t.start(key, 30.0) and t.start(key, 30.0)
    assert not t.start(key, 30.0)  # over 2/s with burst 2
    assert t.stop(key)
    group = TypingKey("u", group_id="g")
    t.start(group, 40.0)
    assert t.keys_of("u") == [group]
    assert t.clear_user("u") == [group] and t.keys_of("u") == []


# --- expiries: only what is due is examined -----------------------------------------------------


def typing_pairs(n: int, *, at: float = 0.0) -> TypingTracker:
    """`n` active pairs of one user (one rate-limit bucket, so its prune counts once)."""
    t = TypingTracker(lapse=10.0, rate=1e9)
    for i in range(n):
        assert t.start(TypingKey("u", recipient_id=f"r{i}"), at)
    return t


def leaving_users(n: int, *, at: float = 0.0) -> PresenceTracker:
    p = PresenceTracker(grace=5.0)
    for i in range(n):
        p.connect(f"u{i}")
        p.disconnect(f"u{i}", at, f"T{i}")
    return p


def test_a_typing_lapse_check_with_nothing_due_examines_no_pending_pair() -> None:
    """With n pairs active and none due, `lapsed` compares a fixed few times with `now` (the
    heap's head, the rate limiter's one bucket) whatever n is; a scan compared n times."""
    counts = []
    for n in (1, 10_000):
        t = typing_pairs(n)
        now = CountingNow(9.9)
        assert t.lapsed(now) == []
        counts.append(now.compared)
    assert counts[0] == counts[1] <= 2, counts


def test_a_grace_check_with_nothing_due_examines_no_pending_user() -> None:
    counts = []
    for n in (1, 10_000):
        p = leaving_users(n)
        now = CountingNow(4.9)
        assert p.expired(now) == []
        counts.append(now.compared)
    assert counts == [1, 1], counts


def test_a_check_examines_the_due_and_one_more() -> None:
    """k of n due: k + 1 comparisons with `now` (each due deadline, and the first one not)."""
    p = PresenceTracker(grace=5.0)
    for i in range(1000):
        p.connect(f"u{i}")
        p.disconnect(f"u{i}", float(i), f"T{i}")
    now = CountingNow(5.0 + 2.0)  # u0, u1, u2 due
    assert p.expired(now) == [("u0", "T0"), ("u1", "T1"), ("u2", "T2")]
    assert now.compared == 4
    assert p.is_online("u3") and not p.is_online("u2")


class CountingUser(str):
    """A user id that counts the comparisons made with it."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        CountingUser.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_a_departure_examines_only_the_leavers_typing_pairs() -> None:
    """A user's last device leaving ends their pairs without looking at anyone else's: as
    many comparisons with 10,000 others typing as with none (a scan made 10,000)."""
    counts = []
    for others in (0, 10_000):
        t = TypingTracker(lapse=10.0, rate=1e9)
        for i in range(others):
            assert t.start(TypingKey(f"o{i}", recipient_id="v"), 0.0)
        leaver = CountingUser("u")
        mine = [TypingKey(leaver, recipient_id="v"), TypingKey(leaver, group_id="g")]
        for key in mine:
            assert t.start(key, 0.0)
        CountingUser.compared = 0
        assert t.keys_of(leaver) == mine
        assert t.clear_user(leaver) == mine
        assert t.keys_of(leaver) == [] and not any(t.active(k) for k in mine)
        counts.append(CountingUser.compared)
        assert len(t.lapsed(10.0)) == others  # the others' pairs are untouched
    assert counts[0] == counts[1] <= 4, counts


def test_typing_renewals_lapse_once_at_the_last_deadline() -> None:
    """A renewal moves the pair's deadline; each earlier deadline is examined once when it
    passes and announces nothing, and the pair lapses once, at its last deadline."""
    t = typing_pairs(0)
    key = TypingKey("u", recipient_id="v")
    for at in (0.0, 3.0, 6.0):
        assert t.start(key, at)
    assert t.lapsed(CountingNow(10.0)) == []  # the deadline 10 was renewed
    assert t.lapsed(13.0) == []
    assert t.active(key)
    now = CountingNow(16.0)
    assert t.lapsed(now) == [key] and not t.active(key)
    assert now.compared == 1  # the last deadline; the stale ones went at 10 and 13
    again = CountingNow(100.0)
    assert t.lapsed(again) == [] and again.compared == 0  # stale entries went once each


def test_typing_stop_cancels_the_lapse_and_a_new_start_has_its_own() -> None:
    t = typing_pairs(0)
    key = TypingKey("u", recipient_id="v")
    assert t.start(key, 0.0)
    assert t.stop(key) and not t.stop(key)
    assert t.lapsed(10.0) == []  # stopped: its deadline announces nothing
    assert t.start(key, 12.0)
    assert t.stop(key)
    assert t.start(key, 12.0)  # the same deadline again, after a stop
    assert t.lapsed(21.9) == []
    assert t.lapsed(22.0) == [key]
    assert t.lapsed(50.0) == []
    t.start(key, 60.0)
    assert t.clear_user("u") == [key]
    assert t.lapsed(70.0) == []  # cleared: nothing lapses


def test_presence_reconnect_cancels_the_grace_and_a_new_leave_has_its_own() -> None:
    p = PresenceTracker(grace=5.0)
    p.connect("u")
    p.disconnect("u", 0.0, "T0")
    p.connect("u")  # back within the grace
    assert p.expired(5.0) == [] and p.is_online("u")
    p.disconnect("u", 7.0, "T7")
    assert p.expired(11.9) == []
    assert p.leaving_since("u") == "T7"
    assert p.expired(12.0) == [("u", "T7")]
    assert p.expired(100.0) == [] and not p.is_online("u")


def test_due_entries_come_in_table_order_not_deadline_order() -> None:
    """A tick reports what is due in the order the entries entered the table (a renewal keeps
    its place), whatever their deadlines."""
    t = typing_pairs(0)
    a, b, c = (TypingKey(u, recipient_id="v") for u in "abc")
    t.start(a, 0.0)
    t.start(b, 1.0)
    t.start(c, 1.5)
    t.start(a, 2.0)  # a's deadline 12 is now after b's and c's
    t.stop(b)
    t.start(b, 1.8)  # b re-enters the table last
    assert t.lapsed(20.0) == [a, c, b]
    p = PresenceTracker(grace=5.0)
    for user, at in (("x", 3.0), ("y", 1.0), ("z", 2.0)):
        p.connect(user)
        p.disconnect(user, at, f"T{user}")
    assert [u for u, _ in p.expired(20.0)] == ["x", "y", "z"]


class ScanningTyping:
    """The typing table as a dict scanned whole on every check: the reference for the order
    and times of lapses."""

    def __init__(self, lapse: float) -> None:
        self.lapse = lapse
        self.deadlines: dict[TypingKey, float] = {}

    def start(self, key: TypingKey, now: float) -> None:
        self.deadlines[key] = now + self.lapse

    def stop(self, key: TypingKey) -> bool:
        return self.deadlines.pop(key, None) is not None

    def clear_user(self, user: str) -> list[TypingKey]:
        gone = [k for k in self.deadlines if k.user_id == user]
        for k in gone:
            del self.deadlines[k]
        return gone

    def lapsed(self, now: float) -> list[TypingKey]:
        gone = [k for k, d in self.deadlines.items() if d <= now]
        for k in gone:
            del self.deadlines[k]
        return gone


class ScanningPresence:
    """The grace table as a dict scanned whole on every check (connection counts included)."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.devices: dict[str, int] = {}
        self.leaving: dict[str, tuple[float, str]] = {}

    def connect(self, user: str) -> bool:
        count = self.devices.get(user, 0)
        self.devices[user] = count + 1
        return not count and self.leaving.pop(user, None) is None

    def disconnect(self, user: str, now: float, seen: str) -> bool:
        count = self.devices.get(user, 0) - 1
        if count > 0:
            self.devices[user] = count
            return False
        self.devices.pop(user, None)
        self.leaving[user] = (now + self.grace, seen)
        return False

    def expired(self, now: float) -> list[tuple[str, str]]:
        gone = [(u, s) for u, (d, s) in self.leaving.items() if d <= now]
        for u, _ in gone:
            del self.leaving[u]
        return gone


_users = st.sampled_from("abcd")
_steps = st.sampled_from([0.0, 0.0, 0.5, 1.0, 2.5, 5.0, 10.0])


@given(
    st.lists(
        st.tuples(st.sampled_from(["start", "stop", "clear", "tick"]), _users, _users, _steps),
        max_size=60,
    )
)
def test_typing_lapses_as_a_whole_table_scan_would(
    ops: list[tuple[str, str, str, float]],
) -> None:
    """Every start, stop, departure and check, at the same logical times: the same results,
    in the same order, as the table scanned whole."""
    t = TypingTracker(lapse=5.0, rate=1e9)
    ref = ScanningTyping(lapse=5.0)
    now = 0.0
    for op, user, peer, step in ops:
        now += step
        key = TypingKey(user, recipient_id=peer)
        if op == "start":
            assert t.start(key, now)
            ref.start(key, now)
        elif op == "stop":
            assert t.stop(key) == ref.stop(key)
        elif op == "clear":
            assert t.clear_user(user) == ref.clear_user(user)
        else:
            assert t.lapsed(now) == ref.lapsed(now)
        assert t.keys_of(user) == [k for k in ref.deadlines if k.user_id == user]


@given(
    st.lists(
        st.tuples(st.sampled_from(["connect", "disconnect", "tick"]), _users, _steps), max_size=60
    )
)
def test_presence_expires_as_a_whole_table_scan_would(ops: list[tuple[str, str, float]]) -> None:
    p = PresenceTracker(grace=5.0)
    ref = ScanningPresence(grace=5.0)
    now = 0.0
    for i, (op, user, step) in enumerate(ops):
        now += step
        if op == "connect":
            assert p.connect(user) == ref.connect(user)
        elif op == "disconnect":
            if ref.devices.get(user, 0) > 0:  # only a connection that is open closes
                assert p.disconnect(user, now, f"T{i}") == ref.disconnect(user, now, f"T{i}")
        else:
            assert p.expired(now) == ref.expired(now)
        assert p.leaving_since(user) == (ref.leaving[user][1] if user in ref.leaving else None)


@given(st.text(), st.text())
def test_direct_users_reads_back_any_pair_of_user_ids(a: str, b: str) -> None:
    assert direct_users(direct_conversation(a, b)) == tuple(sorted((a, b)))


def test_direct_users_refuses_other_keys() -> None:
    for key in [group_conversation("g"), "d:", "d:x:a:b", "d:5:ab:c", "d:1:ab", "x:1:a:b"]:
        assert direct_users(key) is None, key
