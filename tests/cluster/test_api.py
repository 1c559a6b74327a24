"""The HTTP API, the webhooks and the end-to-end key directory of a cluster act on every node:
what the API does through one node reaches devices on the others, a webhook event is made and
sent once per cluster, not once per node, and keys published through one node are what another
answers (three nodes on one PostgreSQL and one Redis, real sockets, a real receiver)."""

from __future__ import annotations

import base64
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
from cluster_nodes import signed_in, start_nodes
from services import RedisServer
from trio_websocket import ConnectionClosed

from relay.app import Relay

KEY = "cluster-api-key-0123456789"


def is_type(kind: str, **fields: object):  # type: ignore[no-untyped-def]
    return lambda f: f.get("type") == kind and all(f.get(k) == v for k, v in fields.items())


@asynccontextmanager
async def api(relay: Relay) -> AsyncIterator[httpx.AsyncClient]:
    assert relay.address is not None
    base = f"http://127.0.0.1:{relay.address.port}/api/v1"
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=base, headers=headers) as client:
        yield client


async def presence_until(client: httpx.AsyncClient, user: str, devices: int) -> dict[str, Any]:
    """The user's presence once it counts `devices` devices (another node's count arrives with
    its announcement, a Redis round trip after the sign-in); bounded."""
    body: dict[str, Any] = {}
    for _ in range(200):
        answer = await client.get(f"/users/{user}/presence")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        if body["devices"] == devices:
            return body
        await trio.sleep(0.05)
    raise AssertionError(f"presence of {user} never counted {devices} device(s): {body}")


async def test_the_api_on_one_node_reaches_devices_on_the_others(
    pg_url: str, redis: RedisServer
) -> None:
    async with trio.open_nursery() as nursery:
        a, b, c = await start_nodes(nursery, pg_url, redis.url, api_keys=KEY)
        async with (
            api(a) as http,
            signed_in(b, "bob", "phone") as phone,
            signed_in(c, "bob", "laptop") as laptop,
            signed_in(c, "cat") as cat,
        ):
            # a publish through node A is delivered to bob's devices on B and C
            answer = await http.post(
                "/publish", json={"senderId": "shop", "recipientId": "bob", "text": "shipped",
                                  "id": "order-1"},
            )  # fmt: skip
            assert answer.status_code == 200, answer.text
            seq = answer.json()["seq"]
            for device in (phone, laptop):
                got = await device.until(is_type("message", id="order-1"))
                assert got["text"] == "shipped" and got["seq"] == seq
            # presence through A counts bob's devices on the other nodes
            body = await presence_until(http, "bob", 2)
            assert body["status"] == "online" and body["lastSeen"] is None
            # a group set through A: its members on the other nodes are told
            answer = await http.put(
                "/groups/crew", json={"name": "Crew", "members": ["bob", "cat"]}
            )
            assert answer.status_code == 201, answer.text
            await phone.until(is_type("group", groupId="crew"))
            await cat.until(is_type("group", groupId="crew"))
            answer = await http.post(
                "/publish", json={"senderId": "bob", "groupId": "crew", "text": "hi crew"}
            )
            assert answer.status_code == 200, answer.text
            await cat.until(is_type("message", text="hi crew"))
            # a disconnect through A closes bob's devices on B and C, with its reason
            answer = await http.post("/users/bob/disconnect", json={"reason": "suspended"})
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"userId": "bob", "closed": 2}
            for device in (phone, laptop):
                with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await device.next()
                assert closed.value.reason.code == 1008
                assert closed.value.reason.reason == "suspended"
            await presence_until(http, "bob", 0)
            # cat, who was not disconnected, still gets messages
            await http.post("/publish", json={"senderId": "shop", "recipientId": "cat",
                                              "text": "still here"})  # fmt: skip
            await cat.until(is_type("message", text="still here"))
        nursery.cancel_scope.cancel()


async def test_keys_published_through_one_node_are_fetched_through_another(
    pg_url: str, redis: RedisServer
) -> None:
    published = {
        "type": "keys_publish",
        "deviceId": "phone",
        "identityKey": base64.b64encode(b"i" * 32).decode(),
        "encKey": base64.b64encode(b"e" * 32).decode(),
        "signature": base64.b64encode(b"s" * 64).decode(),
        "ref": "p",
    }
    async with trio.open_nursery() as nursery:
        a, b, _ = await start_nodes(nursery, pg_url, redis.url)
        async with signed_in(a, "bob", "phone") as bob, signed_in(b, "ann") as ann:
            await bob.send(**published)
            await bob.until(is_type("keys", ref="p"))
            await ann.send(type="keys_get", userId="bob", ref="g")
            answer = await ann.until(is_type("keys", ref="g"))
            [device] = answer["devices"]
            assert {k: device[k] for k in ("deviceId", "identityKey", "encKey", "signature")} == {
                k: published[k] for k in ("deviceId", "identityKey", "encKey", "signature")
            }
        nursery.cancel_scope.cancel()


# --- webhooks ------------------------------------------------------------------------------------


class Receiver:
    """A webhook receiver on 127.0.0.1, port 0: records every event of every request (200)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.events.extend(orjson.loads(body)["events"])
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def got(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.events)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    thread = threading.Thread(target=rec.server.serve_forever, daemon=True)
    thread.start()
    yield rec
    rec.server.shutdown()
    rec.server.server_close()


async def test_a_webhook_event_is_sent_once_per_cluster(
    pg_url: str, redis: RedisServer, receiver: Receiver, tmp_path: Path
) -> None:
    secret = tmp_path / "webhook.secret"
    secret.write_text("whsec-cluster-0123456789\n")
    hooks = {
        "webhook_url": receiver.url,
        "webhook_secret_file": str(secret),
        "webhook_delay": 0.2,
        "webhook_retry_initial": 0.02,
        "webhook_retry_max": 0.1,
    }
    async with trio.open_nursery() as nursery:
        nodes = await start_nodes(nursery, pg_url, redis.url, **hooks)
        async with (
            signed_in(nodes[0], "ann") as ann,
            signed_in(nodes[1], "bob") as ann_on_b,
            signed_in(nodes[2], "dan") as dan,
        ):
            # messages from every node to cid (offline everywhere): one event each; to dan
            # (connected to node C only): none, whichever node scans
            senders = (ann, ann_on_b, dan)
            for i in range(30):
                sender = senders[i % 3]
                await sender.send(type="message", id=f"m{i}", recipientId="cid", text=f"{i}")
            for n, sender in enumerate(senders):
                await sender.until(is_type("receipt", status="sent", id=f"m{27 + n}"))
            for i in range(30):
                await ann.send(type="message", id=f"d{i}", recipientId="dan", text=f"{i}")
            await dan.messages(30)
            with trio.fail_after(20):
                while True:  # the receiver runs in a thread of its own: polled
                    if len({e["messageId"] for e in receiver.got()}) == 30:
                        break
                    await trio.sleep(0.05)
            # nothing left pending anywhere: every node's sender is idle, nothing more comes
            with trio.fail_after(20):
                while True:
                    store = nodes[0].handler.store  # type: ignore[union-attr]
                    if (await store.webhook_pending())[0] == 0:
                        break
                    await trio.sleep(0.05)
            got = receiver.got()
            ids = [e["messageId"] for e in got]
            assert sorted(ids) == sorted(f"m{i}" for i in range(30)), ids
            assert {e["userId"] for e in got} == {"cid"}
        nursery.cancel_scope.cancel()
