"""Token buckets per key (user id): `rate` tokens per second, holding at most `burst`.

Sans-IO: the caller passes the monotonic time. A key's bucket starts full; a bucket that has
refilled completely carries no information and is pruned, so memory follows active users only.
"""

from __future__ import annotations

from attrs import define, field


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
        """Forget buckets that are full again; returns how many were dropped."""
        full = []
        for key, bucket in self._buckets.items():
            bucket.refill(now)
            if bucket.tokens >= bucket.burst:
                full.append(key)
        for key in full:
            del self._buckets[key]
        return len(full)

    def __len__(self) -> int:
        return len(self._buckets)
