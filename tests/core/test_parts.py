"""The small sans-IO parts on their own: token buckets, presence with grace, typing lapse."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

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


@given(st.text(), st.text())
def test_direct_users_reads_back_any_pair_of_user_ids(a: str, b: str) -> None:
    assert direct_users(direct_conversation(a, b)) == tuple(sorted((a, b)))


def test_direct_users_refuses_other_keys() -> None:
    for key in [group_conversation("g"), "d:", "d:x:a:b", "d:5:ab:c", "d:1:ab", "x:1:a:b"]:
        assert direct_users(key) is None, key
