"""ReconnectPolicy: how many times and how far apart the client tries to reach the relay again.

The original app's rule is the default: up to 5 attempts, 3 s apart on average. `backoff` > 1
grows the delay geometrically (capped at `max_delay`, never below `delay`); `jitter` in [0, 1]
spreads each delay uniformly over delay * (1 +- jitter) so that many clients dropped together
do not return together. The default jitter is DEFAULT_JITTER (a first attempt 1.5-4.5 s after
a drop): without it every client of a restarted relay would come back in the same instant.
"""

from __future__ import annotations

import random
from typing import Any

from attrs import Attribute, field, frozen

from relay.errors import ConfigError


def _non_negative(instance: object, attribute: Attribute[Any], value: float) -> None:
    if value < 0:
        raise ConfigError(f"{attribute.name} must be >= 0, got {value!r}")


def _unit(instance: object, attribute: Attribute[float], value: float) -> None:
    if not 0 <= value <= 1:
        raise ConfigError(f"jitter must be within [0, 1], got {value!r}")


def _at_least_one(instance: object, attribute: Attribute[float], value: float) -> None:
    if value < 1:
        raise ConfigError(f"backoff must be >= 1, got {value!r}")


#: the default spread of each delay, +-50%: clients dropped together return over 3 s, not at once
DEFAULT_JITTER = 0.5


@frozen(kw_only=True)
class ReconnectPolicy:
    attempts: int = field(default=5, validator=_non_negative)  # after a drop; 0 = never retry
    delay: float = field(default=3.0, validator=_non_negative)  # before the first attempt
    backoff: float = field(default=1.0, validator=_at_least_one)  # delay factor per attempt
    max_delay: float = field(default=60.0, validator=_non_negative)
    jitter: float = field(default=DEFAULT_JITTER, validator=_unit)

    def delay_before(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before reconnection attempt number `attempt` (1-based)."""
        if attempt < 1:
            raise ValueError("attempts count from 1")
        base = min(self.delay * self.backoff ** (attempt - 1), max(self.max_delay, self.delay))
        if self.jitter:
            spread = (rng or random).uniform(-self.jitter, self.jitter)
            base *= 1 + spread
        return max(0.0, base)
