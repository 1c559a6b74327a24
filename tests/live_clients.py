"""Fixtures shared by the call and encryption tests (tests/calls, tests/e2e): a real relay on
loopback, RelayClients of it, and bare WebSocket clients for the frames RelayClient would not
send. Each directory's conftest.py imports them, which is how pytest finds them there."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import orjson
import pytest
import trio
from support import start_relay, ws_connect
from trio_websocket import WebSocketConnection

from relay import Relay
from relay.client import RelayClient

#: seconds any expected frame may take on loopback; a missing one fails instead of hanging
WAIT = 5.0


class Raw:
    """A bare WebSocket client speaking JSON frames: for frames RelayClient would not send."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.auth_ok: dict[str, Any] = {}

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_message(orjson.dumps(frame).decode())

    async def expect(self, kind: str, **fields: Any) -> dict[str, Any]:
        """The next frame of type `kind` with these fields (others of that type are skipped,
        so are frames of other types)."""
        with trio.fail_after(WAIT):
            while True:
                frame = orjson.loads(await self.ws.get_message())
                if frame.get("type") == kind and all(frame.get(k) == v for k, v in fields.items()):
                    return dict(frame)


@asynccontextmanager
async def raw_client(url: str, user: str, device: str | None = None) -> AsyncIterator[Raw]:
    async with ws_connect(url) as ws:
        raw = Raw(ws)
        auth: dict[str, Any] = {"type": "auth", "userId": user}
        if device is not None:
            auth["deviceId"] = device
        await raw.send(auth)
        raw.auth_ok = await raw.expect("auth_ok")
        yield raw


@pytest.fixture
async def relay(nursery: trio.Nursery) -> Relay:
    return await start_relay(nursery)


ClientFactory = Callable[..., AbstractAsyncContextManager[RelayClient]]


@pytest.fixture
def client() -> ClientFactory:
    """`async with client(relay, "alice", "phone") as c`: a RelayClient online."""

    @asynccontextmanager
    async def open_client(
        relay: Relay, user: str, device: str | None = None, **kwargs: Any
    ) -> AsyncIterator[RelayClient]:
        async with RelayClient(relay.url, user_id=user, device_id=device, **kwargs) as c:
            with trio.fail_after(WAIT):
                await c.wait_online()
            yield c

    return open_client


@pytest.fixture
def raw() -> Callable[..., AbstractAsyncContextManager[Raw]]:
    """`async with raw(url, "alice", "phone") as r`: a bare JSON client, authenticated."""
    return raw_client


@pytest.fixture
def unauthenticated() -> Callable[[str], AbstractAsyncContextManager[Raw]]:
    """`async with unauthenticated(url) as r`: a bare JSON client that sent no auth."""

    @asynccontextmanager
    async def open_raw(url: str) -> AsyncIterator[Raw]:
        async with ws_connect(url) as ws:
            yield Raw(ws)

    return open_raw
