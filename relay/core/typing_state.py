"""Typing indicators (sans-IO): who is typing to whom, when a `start` lapses, and the rate limit.

A target is a 1:1 peer (`recipient_id`) or a group (`group_id`). Invariants:
- a (user, target) pair is active from a forwarded `start` until a `stop`, the lapse
  (`lapse` seconds after the last `start`, refreshes included) or the user's last device leaving;
- `start` frames are rate-limited per user (`rate` per second, bursts of `burst`); a start over
  the limit is dropped entirely (nothing forwarded, no refresh);
- `stop` is never rate-limited but is forwarded only for an active pair, so every forwarded
  `start` is followed by exactly one `stop` (from the user, the lapse, or the disconnect);
- `lapsed(now)` examines only the pairs due by `now` (relay.core.expiry), not every active one;
  `clear_user` and `keys_of` only the user's own: `_by_user[u]` holds exactly u's active pairs
  (in the order they became active), and no user without one has an entry.
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
    _by_user: dict[str, dict[TypingKey, None]] = field(factory=dict, init=False)
    _limiter: RateLimiter = field(init=False)

    def __attrs_post_init__(self) -> None:
        burst = self.burst if self.burst > 0 else max(1.0, self.rate)
        self._limiter = RateLimiter(self.rate, burst)

    def start(self, key: TypingKey, now: float) -> bool:
        """A `start` from the user; True when it is to be forwarded (within the rate limit)."""
        if not self._limiter.allow(key.user_id, now):
            return False
        self._deadlines.put(key, now + self.lapse, None)
        self._by_user.setdefault(key.user_id, {})[key] = None
        return True

    def stop(self, key: TypingKey) -> bool:
        """A `stop` from the user; True when the pair was active (the stop is to be forwarded)."""
        if not self._deadlines.remove(key):
            return False
        self._forget(key)
        return True

    def lapsed(self, now: float) -> list[TypingKey]:
        """Pairs whose `start` was not refreshed in time; they are no longer active."""
        gone = [key for key, _ in self._deadlines.due(now)]
        for key in gone:
            self._forget(key)
        self._limiter.prune(now)
        return gone

    def clear_user(self, user_id: str) -> list[TypingKey]:
        """The user left: every pair of theirs ends (recipients get `stop`)."""
        keys = self._by_user.pop(user_id, None)
        if keys is None:
            return []
        for key in keys:
            self._deadlines.remove(key)
        return list(keys)

    def keys_of(self, user_id: str) -> list[TypingKey]:
        return list(self._by_user.get(user_id, ()))

    def _forget(self, key: TypingKey) -> None:
        """`key` is no longer active: out of its user's pairs (and the user out when it was
        the last)."""
        keys = self._by_user[key.user_id]
        del keys[key]
        if not keys:
            del self._by_user[key.user_id]

    def active(self, key: TypingKey) -> bool:
        return key in self._deadlines
