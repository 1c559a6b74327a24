"""RelayConfig: every setting of a relay, with its default, read from flags or the environment.

Invariant: a RelayConfig that exists is valid (validated in __attrs_post_init__); nothing
downstream re-checks ranges.
"""

from __future__ import annotations

from attrs import field, frozen

from relay.errors import ConfigError


def _positive(instance: object, attribute: object, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{getattr(attribute, 'name', attribute)} must be > 0, got {value!r}")


def _non_negative(instance: object, attribute: object, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{getattr(attribute, 'name', attribute)} must be >= 0, got {value!r}")


@frozen(kw_only=True)
class RelayConfig:
    # --- network ---
    host: str = "0.0.0.0"
    port: int = field(default=8080, validator=_non_negative)  # 0 = any free port
    certfile: str | None = None  # wss:// when set (with keyfile)
    keyfile: str | None = None

    # --- WebSocket transport ---
    max_message_bytes: int = field(default=64 * 1024, validator=_positive)
    heartbeat_interval: float = field(default=20.0, validator=_positive)
    heartbeat_timeout: float = field(default=20.0, validator=_positive)
    handshake_timeout: float = field(default=10.0, validator=_positive)
    drain_timeout: float = field(default=10.0, validator=_non_negative)
    outbox_max_bytes: int = field(default=1024 * 1024, validator=_positive)
    outbox_max_frames: int = field(default=4096, validator=_positive)
    max_connections: int = field(default=100_000, validator=_positive)

    # --- protocol ---
    auth_timeout: float = field(default=10.0, validator=_positive)
    max_text_chars: int = field(default=4096, validator=_positive)
    max_meta_bytes: int = field(default=4096, validator=_positive)
    presence_grace: float = field(default=5.0, validator=_non_negative)
    typing_lapse: float = field(default=10.0, validator=_positive)
    # token bucket per user: `rate_limit_messages` per second, bursts up to `rate_limit_burst`
    rate_limit_messages: float = field(default=50.0, validator=_positive)
    rate_limit_burst: int = field(default=200, validator=_positive)
    typing_rate_limit: float = field(default=5.0, validator=_positive)
    max_group_members: int = field(default=1000, validator=_positive)
    backlog_batch: int = field(default=500, validator=_positive)
    # peers' watermarks examined for the receipt catch-up after a device's backlog (0 = none)
    receipt_catchup: int = field(default=500, validator=_non_negative)

    # --- store ---
    db_path: str | None = "relay.db"  # None = in-memory store
    retention_days: float | None = None  # None = keep forever
    retention_max_messages: int | None = None  # per conversation; None = unlimited
    commit_interval: float = field(default=0.002, validator=_non_negative)

    # --- broker (several nodes) ---
    redis_url: str | None = None

    # --- HTTP side ---
    web_chat: bool = False
    log_level: str = "info"

    def __attrs_post_init__(self) -> None:
        if (self.certfile is None) != (self.keyfile is None):
            raise ConfigError("certfile and keyfile go together")
        if self.port > 65535:
            raise ConfigError(f"port must be <= 65535, got {self.port}")
