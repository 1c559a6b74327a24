"""Time as the protocol writes it: ISO-8601 UTC with milliseconds and a `Z`.

Two clocks are used by the core and both are injectable for tests: a monotonic clock for
deadlines (auth timeout, presence grace, typing lapse, rate limits) and a wall clock for the
timestamps that go on the wire and into the store.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

#: A wall clock: seconds since the Unix epoch.
WallClock = Callable[[], float]


_second_cache: list[tuple[int, str]] = [(-1, "")]  # (whole second, its "YYYY-MM-DDTHH:MM:SS")


def iso_utc(epoch: float) -> str:
    """`epoch` (seconds) as `YYYY-MM-DDTHH:MM:SS.mmmZ`, truncated to the millisecond."""
    millis = int(epoch * 1000)
    second, ms = divmod(millis, 1000)
    cached_second, prefix = _second_cache[0]
    if cached_second != second:
        prefix = f"{datetime.fromtimestamp(second, UTC):%Y-%m-%dT%H:%M:%S}"
        _second_cache[0] = (second, prefix)
    return f"{prefix}.{ms:03d}Z"
