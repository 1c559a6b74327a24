"""HttpTokens: a token names its user while the session lives and `ttl` seconds after."""

from __future__ import annotations

from relay.files.tokens import HttpTokens


def test_a_token_lives_with_its_session_and_ttl_after() -> None:
    tokens = HttpTokens(ttl=10.0)
    ann = tokens.issue("ann", 1)
    bob = tokens.issue("bob", 2)
    assert len(ann) >= 32 and ann != bob
    assert tokens.user_of(ann, 1e9) == "ann"  # a live session's token never expires
    tokens.release(1, now=100.0)
    assert tokens.user_of(ann, 109.9) == "ann"
    assert tokens.user_of(ann, 110.0) is None
    tokens.prune(110.0)
    assert tokens.user_of(ann, 0.0) is None  # forgotten
    assert tokens.user_of(bob, 110.0) == "bob"
    assert tokens.user_of("made-up", 0.0) is None
    tokens.release(1, now=200.0)  # twice: nothing more
    assert tokens.user_of(bob, 1e9) == "bob"
