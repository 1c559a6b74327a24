"""ReconnectPolicy: attempts, delays, backoff and jitter (no sockets, no clock)."""

from __future__ import annotations

import random

import pytest

from relay.client import ReconnectPolicy
from relay.errors import ConfigError


def test_policy_delays() -> None:
    p = ReconnectPolicy()
    assert (p.attempts, p.delay) == (5, 3.0)
    assert [p.delay_before(n) for n in (1, 2, 5)] == [3.0, 3.0, 3.0]
    jittered = ReconnectPolicy(delay=10.0, jitter=0.5)
    rng = random.Random(7)
    samples = [jittered.delay_before(1, rng) for _ in range(200)]
    assert all(5.0 <= d <= 15.0 for d in samples)
    assert max(samples) - min(samples) > 5.0  # actually spread, not constant
    with pytest.raises(ConfigError):
        ReconnectPolicy(jitter=2.0)
    with pytest.raises(ConfigError):
        ReconnectPolicy(attempts=-1)


def test_policy_backoff_grows_to_the_cap_and_attempts_count_from_one() -> None:
    p = ReconnectPolicy(delay=1.0, backoff=2.0, max_delay=5.0)
    assert [p.delay_before(n) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    with pytest.raises(ValueError):
        p.delay_before(0)
    with pytest.raises(ConfigError, match="delay must be >= 0"):
        ReconnectPolicy(delay=-1.0)
    with pytest.raises(ConfigError, match="backoff must be >= 1"):
        ReconnectPolicy(backoff=0.5)
