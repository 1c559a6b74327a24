"""Typing indicators (sans-IO): who is typing to whom, when a `start` lapses, and the rate limit.

A target is a 1:1 peer (`recipient_id`) or a group (`group_id`). Invariants:
- a (user, target) pair is active from a forwarded `start` until a `stop`, the lapse
  (`lapse` seconds after the last `start`, refreshes included) or the user's last device leaving;
- `start` frames are rate-limited per user (`rate` per second, bursts of `burst`); a start over
  the limit is dropped entirely (nothing forwarded, no refresh);
- `stop` is never rate-limited but is forwarded only for an active pair, so every forwarded
  `start` is followed by exactly one `stop` (from the user, the lapse, or the disconnect);
- `lapsed(now)` examines only the pairs due by `now` (relay.core.expiry), not every active one.
Typing is never stored.
"""

from __future__ import annotations

from attrs import define, field, frozen

from relay.core.expiry import Expiries
from relay.core.ratelimit import RateLimiter


@frozen
class TypingKey:
    user_id: str
    recipient_id: str | None = None
    group_id: str | None = None


@define
class TypingTracker:
    lapse: float
    rate: float
    burst: float = field(default=0.0)
    _deadlines: Expiries[TypingKey, None] = field(factory=Expiries, init=False)
    _limiter: RateLimiter = field(init=False)

    def __attrs_post_init__(self) -> None:
        burst = self.burst if self.burst > 0 else max(1.0, self.rate)
        self._limiter = RateLimiter(self.rate, burst)

    def start(self, key: TypingKey, now: float) -> bool:
        """A `start` from the user; True when it is to be forwarded (within the rate limit)."""
        if not self._limiter.allow(key.user_id, now):
            return False
        self._deadlines.put(key, now + self.lapse, None)
        return True

    def stop(self, key: TypingKey) -> bool:
        """A `stop` from the user; True when the pair was active (the stop is to be forwarded)."""
        return self._deadlines.remove(key)

    def lapsed(self, now: float) -> list[TypingKey]:
        """Pairs whose `start` was not refreshed in time; they are no longer active."""
        gone = [key for key, _ in self._deadlines.due(now)]
        self._limiter.prune(now)
        return gone

    def clear_user(self, user_id: str) -> list[TypingKey]:
        """The user left: every pair of theirs ends (recipients get `stop`)."""
        gone = [key for key in self._deadlines if key.user_id == user_id]
        for key in gone:
            self._deadlines.remove(key)
        return gone

    def keys_of(self, user_id: str) -> list[TypingKey]:
        return [key for key in self._deadlines if key.user_id == user_id]

    def active(self, key: TypingKey) -> bool:
        return key in self._deadlines
