"""Interoperability over loopback with other clients: `websockets` (Python) and Node `ws`.

The relay must work with the clients its users run, not only with our own test clients.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import trio
from attrs import define
from support import start_relay
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from relay import Relay
from relay.echo import EchoHandler
from relay.ports import Connection

NODE_CLIENT = Path(__file__).parent.parent / "node" / "ws_client.js"
MAX = 64 * 1024


async def start_echo(nursery: trio.Nursery, **overrides: Any) -> Relay:
    overrides.setdefault("handler", EchoHandler())
    return await start_relay(nursery, **overrides)


# --- websockets (sync client, in a worker thread) -----------------------------------------------


async def test_websockets_echo_sizes_fragments_ping_and_close(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery)

    def client() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        with connect(relay.url + "/ws", max_size=None, compression=None) as ws:
            for size in (0, 125, 126, MAX):
                text = "w" * size
                ws.send(text)
                assert ws.recv(timeout=5) == text
            ws.send(["frag", "mented ", "message"])  # one message in three frames
            seen["fragmented"] = ws.recv(timeout=5)
            seen["pong"] = ws.ping(b"hb").wait(timeout=5)
            ws.close(code=4005, reason="bye")
            seen["close"] = ws.close_code
        return seen

    seen = await trio.to_thread.run_sync(client)
    assert seen == {"fragmented": "fragmented message", "pong": True, "close": 4005}


async def test_websockets_oversize_and_binary_are_closed(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery)

    def client(payload: str | bytes) -> int | None:
        with connect(relay.url, max_size=None, compression=None) as ws:
            ws.send(payload)
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=5)
            assert info.value.rcvd is not None
            return info.value.rcvd.code

    assert await trio.to_thread.run_sync(client, "x" * (MAX + 1)) == 1009
    assert await trio.to_thread.run_sync(client, b"\x00\x01") == 1003


async def test_websockets_sees_1012_on_shutdown() -> None:
    async with trio.open_nursery() as relay_nursery:
        relay = await start_echo(relay_nursery)
        connected = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def client() -> int | None:
            with connect(relay.url, compression=None) as ws:
                ws.send("hi")
                assert ws.recv(timeout=5) == "hi"
                trio.from_thread.run_sync(connected.set, trio_token=token)
                with pytest.raises(ConnectionClosed) as info:
                    ws.recv(timeout=5)
                assert info.value.rcvd is not None
                return info.value.rcvd.code

        async with trio.open_nursery() as clients:
            result: list[int | None] = []

            async def run() -> None:
                result.append(await trio.to_thread.run_sync(client))

            clients.start_soon(run)
            await connected.wait()
            relay_nursery.cancel_scope.cancel()
    assert result == [1012]


# --- Node ws ------------------------------------------------------------------------------------


async def run_node(node: str, url: str, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    result = await trio.run_process(
        [node, str(NODE_CLIENT), url, json.dumps(steps)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    events = [json.loads(line) for line in result.stdout.decode().splitlines() if line.strip()]
    assert not [e for e in events if e["event"] == "error"], events
    return events


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def test_node_ws_echo_ping_and_close(nursery: trio.Nursery, node: str) -> None:
    relay = await start_echo(nursery)
    steps: list[dict[str, Any]] = [
        {"send": ""},
        {"expect": "message"},
        {"sendRepeat": ["a", 125]},
        {"expect": "message"},
        {"sendRepeat": ["b", 126]},
        {"expect": "message"},
        {"sendRepeat": ["c", MAX]},
        {"expect": "message"},
        {"send": "héllo 👋"},
        {"expect": "message"},
        {"ping": "hb"},
        {"expect": "pong"},
        {"close": 1000, "reason": "done"},
        {"expect": "close"},
    ]
    with trio.fail_after(10):
        events = await run_node(node, relay.url, steps)
    messages = [e for e in events if e["event"] == "message"]
    assert [m["sha256"] for m in messages] == [
        sha(""),
        sha("a" * 125),
        sha("b" * 126),
        sha("c" * MAX),
        sha("héllo 👋"),
    ]
    assert [e["data"] for e in events if e["event"] == "pong"] == ["hb"]
    assert events[-1] == {"event": "close", "code": 1000, "reason": ""}


async def test_node_ws_oversize_and_binary(nursery: trio.Nursery, node: str) -> None:
    relay = await start_echo(nursery)
    with trio.fail_after(10):
        events = await run_node(node, relay.url, [{"sendRepeat": ["x", MAX + 1]}])
    assert events[-1]["event"] == "close"
    assert events[-1]["code"] == 1009
    with trio.fail_after(10):
        events = await run_node(node, relay.url + "/ws", [{"sendBinary": 3}])
    assert events[-1]["event"] == "close"
    assert events[-1]["code"] == 1003


async def test_node_ws_sees_1012_on_shutdown(node: str) -> None:
    relay_scope = trio.CancelScope()
    events: list[dict[str, Any]] = []

    echoed = trio.Event()

    @define(eq=False)
    class Notifying(EchoHandler):
        def on_flushed(self, conn: Connection) -> None:
            echoed.set()

    async def run_relay(task_status: trio.TaskStatus[Relay]) -> None:
        with relay_scope:
            async with trio.open_nursery() as inner:
                task_status.started(await start_echo(inner, handler=Notifying()))

    async def client(url: str) -> None:
        # Echo once, then wait for the server to close.
        steps = [{"send": "x"}, {"expect": "message"}, {"expect": "close"}]
        events.extend(await run_node(node, url, steps))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            relay = await nursery.start(run_relay)
            nursery.start_soon(client, relay.url)
            await echoed.wait()
            relay_scope.cancel()
    assert events[-1] == {"event": "close", "code": 1012, "reason": "service restart"}
