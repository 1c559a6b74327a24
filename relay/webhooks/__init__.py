"""Webhooks: the relay tells the application's backend about messages a user could not get.

`message.undelivered` events (relay.webhooks.events) are decided from the store by a scan
(relay.webhooks.sender), kept in the store until the backend answered 2xx (Store ability
WebhookOutbox), retried with backoff and jitter (relay.webhooks.policy) and signed
(relay.webhooks.signature). docs/HTTP-API.md, "Webhooks", is the contract.

For a backend receiving them, this package exports only the signature check (it imports
neither Trio nor httpx):

    from relay.webhooks import verify
    verify(secret, request_body, request.headers["Relay-Signature"])  # raises if forged
"""

from relay.errors import WebhookSignatureError
from relay.webhooks.signature import DEFAULT_TOLERANCE, SIGNATURE_HEADER, sign, verify

__all__ = ["DEFAULT_TOLERANCE", "SIGNATURE_HEADER", "WebhookSignatureError", "sign", "verify"]
