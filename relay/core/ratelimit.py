"""Token buckets per key (user id): `rate` tokens per second, holding at most `burst`.

Sans-IO: the caller passes the monotonic time. A key's bucket starts full; a bucket that has
refilled completely carries no information and is pruned, so memory follows active users only:
`prune` examines a bounded slice of the buckets per call (relay.rounds), so a bucket full again
is dropped within one pass over the table, and no call's work grows with the users.

RateLimiter keeps a key's bucket as two floats in two tables (its tokens, and when they were
counted), not as a TokenBucket (the reference model its tests hold it to): a float is no
container, so the collector never walks it. A TokenBucket per key, made again after each
prune, was walked by a young collection and promoted, then walked by the middle ones until
it died: at 10,000 connections (bench `sparse`) 1,000-1,250 of the 18,000-22,600 objects of
each young collection. (A tuple per bucket, replaced at each use, made it a quarter.)
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
    """One token bucket per key, all with the same rate and burst (see the module doc)."""

    rate: float
    burst: float
    _tokens: dict[str, float] = field(factory=dict, init=False)  # key -> its bucket's tokens
    _updated: dict[str, float] = field(factory=dict, init=False)  # key -> when they were counted
    _rounds: Rounds[str] = field(factory=Rounds, init=False)

    def allow(self, key: str, now: float, cost: float = 1.0) -> bool:
        """TokenBucket.take for `key`'s bucket, inlined: it runs once per message."""
        tokens = self._tokens.get(key)
        if tokens is None:
            tokens = self.burst
            self._updated[key] = now
        else:
            updated = self._updated[key]
            if now > updated:
                tokens = min(self.burst, tokens + (now - updated) * self.rate)
                self._updated[key] = now
        if tokens >= cost:
            self._tokens[key] = tokens - cost
            return True
        self._tokens[key] = tokens
        return False

    def prune(self, now: float) -> int:
        """Forget the buckets full again among the next slice of a pass over them (at most
        Rounds.size examined); returns how many were dropped."""
        all_tokens = self._tokens
        all_updated = self._updated
        burst = self.burst
        dropped = 0
        for key in self._rounds.next(all_tokens):
            tokens = all_tokens.get(key)
            if tokens is None:
                continue
            updated = all_updated[key]
            if now > updated:  # refilled, as TokenBucket.refill does
                tokens = all_tokens[key] = min(burst, tokens + (now - updated) * self.rate)
                all_updated[key] = now
            if tokens >= burst:
                del all_tokens[key]
                del all_updated[key]
                dropped += 1
        return dropped

    def __len__(self) -> int:
        return len(self._tokens)
