"""relay: a real-time messaging relay for Trio (WebSocket, store-and-forward, presence, groups).

The embedding API: `Relay(RelayConfig(...))`, `await nursery.start(relay.serve)`; see relay.app.
`Relay` is imported on first use, so that importing a sans-IO module (relay.protocol, ...)
does not import trio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from relay.config import RelayConfig
from relay.errors import (
    ClientError,
    ConfigError,
    Conflict,
    ConnectionLost,
    FrameError,
    NotFound,
    RelayError,
    StoreError,
    StoreUnavailable,
)

__all__ = [
    "ClientError",
    "ConfigError",
    "Conflict",
    "ConnectionLost",
    "FrameError",
    "NotFound",
    "Relay",
    "RelayConfig",
    "RelayError",
    "StoreError",
    "StoreUnavailable",
]

if TYPE_CHECKING:
    from relay.app import Relay


def __getattr__(name: str) -> Any:
    if name == "Relay":
        from relay.app import Relay

        return Relay
    raise AttributeError(f"module 'relay' has no attribute {name!r}")
