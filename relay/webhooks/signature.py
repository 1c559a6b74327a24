"""Webhook signatures: `Relay-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.

The key is the secret as the relay reads it from `--webhook-secret-file`: the file's bytes less
trailing whitespace (so a file written by `echo` or an editor's final newline signs the same).
`verify` is what a backend calls on each POST it receives; it imports nothing but the standard
library and relay.errors, so a backend can use it without Trio or httpx being imported.

Invariants: `verify(key, body, sign(key, body, t))` holds for every key, body and t within the
tolerance; verification compares in constant time and accepts any one of several `v1` values
(a relay may send one per key while keys are rotated); the timestamp is signed with the body,
so a captured request cannot be replayed outside the tolerance.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time

from relay.errors import ConfigError, WebhookSignatureError

#: the HTTP header carrying the signature
SIGNATURE_HEADER = "Relay-Signature"
#: how far (seconds) a signature's `t` may be from the receiver's clock, by default
DEFAULT_TOLERANCE = 300.0


def webhook_key(secret: str | bytes) -> bytes:
    """The HMAC key of `secret`: its bytes (UTF-8 for a str) less trailing whitespace."""
    raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    return raw.rstrip()


def read_secret_file(path: str | os.PathLike[str]) -> bytes:
    """The HMAC key in the file at `path` (webhook_key of its content). ConfigError, naming
    the file but never its content, when it cannot be read or holds only whitespace."""
    try:
        with open(path, "rb") as f:
            content = f.read()
    except OSError as exc:
        raise ConfigError(f"webhook_secret_file {os.fspath(path)!r}: {exc.strerror}") from None
    key = webhook_key(content)
    if not key:
        raise ConfigError(f"webhook_secret_file {os.fspath(path)!r} is empty")
    return key


def sign(secret: str | bytes, body: bytes, timestamp: int) -> str:
    """The `Relay-Signature` value of `body` sent at `timestamp` (unix seconds)."""
    digest = hmac.new(webhook_key(secret), b"%d." % timestamp + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(
    secret: str | bytes,
    body: bytes,
    header: str | None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> int:
    """Check a webhook request: `body` its raw bytes (before any JSON parsing), `header` its
    `Relay-Signature` value, `secret` the webhook secret (as in the relay's secret file; trailing
    whitespace is ignored). Returns the signed timestamp; raises WebhookSignatureError when the
    header is missing or malformed, no `v1` matches, or `t` is more than `tolerance` seconds
    from `now` (default: this machine's clock)."""
    if not header:
        raise WebhookSignatureError(f"no {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise WebhookSignatureError(f"malformed {SIGNATURE_HEADER} header")
        if name == "t":
            if not value.isascii() or not value.isdigit():
                raise WebhookSignatureError(f"{SIGNATURE_HEADER}: t is not unix seconds")
            timestamp = int(value)
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise WebhookSignatureError(f"{SIGNATURE_HEADER} needs t and v1")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookSignatureError(
            f"{SIGNATURE_HEADER}: t is {current - timestamp:+.0f} s from now "
            f"(tolerance {tolerance:g} s)"
        )
    expected = sign(secret, body, timestamp).partition(",v1=")[2]
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise WebhookSignatureError(f"{SIGNATURE_HEADER}: no v1 matches the body")
    return timestamp
