"""SIGKILL one of three relay processes under load from eight senders: every acknowledged
message reaches its recipient, in seq order, once its devices reconnected to the surviving
nodes; nothing acknowledged is lost.

Each node is a real `relay serve` process on one PostgreSQL and one Redis. Senders and
receivers are plain WebSocket clients that move to the next node when theirs dies and resend
what was not acknowledged (with the same ids, so a message the dead node stored is answered
with its stored seq, not stored twice)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from services import RedisServer, free_port
from support import http_request
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

ROOT = Path(__file__).resolve().parents[2]
SENDERS = 8
PER_SENDER = 60


class Node:
    def __init__(self, pg_url: str, redis_url: str) -> None:
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "RELAY_RATE_LIMIT_MESSAGES": "10000",
            "RELAY_RATE_LIMIT_BURST": "10000",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "--host", "127.0.0.1",
             "--port", str(self.port), "--db", pg_url, "--redis-url", redis_url],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    async def ready(self) -> None:
        for _ in range(300):  # bounded: 15 s
            try:
                status, _ = await http_request(
                    self.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                )
                if status == 200:
                    return
            except OSError:
                pass
            await trio.sleep(0.05)
        raise AssertionError(f"node on {self.port} did not become healthy")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def nodes(pg_url: str, redis: RedisServer) -> Iterator[list[Node]]:
    started = [Node(pg_url, redis.url) for _ in range(3)]
    yield started
    for node in started:
        node.stop()


DROPPED = (ConnectionClosed, HandshakeError, OSError, trio.BrokenResourceError)


async def sender(i: int, urls: list[str], acked: dict[str, int], first_acks: trio.Event) -> None:
    """Send PER_SENDER messages to r<i>, moving to the next node on a drop and resending
    what was not acknowledged, until every message is acknowledged."""
    ids = [f"s{i}-{n}" for n in range(PER_SENDER)]
    at = i % len(urls)
    while len(acked) < PER_SENDER:
        try:
            async with open_websocket_url(urls[at]) as ws:
                await ws.send_message(json.dumps({"type": "auth", "userId": f"s{i}"}))
                unacked = [m for m in ids if m not in acked]
                for mid in unacked:
                    await ws.send_message(json.dumps({"type": "message", "id": mid,
                                                      "recipientId": f"r{i}", "text": mid}))  # fmt: skip
                    await trio.sleep(0.005)  # a steady load rather than one burst
                while len(acked) < PER_SENDER:
                    frame = json.loads(await ws.get_message())
                    if frame.get("type") != "receipt" or frame.get("status") not in (
                        "sent",
                        "failed",
                    ):
                        continue
                    if frame["status"] == "sent":
                        acked[frame["id"]] = frame["seq"]
                        if len(acked) >= 10:
                            first_acks.set()
                    else:  # refused while a node noticed a loss: resend on the next round
                        raise trio.BrokenResourceError
        except DROPPED:
            at = (at + 1) % len(urls)
            await trio.sleep(0.05)


async def receiver(
    i: int, urls: list[str], acked: dict[str, int], done: trio.Event, log: list[list[Any]]
) -> None:
    """r<i>'s one device: reconnects to the next node on a drop; every connection's messages
    are kept (log), until it has every message its sender got acknowledged."""
    at = (i + 1) % len(urls)
    seen: set[str] = set()
    while not (done.is_set() and set(acked) <= seen):
        connection: list[Any] = []
        log.append(connection)
        try:
            async with open_websocket_url(urls[at]) as ws:
                await ws.send_message(
                    json.dumps({"type": "auth", "userId": f"r{i}", "deviceId": "watch"})
                )
                while not (done.is_set() and set(acked) <= seen):
                    with trio.move_on_after(0.2):
                        frame = json.loads(await ws.get_message())
                        if frame.get("type") == "message":
                            connection.append((frame["seq"], frame["id"]))
                            seen.add(frame["id"])
        except DROPPED:
            at = (at + 1) % len(urls)
            await trio.sleep(0.05)


@pytest.mark.slow
async def test_sigkill_a_node_under_load_loses_no_acknowledged_message(
    nodes: list[Node],
) -> None:
    for node in nodes:
        await node.ready()
    urls = [node.url for node in nodes]
    acked: list[dict[str, int]] = [{} for _ in range(SENDERS)]
    logs: list[list[list[Any]]] = [[] for _ in range(SENDERS)]
    done = trio.Event()
    first = [trio.Event() for _ in range(SENDERS)]
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            for i in range(SENDERS):
                nursery.start_soon(receiver, i, urls, acked[i], done, logs[i])
            await trio.sleep(0.5)  # the receivers are signed in
            async with trio.open_nursery() as senders:
                for i in range(SENDERS):
                    senders.start_soon(sender, i, urls, acked[i], first[i])
                for event in first:
                    await event.wait()
                nodes[0].process.kill()  # SIGKILL, mid-load
                at_kill = sum(len(a) for a in acked)
            done.set()
    assert at_kill < SENDERS * PER_SENDER  # the node died while messages were in flight
    repeats = 0
    for i in range(SENDERS):
        # every message was acknowledged once, with gapless seqs in the conversation
        assert sorted(acked[i].values()) == list(range(1, PER_SENDER + 1))
        delivered = {mid: seq for connection in logs[i] for seq, mid in connection}
        assert delivered == acked[i], f"r{i}"
        for connection in logs[i]:
            seqs = [seq for seq, _ in connection]
            # in seq order, without a repeat, on each connection
            assert seqs == sorted(set(seqs)), f"r{i}: {seqs}"
        every = [seq for connection in logs[i] for seq, _ in connection]
        repeats += len(every) - len(set(every))
        if len(logs[i]) == 1:  # never moved: each message exactly once
            assert len(every) == len(set(every)), f"r{i}"
    # a device that moved may be given again what it had before the kill but its node had not
    # yet recorded as delivered (the client drops a seq it has: relay.client does)
    print(f"acknowledged before the kill: {at_kill}; repeated after a move: {repeats}")


async def presence_of(url: str, asker: str, user: str) -> str:
    async with open_websocket_url(url) as ws:
        await ws.send_message(json.dumps({"type": "auth", "userId": asker}))
        await ws.send_message(json.dumps({"type": "presence", "userIds": [user], "ref": "q"}))
        while True:
            frame = json.loads(await ws.get_message())
            if frame.get("type") == "presence":
                return str(frame["users"][0]["status"])


async def presence_becomes(url: str, user: str, status: str, within: float) -> bool:
    """Ask (bounded, every 0.2 s) until `user` has `status`."""
    for _ in range(int(within / 0.2)):
        if await presence_of(url, "amy", user) == status:
            return True
        await trio.sleep(0.2)
    return False


@pytest.mark.slow
async def test_a_dead_nodes_users_go_offline_on_the_others(nodes: list[Node]) -> None:
    for node in nodes:
        await node.ready()
    async with open_websocket_url(nodes[0].url) as zed:
        await zed.send_message(json.dumps({"type": "auth", "userId": "zed"}))
        await zed.get_message()  # auth_ok
        # the other nodes read zed's node's key within 1 s
        assert await presence_becomes(nodes[1].url, "zed", "online", within=10)
        nodes[0].process.kill()
        # its key expires 3 s after its last refresh
        assert await presence_becomes(nodes[2].url, "zed", "offline", within=15)
