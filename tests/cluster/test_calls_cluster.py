"""Calls between devices on different nodes (contract v2, "Calls"; relay.cluster.calls): three
relay nodes on one PostgreSQL and one Redis, the caller on one node and the callee's devices
spread over the others (and the caller's own node). Every path a call takes on one node holds
across them: every device rings, one accepts and the others hear answered_elsewhere, signals
reach only the call's two devices, reject, hang-up, a dropped device, busy, unavailable, ring
timeout, and one stored record per call.

The users here (ava, ben, cam) are named apart from the other cluster tests': those share one
Redis, where a stopped node's presence key outlives it by its ttl, so a user held by this
file's last nodes would still look held elsewhere to the next file's first nodes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import trio
from cluster_nodes import Client, running_nodes, signed_in
from services import RedisServer, free_port
from support import http_request
from trio_websocket import open_websocket_url

from relay.app import Relay

ROOT = Path(__file__).resolve().parents[2]
OFFER = "v=0\r\ns=offer\r\n"
ANSWER = "v=0\r\ns=answer\r\n"
Frame = dict[str, Any]
#: `cluster(count=3, **overrides)`: that many nodes on this test's PostgreSQL and Redis for
#: the length of an `async with`
Cluster = Callable[..., AbstractAsyncContextManager[list[Relay]]]


@pytest.fixture
def cluster(pg_url: str, redis: RedisServer) -> Cluster:
    def nodes(count: int = 3, **overrides: Any) -> AbstractAsyncContextManager[list[Relay]]:
        return running_nodes(pg_url, redis.url, count, **overrides)

    return nodes


def is_type(kind: str, **fields: object) -> Callable[[Frame], bool]:
    return lambda f: f.get("type") == kind and all(f.get(k) == v for k, v in fields.items())


def node_id(relay: Relay) -> str:
    return relay.handler.broker.node_id  # type: ignore[union-attr]


async def holds(home: Relay, user: str, *others: Relay) -> None:
    """Wait (bounded) until `home` knows that each of `others` holds `user` (their presence
    reached it over Redis): the call's probe asks the nodes presence names."""
    presence = home.handler.broker.presence  # type: ignore[union-attr]
    wanted = {node_id(r) for r in others}
    with trio.fail_after(10):
        while not wanted <= set(presence.nodes_of(user)):  # noqa: ASYNC110 (another node's news)
            await trio.sleep(0.02)


async def invite(caller: Client, call_id: str, peer: str) -> None:
    await caller.send(type="call_invite", callId=call_id, peerId=peer, media="audio", sdp=OFFER)


async def record_of(client: Client, call_id: str) -> Frame:
    """The call's stored record as the client received it (a message with `call`), now or
    among the frames it already read."""

    def record(f: Frame) -> bool:
        return f.get("type") == "message" and (f.get("call") or {}).get("callId") == call_id

    for frame in client.seen:
        if record(frame):
            return frame
    return await client.until(record)


async def history(client: Client, peer: str) -> list[Frame]:
    await client.send(type="history", peerId=peer, ref="h")
    page = await client.until(is_type("history", ref="h"))
    messages: list[Frame] = page["messages"]
    return messages


async def test_every_device_on_every_node_rings_one_answers_the_others_stop(
    cluster: Cluster,
) -> None:
    async with (
        cluster() as (a, b, c),
        signed_in(a, "ava", "laptop") as alice,
        signed_in(a, "ben", "desk") as desk,
        signed_in(b, "ben", "phone") as phone,
        signed_in(c, "ben", "watch") as watch,
    ):
        await holds(a, "ben", b, c)
        await invite(alice, "c1", "ben")
        await alice.until(is_type("call_ringing", callId="c1"))
        for device in (desk, phone, watch):
            ringing = await device.until(is_type("call_invite", callId="c1"))
            assert (ringing["callerId"], ringing["media"], ringing["sdp"]) == (
                "ava",
                "audio",
                OFFER,
            )
        # while it rings, the caller's candidates reach every ringing device
        await alice.send(type="call_signal", callId="c1", payload={"candidate": "a1"})
        for device in (desk, phone, watch):
            signal = await device.until(is_type("call_signal", callId="c1"))
            assert signal["payload"] == {"candidate": "a1"}

        await phone.send(type="call_accept", callId="c1", sdp=ANSWER)
        accepted = await alice.until(is_type("call_accept", callId="c1"))
        assert (accepted["sdp"], accepted["deviceId"]) == (ANSWER, "phone")
        for other in (desk, watch):
            ended = await other.until(is_type("call_end", callId="c1"))
            assert ended["reason"] == "answered_elsewhere"

        # signals go between the call's two devices only, both ways
        await phone.send(type="call_signal", callId="c1", payload={"candidate": "p1"})
        got = await alice.until(is_type("call_signal", callId="c1"))
        assert got["payload"] == {"candidate": "p1"}
        await alice.send(type="call_signal", callId="c1", payload={"candidate": "a2"})
        got = await phone.until(is_type("call_signal", callId="c1"))
        assert got["payload"] == {"candidate": "a2"}
        await watch.send(type="call_signal", callId="c1", payload={"x": 1}, ref="w")
        refused = await watch.until(is_type("error", ref="w"))
        assert refused["code"] == "not_found" and refused["field"] == "callId"
        await watch.send(type="call_accept", callId="c1", sdp=ANSWER, ref="w2")
        assert (await watch.until(is_type("error", ref="w2")))["code"] == "not_found"

        await alice.send(type="call_end", callId="c1")
        assert (await phone.until(is_type("call_end", callId="c1")))["reason"] == "hangup"

        # one record, from the caller, on every device of both users, wherever they are
        for client in (alice, desk, phone, watch):
            record = await record_of(client, "c1")
            assert record["senderId"] == "ava" and record["call"]["outcome"] == "answered"
        assert [m["call"]["callId"] for m in await history(watch, "ava")] == ["c1"]


async def test_a_remote_device_rejects_and_every_other_one_stops_ringing(cluster: Cluster) -> None:
    async with (
        cluster() as (a, b, c),
        signed_in(a, "ava") as alice,
        signed_in(b, "ben", "phone") as phone,
        signed_in(c, "ben", "watch") as watch,
    ):
        await holds(a, "ben", b, c)
        await invite(alice, "r1", "ben")
        await phone.until(is_type("call_invite", callId="r1"))
        await watch.until(is_type("call_invite", callId="r1"))
        await watch.send(type="call_reject", callId="r1")
        assert (await alice.until(is_type("call_end", callId="r1")))["reason"] == "rejected"
        assert (await phone.until(is_type("call_end", callId="r1")))["reason"] == "rejected"
        record = await record_of(phone, "r1")
        assert record["call"] == {
            "callId": "r1",
            "media": "audio",
            "outcome": "rejected",
            "durationMs": 0,
        }
        # the rejecting device got no call_end of its own: its next frame is the record
        await record_of(watch, "r1")
        assert not [f for f in watch.seen if f.get("type") == "call_end"]


async def test_the_caller_hangs_up_while_remote_devices_ring(cluster: Cluster) -> None:
    async with (
        cluster() as (a, b, _),
        signed_in(a, "ava") as alice,
        signed_in(b, "ben", "phone") as phone,
    ):
        await holds(a, "ben", b)
        await invite(alice, "h1", "ben")
        await phone.until(is_type("call_invite", callId="h1"))
        await alice.send(type="call_end", callId="h1")
        assert (await phone.until(is_type("call_end", callId="h1")))["reason"] == "hangup"
        assert (await record_of(phone, "h1"))["call"]["outcome"] == "missed"


async def test_a_remote_answering_device_that_drops_ends_the_call(cluster: Cluster) -> None:
    async with cluster() as (a, b, _), signed_in(a, "ava") as alice:
        async with signed_in(b, "ben", "phone") as phone:
            await holds(a, "ben", b)
            await invite(alice, "d1", "ben")
            await phone.until(is_type("call_invite", callId="d1"))
            await phone.send(type="call_accept", callId="d1", sdp=ANSWER)
            await alice.until(is_type("call_accept", callId="d1"))
            # the callee hangs up from its end: the caller hears it
            await phone.send(type="call_end", callId="d1", ref="e")
            assert (await alice.until(is_type("call_end", callId="d1")))["reason"] == "hangup"
            await invite(alice, "d2", "ben")
            await phone.until(is_type("call_invite", callId="d2"))
            await phone.send(type="call_accept", callId="d2", sdp=ANSWER)
            await alice.until(is_type("call_accept", callId="d2"))
        # the answering device's connection closed on its node
        assert (await alice.until(is_type("call_end", callId="d2")))["reason"] == "dropped"
        for call_id in ("d1", "d2"):
            assert (await record_of(alice, call_id))["call"]["outcome"] == "answered"


async def test_a_callee_or_caller_in_a_call_on_another_node_is_busy(cluster: Cluster) -> None:
    async with (
        cluster() as (a, b, c),
        signed_in(a, "ava") as alice,
        signed_in(b, "ben") as bob,
        signed_in(c, "cam") as carol,
    ):
        await holds(c, "ben", b)
        await holds(c, "ava", a)
        await invite(alice, "first", "ben")
        await bob.until(is_type("call_invite", callId="first"))
        # bob rings for alice's call, which lives on node a: busy for carol on node c
        await invite(carol, "second", "ben")
        assert (await carol.until(is_type("call_end", callId="second")))["reason"] == "busy"
        # alice is the caller of a ringing call: busy too
        await invite(carol, "third", "ava")
        assert (await carol.until(is_type("call_end", callId="third")))["reason"] == "busy"
        assert not [f for f in bob.seen if f.get("callId") in ("second", "third")]
        for call_id in ("second", "third"):
            assert (await record_of(carol, call_id))["call"]["outcome"] == "busy"
        # the first call goes on undisturbed
        await bob.send(type="call_accept", callId="first", sdp=ANSWER)
        await alice.until(is_type("call_accept", callId="first"))


async def test_a_callee_whose_node_holds_no_device_is_unavailable(cluster: Cluster) -> None:
    async with cluster(presence_grace=30) as (a, b, _), signed_in(a, "ava") as alice:
        async with signed_in(b, "ben"):
            await holds(a, "ben", b)
        # bob's node still holds him (within the presence grace) but has no device of his
        await invite(alice, "u1", "ben")
        ended = await alice.until(is_type("call_end", callId="u1"))
        assert ended["reason"] == "unavailable"
        assert (await record_of(alice, "u1"))["call"]["outcome"] == "unavailable"


async def test_an_unanswered_call_times_out_on_every_node(cluster: Cluster) -> None:
    async with (
        cluster(call_ring_timeout=1.0) as (a, b, c),
        signed_in(a, "ava") as alice,
        signed_in(b, "ben", "phone") as phone,
        signed_in(c, "ben", "watch") as watch,
    ):
        await holds(a, "ben", b, c)
        await invite(alice, "t1", "ben")
        for client in (alice, phone, watch):
            ended = await client.until(is_type("call_end", callId="t1"))
            assert ended["reason"] == "timeout"
        for client in (alice, phone, watch):
            assert (await record_of(client, "t1"))["call"]["outcome"] == "missed"
        assert len(await history(phone, "ava")) == 1


async def test_devices_ringing_for_a_call_whose_node_died_stop_ringing(
    pg_url: str, redis: RedisServer, cluster: Cluster
) -> None:
    # the caller's node is a real `relay serve` process, killed while the call rings: nobody
    # is left to end the call, so the callee's node stops its devices itself
    port = free_port()
    home = await trio.lowlevel.open_process(
        [sys.executable, "-m", "relay", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--db", pg_url, "--redis-url", redis.url],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with trio.fail_after(15):
            while True:
                try:
                    status, _ = await http_request(
                        port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                    )
                except OSError:
                    status = 0
                if status == 200:
                    break
                await trio.sleep(0.05)
        async with (
            cluster(1, call_ring_timeout=1.0) as (b,),
            open_websocket_url(f"ws://127.0.0.1:{port}") as ws,
            signed_in(b, "ben", "phone") as phone,
        ):
            alice = Client(ws, "ava")
            await alice.send(type="auth", userId="ava")
            await alice.until(is_type("auth_ok"))
            with trio.fail_after(10):  # the home node hears that node b holds bob
                while True:
                    await alice.send(type="presence", userIds=["ben"], ref="p")
                    answer = await alice.until(is_type("presence", ref="p"))
                    if answer["users"][0]["status"] == "online":
                        break
                    await trio.sleep(0.05)
            await invite(alice, "k1", "ben")
            await phone.until(is_type("call_invite", callId="k1"))
            home.kill()
            await home.wait()
            ended = await phone.until(is_type("call_end", callId="k1"), within=20)
            assert ended["reason"] == "timeout"
    finally:
        if home.returncode is None:
            home.kill()
            with trio.CancelScope(shield=True):
                await home.wait()
