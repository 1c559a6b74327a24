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


def _help(text: str) -> dict[str, str]:
    """A field's words for `relay serve --help` (every field has them: tests/test_cli.py)."""
    return {"help": text}


def _positive(instance: object, attribute: object, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{getattr(attribute, 'name', attribute)} must be > 0, got {value!r}")


def _non_negative(instance: object, attribute: object, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{getattr(attribute, 'name', attribute)} must be >= 0, got {value!r}")


def _log_format(instance: object, attribute: object, value: str) -> None:
    if value not in ("text", "json"):
        raise ConfigError(f"log_format must be text or json, got {value!r}")


def _host_port(text: str) -> tuple[str, int]:
    """(host, port) of "HOST:PORT" ("[::1]:9090" for IPv6). ConfigError when malformed."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"metrics_listen must be HOST:PORT, got {text!r}")
    return host, int(port)


_AUTH_KEY_SOURCES = ("auth_secret", "auth_secret_file", "auth_public_key_file")
_AUTH_NEEDS_KEY = ("auth_algorithms", "auth_issuer", "auth_audience")


@frozen(kw_only=True)
class RelayConfig:
    # --- network ---
    host: str = field(
        default="0.0.0.0",
        metadata=_help(
            "address to listen on (relay serve: 127.0.0.1 when neither this nor token auth is "
            "set; a non-loopback address needs token auth or --insecure-no-auth)"
        ),
    )
    port: int = field(
        default=8080,
        validator=_non_negative,
        metadata=_help("TCP port to listen on (0: any free port, printed at startup)"),
    )
    certfile: str | None = field(
        default=None, metadata=_help("TLS certificate chain (PEM): serve wss:// (needs keyfile)")
    )
    keyfile: str | None = field(default=None, metadata=_help("TLS private key (PEM) of certfile"))

    # --- WebSocket transport ---
    max_message_bytes: int = field(
        default=64 * 1024,
        validator=_positive,
        metadata=_help("largest WebSocket message accepted, bytes (a larger one closes with 1009)"),
    )
    heartbeat_interval: float = field(
        default=20.0,
        validator=_positive,
        metadata=_help("seconds between the relay's WebSocket pings"),
    )
    heartbeat_timeout: float = field(
        default=20.0,
        validator=_positive,
        metadata=_help("seconds of silence after a ping before the connection is closed (1011)"),
    )
    handshake_timeout: float = field(
        default=10.0,
        validator=_positive,
        metadata=_help("seconds a client has to complete the HTTP / WebSocket handshake"),
    )
    drain_timeout: float = field(
        default=10.0,
        validator=_non_negative,
        metadata=_help(
            "seconds connections get to finish on shutdown (SIGTERM/SIGINT) before they are cut"
        ),
    )
    outbox_max_bytes: int = field(
        default=1024 * 1024,
        validator=_positive,
        metadata=_help(
            "bytes queued to one connection before it is closed as a slow consumer (1013)"
        ),
    )
    outbox_max_frames: int = field(
        default=4096,
        validator=_positive,
        metadata=_help(
            "frames queued to one connection before it is closed as a slow consumer (1013)"
        ),
    )
    max_connections: int = field(
        default=100_000,
        validator=_positive,
        metadata=_help("connections served at once; more are refused"),
    )

    # --- protocol ---
    auth_timeout: float = field(
        default=10.0,
        validator=_positive,
        metadata=_help("seconds a new connection has to send `auth` (else it is closed with 1008)"),
    )
    max_text_chars: int = field(
        default=4096,
        validator=_positive,
        metadata=_help("longest message `text`, characters (a longer one fails with too_long)"),
    )
    max_meta_bytes: int = field(
        default=4096, validator=_positive, metadata=_help("largest message `meta`, bytes as JSON")
    )
    presence_grace: float = field(
        default=5.0,
        validator=_non_negative,
        metadata=_help("seconds a user's last device may be gone before `offline` is announced"),
    )
    typing_lapse: float = field(
        default=10.0,
        validator=_positive,
        metadata=_help(
            "seconds after which a typing `start` that was not refreshed becomes `stop`"
        ),
    )
    # token bucket per user: `rate_limit_messages` per second, bursts up to `rate_limit_burst`
    rate_limit_messages: float = field(
        default=50.0,
        validator=_positive,
        metadata=_help("messages per second one user may send, sustained"),
    )
    rate_limit_burst: int = field(
        default=200,
        validator=_positive,
        metadata=_help("messages one user may send in a burst above the sustained rate"),
    )
    typing_rate_limit: float = field(
        default=5.0,
        validator=_positive,
        metadata=_help("typing `start` frames per second one user may send"),
    )
    max_group_members: int = field(
        default=1000, validator=_positive, metadata=_help("members a group may have")
    )
    backlog_batch: int = field(
        default=500,
        validator=_positive,
        metadata=_help(
            "stored messages fetched per batch when a device catches up after `auth_ok`"
        ),
    )
    # peers' watermarks examined for the receipt catch-up after a device's backlog (0 = none)
    receipt_catchup: int = field(
        default=500,
        validator=_non_negative,
        metadata=_help("peers' read/delivered marks examined when a device catches up (0: none)"),
    )

    # --- token auth (JWT): on when one key source is set; see relay.auth ---
    auth_secret: str | None = field(
        default=None,
        repr=False,
        metadata=_help(
            "HMAC secret of token auth (HS256/384/512); prefer RELAY_AUTH_SECRET or "
            "--auth-secret-file, as a flag is visible to other local users in the process list"
        ),
    )
    auth_secret_file: str | None = field(
        default=None,
        metadata=_help("file holding the HMAC secret of token auth (trailing newline ignored)"),
    )
    auth_public_key_file: str | None = field(
        default=None,
        metadata=_help("PEM public key or certificate of token auth (RS*/PS*/ES*/EdDSA)"),
    )
    auth_algorithms: str | None = field(
        default=None,
        metadata=_help(
            "comma-separated JWS algorithms accepted (default HS256 with a secret, the key's "
            "own with a public key)"
        ),
    )
    auth_issuer: str | None = field(
        default=None, metadata=_help("required `iss` of tokens (unset: not checked)")
    )
    auth_audience: str | None = field(
        default=None,
        metadata=_help("required `aud` of tokens (unset: a token naming an audience is refused)"),
    )
    auth_leeway: float = field(
        default=10.0,
        validator=_non_negative,
        metadata=_help("seconds of clock skew allowed on a token's exp/nbf/iat"),
    )

    # --- store ---
    db_path: str | None = field(
        default="relay.db",
        metadata=_help(
            "SQLite file of the durable store, or a postgresql://USER@HOST/DB URL for the "
            "PostgreSQL store (none: in-memory, nothing kept)"
        ),
    )
    retention_days: float | None = field(
        default=None,
        metadata=_help("SQLite store: delete messages older than this many days (none: keep)"),
    )
    retention_max_messages: int | None = field(
        default=None,
        metadata=_help(
            "SQLite store: keep at most this many messages per conversation (none: all)"
        ),
    )
    commit_interval: float = field(
        default=0.002,
        validator=_non_negative,
        metadata=_help(
            "SQLite and PostgreSQL stores: seconds the writer waits to group more messages into"
            " one commit"
        ),
    )

    # --- broker (several nodes) ---
    redis_url: str | None = field(
        default=None,
        metadata=_help(
            "redis://HOST:PORT/N: join the other relay nodes on this Redis (with a postgresql:// "
            "db_path shared by every node)"
        ),
    )

    # --- HTTP side ---
    web_chat: bool = field(default=False, metadata=_help("serve the browser chat page at /"))
    log_level: str = field(
        default="info", metadata=_help("least severe log level written to stderr")
    )

    # --- exposure and memory bounds (docs/PROTOCOL.md, "Bounds") ---
    allowed_origins: str | None = field(
        default=None,
        metadata=_help(
            "comma-separated origins (scheme://host[:port], or *) whose browser pages may "
            "open WebSockets; others get 403 (none: the relay's own origin with --web-chat, "
            "else no check)"
        ),
    )
    slow_consumer_timeout: float = field(
        default=30.0,
        validator=_positive,
        metadata=_help(
            "seconds a connection's outbox may stay over slow_consumer_bytes before it is "
            "closed as a slow consumer (1013)"
        ),
    )
    slow_consumer_bytes: int = field(
        default=64 * 1024,
        validator=_positive,
        metadata=_help("outbox bytes above which a connection counts as not reading"),
    )
    outbox_budget_bytes: int = field(
        default=256 * 1024 * 1024,
        validator=_positive,
        metadata=_help(
            "bytes all outboxes together may hold; over it the biggest are closed first (1013)"
        ),
    )
    max_connections_per_address: int = field(
        default=1024,
        validator=_positive,
        metadata=_help(
            "TCP connections one peer address may hold at once, handshakes included (429)"
        ),
    )
    handshake_rate_per_address: float = field(
        default=20.0,
        validator=_positive,
        metadata=_help(
            "TCP connections per second one peer address may open, in bursts of ten "
            "seconds' worth (429)"
        ),
    )
    limit_loopback: bool = field(
        default=False,
        metadata=_help(
            "apply the per-address caps to loopback peers too (off: behind a reverse proxy on "
            "this host every client comes from loopback)"
        ),
    )
    max_devices_per_user: int = field(
        default=100,
        validator=_positive,
        metadata=_help("connections one user may have signed in at once (more: auth_failed)"),
    )
    metrics_listen: str | None = field(
        default=None,
        metadata=_help(
            "HOST:PORT serving GET /metrics and /healthz alone, outside the joining line "
            "(none: /metrics on the main port, to loopback peers only)"
        ),
    )
    # --- bounds on what one client may cause: group changes, token lifetime ---
    # token bucket per user for group_create, group_add and group_remove (leaving is free: it
    # only ever follows a create or an add that was counted)
    group_rate_limit: float = field(
        default=1.0,
        validator=_positive,
        metadata=_help(
            "group changes (group_create, group_add, group_remove) per second one user may "
            "make, sustained (more get error rate_limited)"
        ),
    )
    group_rate_burst: int = field(
        default=20,
        validator=_positive,
        metadata=_help("group changes one user may make in a burst above the sustained rate"),
    )
    auth_max_token_lifetime: float = field(
        default=86400.0,
        validator=_non_negative,
        metadata=_help(
            "token auth: longest token lifetime accepted, seconds from its `iat` (or from now "
            "when it has none) to its `exp` (0: no maximum)"
        ),
    )
    log_format: str = field(
        default="text",
        validator=_log_format,
        metadata=_help("log line format: text, or json (one object per line, for log shippers)"),
    )

    # --- webhooks (relay.webhooks; docs/HTTP-API.md, "Webhooks") ---
    webhook_url: str | None = field(
        default=None,
        metadata=_help(
            "http(s) URL the relay POSTs `message.undelivered` events to (needs "
            "webhook_secret_file; none: no webhooks)"
        ),
    )
    webhook_secret_file: str | None = field(
        default=None,
        metadata=_help(
            "file holding the key that signs webhook requests (Relay-Signature; trailing "
            "whitespace ignored)"
        ),
    )
    webhook_delay: float = field(
        default=2.0,
        validator=_non_negative,
        metadata=_help(
            "seconds a message may wait for a device of its recipient before the recipient's "
            "`message.undelivered` event is made"
        ),
    )
    webhook_max_age: float = field(
        default=86400.0,
        validator=_positive,
        metadata=_help("seconds an event is retried before it is given up (counted as expired)"),
    )
    webhook_retry_initial: float = field(
        default=1.0,
        validator=_positive,
        metadata=_help(
            "seconds before the first retry of a failed webhook request (doubling, with "
            "jitter, up to webhook_retry_max)"
        ),
    )
    webhook_retry_max: float = field(
        default=300.0,
        validator=_positive,
        metadata=_help("longest wait, seconds, between two attempts of a webhook event"),
    )
    webhook_timeout: float = field(
        default=10.0,
        validator=_positive,
        metadata=_help("seconds a webhook request may take before it counts as failed"),
    )
    webhook_batch: int = field(
        default=100,
        validator=_positive,
        metadata=_help("events per webhook request at most"),
    )
    webhook_max_pending: int = field(
        default=100_000,
        validator=_positive,
        metadata=_help(
            "webhook events kept undelivered at most; beyond it the oldest are dropped "
            "(counted as dropped)"
        ),
    )

    # --- permessage-deflate (RFC 7692); see docs/PROTOCOL.md "Compression" ---
    compression: bool = field(
        default=True,
        metadata=_help(
            "answer a client's permessage-deflate offer (--no-compression: never compress)"
        ),
    )
    compress_min_bytes: int = field(
        default=1024,
        validator=_non_negative,
        metadata=_help("smallest frame payload the relay compresses, bytes (with compression)"),
    )
    # --- files (contract v2, "Files") ---
    max_file_bytes: int = field(
        default=25 * 1024 * 1024,
        validator=_positive,
        metadata=_help("largest file `POST /files` stores, bytes (a larger one is refused 413)"),
    )
    http_token_ttl: float = field(
        default=3600.0,
        validator=_non_negative,
        metadata=_help("seconds a session's `httpToken` stays valid after the session ends"),
    )
    files_dir: str | None = field(
        default=None,
        metadata=_help(
            "directory of uploaded files (default: `<db>.files` beside the SQLite file; with "
            "the PostgreSQL store, in its database; with --memory a temporary directory "
            "removed at exit)"
        ),
    )

    # --- the HTTP API for the application's backend (relay.api) ---
    api_keys: str | None = field(
        default=None,
        repr=False,
        metadata=_help(
            "API keys of the HTTP API under /api/v1/, comma-separated (with none here nor in "
            "api_keys_file, /api/ answers 404); prefer RELAY_API_KEYS or --api-keys-file, as "
            "a flag is visible to other local users in the process list"
        ),
    )
    api_keys_file: str | None = field(
        default=None,
        metadata=_help(
            "file of HTTP API keys, one per line (blank lines and # comments ignored); "
            "re-read when it changes"
        ),
    )

    # --- calls (issue 18): ring timeout and the ICE servers handed out in auth_ok ---
    call_ring_timeout: float = field(
        default=30.0,
        validator=_positive,
        metadata=_help("seconds a call may ring unanswered before both sides get `timeout`"),
    )
    stun_urls: str | None = field(
        default=None,
        metadata=_help(
            "comma-separated STUN URLs for calls (stun:host:3478), sent in auth_ok iceServers"
        ),
    )
    turn_urls: str | None = field(
        default=None,
        metadata=_help(
            "comma-separated TURN URLs for calls (turn:host:3478?transport=udp, turns:...); "
            "needs turn_secret"
        ),
    )
    turn_secret: str | None = field(
        default=None,
        repr=False,
        metadata=_help(
            "the TURN server's shared secret (coturn static-auth-secret, use-auth-secret): "
            "each auth_ok carries credentials made with it; prefer RELAY_TURN_SECRET"
        ),
    )
    turn_credential_ttl: float = field(
        default=86400.0,
        validator=_positive,
        metadata=_help("seconds a TURN credential handed out in auth_ok stays valid"),
    )

    def __attrs_post_init__(self) -> None:
        self._check_webhooks()
        if (self.certfile is None) != (self.keyfile is None):
            raise ConfigError("certfile and keyfile go together")
        if self.port > 65535:
            raise ConfigError(f"port must be <= 65535, got {self.port}")
        if self.redis_url is not None and not self.redis_url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ConfigError(
                f"redis_url must be a redis://HOST:PORT/N URL, got {self.redis_url!r}"
            )
        if self.redis_url is not None and not (self.db_path or "").startswith(
            ("postgresql://", "postgres://")
        ):
            raise ConfigError(
                "redis_url: the nodes of one relay share one PostgreSQL store; give "
                "--db postgresql://USER@HOST/DB with --redis-url (a node on its own SQLite or "
                "memory store cannot join the others)"
            )
        self._check_auth()
        if self.metrics_listen is not None:
            _host_port(self.metrics_listen)
        self._check_ice()

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """(host, port) of `metrics_listen`; None when unset."""
        return None if self.metrics_listen is None else _host_port(self.metrics_listen)

    @property
    def origins(self) -> frozenset[str]:
        """`allowed_origins` as lower-cased origins without a trailing slash."""
        if self.allowed_origins is None:
            return frozenset()
        parts = (o.strip().lower().rstrip("/") for o in self.allowed_origins.split(","))
        return frozenset(p for p in parts if p)

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

    def _check_webhooks(self) -> None:
        # The secret file itself is read when the relay starts (relay.webhooks.sender).
        url = self.webhook_url
        if url is None:
            if self.webhook_secret_file is not None:
                raise ConfigError("webhook_secret_file needs webhook_url")
            return
        if not url.lower().startswith(("http://", "https://")) or url[-3:] == "://":
            raise ConfigError(f"webhook_url must be an http:// or https:// URL, got {url!r}")
        if not self.webhook_secret_file:
            raise ConfigError(
                "webhook_url needs webhook_secret_file: every webhook request is signed"
            )

    def _check_ice(self) -> None:
        for name, schemes in (
            ("stun_urls", ("stun:", "stuns:")),
            ("turn_urls", ("turn:", "turns:")),
        ):
            for url in _url_list(getattr(self, name)):
                if not url.startswith(schemes):
                    raise ConfigError(f"{name}: {url!r} must start with {' or '.join(schemes)}")
        if self.turn_urls is not None and not self.turn_secret:
            raise ConfigError("turn_urls needs turn_secret (the TURN server's shared secret)")
        if self.turn_secret == "":
            raise ConfigError("turn_secret is set but empty")

    @property
    def stun_url_list(self) -> tuple[str, ...]:
        """`stun_urls` split at commas, blanks dropped."""
        return _url_list(self.stun_urls)

    @property
    def turn_url_list(self) -> tuple[str, ...]:
        """`turn_urls` split at commas, blanks dropped."""
        return _url_list(self.turn_urls)


def _url_list(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    return tuple(part.strip() for part in text.split(",") if part.strip())
