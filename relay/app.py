"""Relay: the embedding API — one relay inside a Trio program.

    relay = Relay(RelayConfig(host="127.0.0.1", port=0, db_path=None))
    async with trio.open_nursery() as nursery:
        address = await nursery.start(relay.serve)   # listening once this returns
        ...                                         # relay.url, relay.publish(...)
        nursery.cancel_scope.cancel()               # drains: 1012 to every client

Token auth: the default handler checks tokens when the config names a key (relay.auth); a
key file that cannot be read or a key that does not fit raises ConfigError from `serve`,
before the relay listens.

Invariants: `serve` runs at most once per Relay; the store it was given (or built) is opened
before the first connection is accepted and closed after the last one ended.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio
from attrs import define, field

from relay.api.keys import enabled as api_enabled
from relay.config import RelayConfig
from relay.errors import ConfigError, RelayError
from relay.files.service import CarriesFiles, FileService, IssuesHttpTokens
from relay.heap import trim_periodically
from relay.metrics import RelayMetrics
from relay.ports import ConnectionHandler, Lifecycle, Publisher
from relay.store.base import Store
from relay.transport.address import BoundAddress
from relay.transport.httpserver import RouteTable
from relay.transport.server import Server

if TYPE_CHECKING:
    from relay.auth import Authenticator
    from relay.webhooks.sender import WebhookSender

log = logging.getLogger("relay")


@define(eq=False)
class Relay:
    """A relay server: `await nursery.start(relay.serve)`, then `relay.url`."""

    config: RelayConfig
    handler: ConnectionHandler | None = field(default=None, kw_only=True)
    store: Store | None = field(default=None, kw_only=True)
    metrics: RelayMetrics = field(factory=RelayMetrics, kw_only=True)
    # For the default handler; None: the one the config asks for (relay.auth).
    authenticator: Authenticator | None = field(default=None, kw_only=True)
    #: routed plain HTTP (relay.transport.httpserver): parts add their prefixes and routes
    #: before `serve`; served only when some prefix is claimed
    routes: RouteTable = field(factory=RouteTable, kw_only=True)
    _server: Server | None = field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        if self.handler is not None and self.authenticator is not None:
            raise RelayError("authenticator= is for the default handler; give it to your handler")

    @property
    def address(self) -> BoundAddress | None:
        """Where the relay listens, once started (None before)."""
        return None if self._server is None else self._server.address

    @property
    def metrics_address(self) -> BoundAddress | None:
        """Where /metrics is served alone (config.metrics_listen), once started; else None."""
        return None if self._server is None else self._server.metrics_address

    @property
    def url(self) -> str:
        """ws://host:port (wss:// with a certificate) once started."""
        address = self.address
        if address is None:
            raise RelayError("the relay is not started: await nursery.start(relay.serve) first")
        return address.url

    @property
    def draining(self) -> bool:
        return self._server is not None and self._server.draining

    def _default_handler(self) -> ConnectionHandler:
        # The messaging service over the given store (opened and closed by serve), or over the
        # default store for the config (opened and closed by the service itself).
        from relay.core import MessagingService
        from relay.store import store_from_config

        auth = self.authenticator
        broker = None
        if self.config.redis_url is not None:  # one node of several (relay.cluster)
            from relay.cluster import ClusterBroker

            broker = ClusterBroker
        if self.store is not None:
            return MessagingService(
                self.config, self.store, authenticator=auth, manage_store=False, broker=broker
            )
        return MessagingService(
            self.config, store_from_config(self.config), authenticator=auth, broker=broker
        )

    async def serve(
        self, *, task_status: trio.TaskStatus[BoundAddress] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled, then drain (see relay.transport.server.Server.serve).

        `task_status.started(address)` once listening: with port 0, `address.port` and
        `relay.url` name the port actually bound."""
        if self._server is not None:
            raise RelayError("Relay.serve runs once per Relay")
        if self.handler is None:
            self.handler = self._default_handler()
        handler = self.handler
        webhooks = self._webhooks(handler)  # before anything starts: a bad secret file stops it
        files = None
        claimed = {p.prefix for p in self.routes.prefixes}
        if isinstance(handler, IssuesHttpTokens) and "/files" not in claimed:
            # file sharing (contract v2): its sessions' httpTokens authenticate /files
            files = FileService.for_config(self.config, handler.http_tokens)
            files.install(self.routes)
            if isinstance(handler, CarriesFiles):  # messages' attachments resolve through it
                handler.ctx.files = files
        if api_enabled(self.config):  # the HTTP API under /api/v1/ (relay.api)
            from relay.api import mount

            mount(self.routes, handler, self.metrics.registry)
        routes = self.routes if self.routes.prefixes else None
        server = self._server = Server(self.config, handler, self.metrics, routes=routes)
        store = self.store
        if store is not None:
            await store.open()
        try:
            lifecycle = handler if isinstance(handler, Lifecycle) else None
            if lifecycle is not None:
                await lifecycle.start()
            try:
                if files is not None:
                    await files.open()  # after the store: `<db>.files` sits beside its file
                # the webhooks and the cluster link end with the server (cancelled together)
                async with trio.open_nursery() as nursery:
                    link = self._cluster_link(handler)
                    if link is not None:  # in Redis before the first device can sign in
                        await nursery.start(link.run)
                    if webhooks is not None:
                        await nursery.start(webhooks.run)
                    # free C heap back to the system while serving (relay.heap: the
                    # store's threads' arenas keep what they free)
                    nursery.start_soon(trim_periodically)
                    await server.serve(task_status=task_status)
                    nursery.cancel_scope.cancel()
            finally:
                if lifecycle is not None:
                    with trio.CancelScope(shield=True):
                        await lifecycle.aclose()
        finally:
            if files is not None:
                with trio.CancelScope(shield=True):
                    await files.close()
            if store is not None:
                with trio.CancelScope(shield=True):
                    await store.close()

    def _cluster_link(self, handler: ConnectionHandler) -> Any:
        """The RedisLink of a node of several (config.redis_url), None for one node."""
        from relay.core import MessagingService

        url = self.config.redis_url
        if url is None or not isinstance(handler, MessagingService):
            return None
        from relay.cluster import ClusterBroker, RedisLink

        broker = handler.broker
        if not isinstance(broker, ClusterBroker):
            return None
        return RedisLink(broker, handler.store, url)

    def _webhooks(self, handler: ConnectionHandler) -> WebhookSender | None:
        """The webhook sender the config asks for (relay.webhooks), over the messaging
        service's store and router; None when webhooks are off. ConfigError when they cannot
        run: another handler, a store without WebhookOutbox, a secret file that cannot be read."""
        if self.config.webhook_url is None:
            return None
        from relay.core import MessagingService
        from relay.webhooks.sender import WebhookSender, WebhookSettings
        from relay.webhooks.stats import WebhookCollector

        settings = WebhookSettings.from_config(self.config)
        if settings is None:
            return None
        if not isinstance(handler, MessagingService):
            raise ConfigError("webhooks need the messaging service as the handler")
        connected: Callable[[str], bool] = handler.ctx.router.is_connected
        if self.config.redis_url is not None:
            from relay.cluster import ClusterBroker

            if isinstance(handler.broker, ClusterBroker):  # a device on any node counts
                connected = handler.broker.connected
        sender = WebhookSender(settings, handler.store, connected)
        self.metrics.registry.register(WebhookCollector(sender.stats))
        return sender

    async def publish(self, **message: Any) -> Any:
        """Send a message from inside the process (e.g. a system notice), through the same
        validation, store and delivery path as a client's; delegates to the handler's
        `publish` (the messaging service). Raises RelayError when the handler has none."""
        handler = self.handler
        if not isinstance(handler, Publisher):
            raise RelayError("this relay's handler cannot publish (no messaging service)")
        return await handler.publish(**message)
