"""The one exception tree of relay. Every error relay raises on purpose derives from RelayError."""

from __future__ import annotations


class RelayError(Exception):
    """Root of every error relay raises on purpose."""


class ConfigError(RelayError):
    """A setting is missing, malformed or out of range (raised before anything starts)."""


class FrameError(RelayError):
    """A client frame broke the v1 protocol; maps onto an `error` frame of the contract.

    `code` is one of the contract's error codes (bad_json, bad_frame, invalid, unknown_type, ...),
    `ref` echoes the offending frame's `id`/`ref`, `field` names the invalid field for `invalid`.
    """

    def __init__(
        self, code: str, message: str, *, ref: str | None = None, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref
        self.field = field


class StoreError(RelayError):
    """The store could not do what was asked; nothing was half-done."""


class StoreUnavailable(StoreError):
    """The database cannot be opened or written (corrupt, locked, read-only, disk full)."""


class NotFound(StoreError):
    """The record (group, conversation) does not exist."""


class Conflict(StoreError):
    """The record exists already (e.g. a group id that is taken)."""


class ClientError(RelayError):
    """Raised by the client library (relay.client)."""


class ConnectionLost(ClientError):
    """The client gave up reconnecting; the relay stayed unreachable."""


class WebhookError(RelayError):
    """Raised by the webhooks (relay.webhooks): a delivery state the policy has no move for."""


class WebhookSignatureError(WebhookError):
    """A webhook's `Relay-Signature` does not prove the body came from the relay: malformed,
    signed with another key, or timestamped outside the tolerance (relay.webhooks.verify)."""
