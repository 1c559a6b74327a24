"""RelayConfig: every setting of a relay, with its default, read from flags or the environment.

Invariant: a RelayConfig that exists is valid (validated in __attrs_post_init__); nothing
downstream re-checks ranges. Token auth settings are checked here for consistency (one key
source, nothing that needs a key without one); the key material itself (files, PEM, algorithm
and key length) is checked when the authenticator is built from the config
(relay.auth.authenticator_from_config), before the relay accepts a connection.

`auth_secret` is kept out of repr(), so a logged or printed config never shows it.
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


_AUTH_KEY_SOURCES = ("auth_secret", "auth_secret_file", "auth_public_key_file")
_AUTH_NEEDS_KEY = ("auth_algorithms", "auth_issuer", "auth_audience")


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

    # --- token auth (JWT): on when one key source is set; see relay.auth ---
    auth_secret: str | None = field(default=None, repr=False)  # HMAC secret (HS256/384/512)
    auth_secret_file: str | None = None  # file holding the HMAC secret (trailing newline ignored)
    auth_public_key_file: str | None = None  # PEM public key or certificate (RS*/PS*/ES*/EdDSA)
    auth_algorithms: str | None = None  # comma-separated; None: HS256, or the key's own algorithm
    auth_issuer: str | None = None  # required `iss` when set
    auth_audience: str | None = None  # required `aud` when set
    auth_leeway: float = field(default=10.0, validator=_non_negative)  # seconds, exp/nbf/iat

    # --- store ---
    db_path: str | None = "relay.db"  # None = in-memory store
    retention_days: float | None = None  # None = keep forever
    retention_max_messages: int | None = None  # per conversation; None = unlimited
    commit_interval: float = field(default=0.002, validator=_non_negative)

    # --- broker (several nodes) ---
    # Reserved: several nodes sharing one Redis are not built yet, so a value is refused at
    # startup (__attrs_post_init__) rather than silently running one node alone.
    redis_url: str | None = None

    # --- HTTP side ---
    web_chat: bool = False
    log_level: str = "info"

    def __attrs_post_init__(self) -> None:
        if (self.certfile is None) != (self.keyfile is None):
            raise ConfigError("certfile and keyfile go together")
        if self.port > 65535:
            raise ConfigError(f"port must be <= 65535, got {self.port}")
        if self.redis_url is not None:
            raise ConfigError(
                "redis_url: several relay nodes sharing one Redis are not supported by this "
                "version; run one node (unset --redis-url / RELAY_REDIS_URL)"
            )
        self._check_auth()

    @property
    def token_auth(self) -> bool:
        """Whether auth frames must carry a valid token (a key source is configured)."""
        return any(getattr(self, name) is not None for name in _AUTH_KEY_SOURCES)

    def _check_auth(self) -> None:
        # Messages name settings, never the secret's value.
        sources = [name for name in _AUTH_KEY_SOURCES if getattr(self, name) is not None]
        if len(sources) > 1:
            raise ConfigError(
                f"token auth takes one key source, got {' and '.join(sources)}: an HMAC secret "
                "(auth_secret or auth_secret_file) or a public key (auth_public_key_file)"
            )
        for name in (*_AUTH_KEY_SOURCES, *_AUTH_NEEDS_KEY):
            if getattr(self, name) == "":
                raise ConfigError(f"{name} is set but empty")
        if not sources:
            for name in _AUTH_NEEDS_KEY:
                if getattr(self, name) is not None:
                    raise ConfigError(
                        f"{name} needs token auth: set auth_secret, auth_secret_file "
                        "or auth_public_key_file"
                    )
