"""The HTTP API for the application's backend, under /api/v1/ on the relay's port.

Enabled when API keys are configured (`api_keys`, `api_keys_file`); else /api/ answers 404.
relay.api.keys (the keys), relay.api.backend (what each call does, over the core's parts),
relay.api.routes (HTTP: key check, bodies, JSON answers), relay.api.openapi (the document
served at /api/v1/openapi.json), relay.api.client (a sync and a Trio client, httpx).
See docs/HTTP-API.md.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from relay.api.keys import ApiKeys, enabled
from relay.errors import RelayError
from relay.ports import ConnectionHandler
from relay.transport.httpserver import RouteTable

__all__ = ["ApiKeys", "enabled", "mount"]


def mount(table: RouteTable, handler: ConnectionHandler, registry: CollectorRegistry) -> None:
    """Install the API's routes on `table` over `handler` (the messaging service), and its
    metrics on `registry`. Raises ConfigError when the keys cannot be read, RelayError when
    the handler is not the messaging service."""

    from relay.api.backend import ApiBackend
    from relay.api.routes import ApiCollector, install
    from relay.core.service import MessagingService

    if not isinstance(handler, MessagingService):
        raise RelayError("the HTTP API (api_keys) needs the messaging service as the handler")
    keys = ApiKeys.from_config(handler.config)
    install(table, ApiBackend(handler), keys)
    registry.register(ApiCollector(table))
