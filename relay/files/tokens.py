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
"""

from __future__ import annotations

import secrets
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
    # (expiry, token) of released tokens, in release order
    _released: deque[tuple[float, str]] = field(factory=deque, init=False)

    def issue(self, user_id: str, session: Hashable) -> str:
        """A new token for `user_id`, valid while `session` lives."""
        token = secrets.token_urlsafe(32)
        self._tokens[token] = (user_id, _LIVE)
        self._sessions[session] = token
        return token

    def release(self, session: Hashable, now: float) -> None:
        """`session` ended: its token stays valid `ttl` seconds more."""
        token = self._sessions.pop(session, None)
        if token is not None and token in self._tokens:
            user, _ = self._tokens[token]
            self._tokens[token] = (user, now + self.ttl)
            self._released.append((now + self.ttl, token))

    def user_of(self, token: str, now: float) -> str | None:
        found = self._tokens.get(token)
        if found is None or found[1] <= now:
            return None
        return found[0]

    def prune(self, now: float) -> None:
        released = self._released
        while released and released[0][0] <= now:
            _, token = released.popleft()
            self._tokens.pop(token, None)
