"""Helpers of the HTTP API tests (tests/api): a relay with API keys over loopback, httpx
clients of it, and WebSocket users (trio-websocket) to watch what the API does reach."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import trio
from support import TEST_DEFAULTS
from trio_websocket import WebSocketConnection, open_websocket_url

from relay import Relay, RelayConfig
from relay.core import MessagingService
from relay.store.base import Store
from relay.store.memory import MemoryStore

KEY = "test-key-0123456789abcdef"
OTHER_KEY = "second-key"
WAIT = 2.0


async def start_api_relay(
    nursery: trio.Nursery, store: Store | None = None, **overrides: Any
) -> Relay:
    """A started Relay (MessagingService over `store`, default in memory) with the API on."""
    config = RelayConfig(**{**TEST_DEFAULTS, "api_keys": f"{KEY},{OTHER_KEY}", **overrides})
    relay = Relay(config, handler=MessagingService(config, store or MemoryStore()))
    await nursery.start(relay.serve)
    return relay


def base_url(relay: Relay) -> str:
    assert relay.address is not None
    return f"http://127.0.0.1:{relay.address.port}"


@asynccontextmanager
async def api_client(relay: Relay, key: str | None = KEY) -> AsyncIterator[httpx.AsyncClient]:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base_url(relay), headers=headers) as client:
        yield client


class User:
    """One WebSocket device; frames not asked for yet wait in `pending`."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.pending: list[dict[str, Any]] = []

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_message(orjson.dumps(frame).decode())

    async def raw(self) -> str:
        """The next frame's text as it came over the wire."""
        message = await self.ws.get_message()
        assert isinstance(message, str)
        return message

    async def expect(self, kind: str, **match: Any) -> dict[str, Any]:
        def fits(frame: dict[str, Any]) -> bool:
            return frame.get("type") == kind and all(frame.get(k) == v for k, v in match.items())

        for i, frame in enumerate(self.pending):
            if fits(frame):
                return self.pending.pop(i)
        with trio.fail_after(WAIT):
            while True:
                frame = orjson.loads(await self.raw())
                if fits(frame):
                    return frame  # type: ignore[no-any-return]
                self.pending.append(frame)

    async def quiet(self, seconds: float, kind: str) -> list[dict[str, Any]]:
        with trio.move_on_after(seconds):
            while True:
                self.pending.append(orjson.loads(await self.raw()))
        got = [f for f in self.pending if f.get("type") == kind]
        self.pending = [f for f in self.pending if f.get("type") != kind]
        return got


@asynccontextmanager
async def user(relay: Relay, user_id: str, device: str = "d1") -> AsyncIterator[User]:
    async with open_websocket_url(relay.url) as ws:
        u = User(ws)
        await u.send({"type": "auth", "userId": user_id, "deviceId": device})
        await u.expect("auth_ok")
        yield u


async def eventually(get: Any, ready: Any, seconds: float = 2.0) -> Any:
    """`await get()` again until `ready(result)` (bounded): for what the relay writes in the
    background (watermarks, presence after the grace), which no event announces over HTTP."""
    for _ in range(int(seconds / 0.01)):
        result = await get()
        if ready(result):
            return result
        await trio.sleep(0.01)  # the relay's background work: no event to wait on over HTTP
    raise AssertionError(f"not ready after {seconds} s: {result!r}")
