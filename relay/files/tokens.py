"""HttpTokens: the `httpToken` of each session (auth_ok), sans-IO.

A token is 32 random bytes (URL-safe base64), issued when a session signs in and valid while it
lives and `ttl` seconds after it ends (contract v2, "Session additions"). Times are the
caller's monotonic clock.

Invariants:
- a token names exactly one user; `user_of` answers None for an unknown or expired token;
- a live session's token never expires; `release` starts its `ttl` once;
- expired tokens are forgotten by `prune` (the core calls it from `tick`), so the table holds
  the live sessions plus those that ended within `ttl`; released tokens wait in release order,
  which is expiry order (one ttl, a monotonic clock), so a prune looks only at what expired.

Memory: an ended session's token is held `ttl` (1 h) after it ends, so the table grows with
the sign-in rate for an hour (`python -m bench soak`: ~110 sessions a minute, and this table
was its steady Python-heap growth). Each entry shares what it can: the user id interned (one
string per user, not one per sign-in), one expiry float for the table and the release queue,
and the queue as two deques rather than a tuple per entry: 338 -> ~200 bytes an ended session.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections import deque
from collections.abc import Callable, Hashable

from attrs import define, field

_LIVE = float("inf")


@define
class HttpTokens:
    ttl: float = 3600.0
    #: the monotonic clock the owner passes as `now` (the core's), for callers outside it
    clock: Callable[[], float] = time.monotonic
    # token -> (user, expiry; _LIVE while its session lives)
    _tokens: dict[str, tuple[str, float]] = field(factory=dict, init=False)
    # session key -> its token
    _sessions: dict[Hashable, str] = field(factory=dict, init=False)
    # released tokens and their expiries, in release order (two deques: no tuple per entry)
    _released: deque[str] = field(factory=deque, init=False)
    _expiries: deque[float] = field(factory=deque, init=False)

    def issue(self, user_id: str, session: Hashable) -> str:
        """A new token for `user_id`, valid while `session` lives."""
        token = secrets.token_urlsafe(32)
        self._tokens[token] = (sys.intern(user_id), _LIVE)
        self._sessions[session] = token
        return token

    def release(self, session: Hashable, now: float) -> None:
        """`session` ended: its token stays valid `ttl` seconds more."""
        token = self._sessions.pop(session, None)
        if token is not None and token in self._tokens:
            user, _ = self._tokens[token]
            expiry = now + self.ttl
            self._tokens[token] = (user, expiry)
            self._released.append(token)
            self._expiries.append(expiry)

    def user_of(self, token: str, now: float) -> str | None:
        found = self._tokens.get(token)
        if found is None or found[1] <= now:
            return None
        return found[0]

    def prune(self, now: float) -> None:
        released = self._released
        expiries = self._expiries
        while expiries and expiries[0] <= now:
            expiries.popleft()
            self._tokens.pop(released.popleft(), None)
