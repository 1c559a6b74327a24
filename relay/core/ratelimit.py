"""Token buckets per key (user id): `rate` tokens per second, holding at most `burst`.

Sans-IO: the caller passes the monotonic time. A key's bucket starts full; a bucket that has
refilled completely carries no information and is pruned, so memory follows active users only:
`prune` examines a bounded slice of the buckets per call (relay.rounds), so a bucket full again
is dropped within one pass over the table, and no call's work grows with the users.
"""

from __future__ import annotations

from attrs import define, field

from relay.rounds import Rounds


@define
class TokenBucket:
    rate: float
    burst: float
    tokens: float
    updated: float

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend `cost` tokens if there are that many; False (nothing spent) otherwise."""
        self.refill(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


@define
class RateLimiter:
    """One TokenBucket per key, all with the same rate and burst."""

    rate: float
    burst: float
    _buckets: dict[str, TokenBucket] = field(factory=dict, init=False)
    _rounds: Rounds[str] = field(factory=Rounds, init=False)

    def allow(self, key: str, now: float, cost: float = 1.0) -> bool:
        """TokenBucket.take for `key`'s bucket, inlined: it runs once per message."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self.burst, now)
        tokens = bucket.tokens
        if now > bucket.updated:
            tokens = min(self.burst, tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        if tokens >= cost:
            bucket.tokens = tokens - cost
            return True
        bucket.tokens = tokens
        return False

    def prune(self, now: float) -> int:
        """Forget the buckets full again among the next slice of a pass over them (at most
        Rounds.size examined); returns how many were dropped."""
        buckets = self._buckets
        dropped = 0
        for key in self._rounds.next(buckets):
            bucket = buckets.get(key)
            if bucket is None:
                continue
            bucket.refill(now)
            if bucket.tokens >= bucket.burst:
                del buckets[key]
                dropped += 1
        return dropped

    def __len__(self) -> int:
        return len(self._buckets)
