"""Helpers of the several-node tests (a helper module of tests/cluster, not a test module; tests/ is on sys.path):
relays on one PostgreSQL and one Redis, and a signed-in JSON client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
from support import start_relay
from trio_websocket import WebSocketConnection, open_websocket_url

from relay.app import Relay

Frame = dict[str, Any]


async def start_nodes(
    nursery: trio.Nursery, pg_url: str, redis_url: str, count: int = 3, **overrides: Any
) -> list[Relay]:
    return [
        await start_relay(nursery, db_path=pg_url, redis_url=redis_url, **overrides)
        for _ in range(count)
    ]


class Client:
    def __init__(self, ws: WebSocketConnection, user: str) -> None:
        self.ws = ws
        self.user = user
        self.seen: list[Frame] = []

    async def send(self, **frame: Any) -> None:
        await self.ws.send_message(json.dumps(frame))

    async def next(self) -> Frame:
        frame: Frame = json.loads(await self.ws.get_message())
        self.seen.append(frame)
        return frame

    async def until(self, match: Callable[[Frame], bool], within: float = 10) -> Frame:
        """The next frame that matches (others are kept in `seen`)."""
        with trio.fail_after(within):
            while True:
                frame = await self.next()
                if match(frame):
                    return frame

    async def messages(self, count: int, within: float = 15) -> list[Frame]:
        got: list[Frame] = []
        with trio.fail_after(within):
            while len(got) < count:
                frame = await self.next()
                if frame.get("type") == "message":
                    got.append(frame)
        return got


@asynccontextmanager
async def signed_in(relay: Relay, user: str, device: str | None = None) -> AsyncIterator[Client]:
    async with open_websocket_url(relay.url) as ws:
        client = Client(ws, user)
        auth: Frame = {"type": "auth", "userId": user}
        if device is not None:
            auth["deviceId"] = device
        await client.send(**auth)
        ok = await client.until(lambda f: f["type"] in ("auth_ok", "error"))
        assert ok["type"] == "auth_ok", ok
        yield client


async def health_becomes(relay: Relay, status: int, within: float = 15) -> bytes:
    """Poll /healthz (bounded) until it answers `status`; its body."""
    from support import http_get

    for _ in range(int(within / 0.05)):
        got, body = await http_get(relay, "/healthz")
        if got == status:
            return body
        await trio.sleep(0.05)
    raise AssertionError(f"/healthz did not answer {status} within {within} s")


# --- nodes for the length of one block (tests/cluster/test_calls_cluster.py) -----------------


@asynccontextmanager
async def running_nodes(
    pg_url: str, redis_url: str, count: int = 3, **overrides: Any
) -> AsyncIterator[list[Relay]]:
    """`count` nodes (start_nodes) in a nursery of their own, stopped when the block ends."""
    async with trio.open_nursery() as nursery:
        yield await start_nodes(nursery, pg_url, redis_url, count, **overrides)
        nursery.cancel_scope.cancel()
