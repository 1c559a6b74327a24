"""Webhooks end to end: a real Relay on 127.0.0.1, real WebSocket clients, and a real HTTP
receiver (conftest.py) that checks every request's signature with relay.webhooks.verify."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from support import start_relay
from trio_websocket import WebSocketConnection, open_websocket_url

from relay import Relay
from relay.webhooks import SIGNATURE_HEADER, verify

WAIT = 10.0


class Client:
    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_message(orjson.dumps(frame).decode())

    async def expect(self, kind: str, **match: Any) -> dict[str, Any]:
        with trio.fail_after(WAIT):
            while True:
                frame: dict[str, Any] = orjson.loads(await self.ws.get_message())
                if frame.get("type") == kind and all(frame.get(k) == v for k, v in match.items()):
                    return frame


@asynccontextmanager
async def connect(relay: Relay, user: str, **auth: Any) -> AsyncIterator[Client]:
    async with open_websocket_url(relay.url) as ws:
        client = Client(ws)
        await client.send({"type": "auth", "userId": user, **auth})
        await client.expect("auth_ok")
        yield client


async def send_to(client: Client, ident: str, text: str = "hi", **to: str) -> dict[str, Any]:
    """A message (to `recipientId=` or `groupId=`), once stored: its `sent` receipt."""
    await client.send({"type": "message", "id": ident, "text": text, **to})
    return await client.expect("receipt", id=ident, status="sent")


def metric(relay: Relay, name: str, **labels: str) -> float:
    """The value of one sample of the relay's /metrics text (0 when absent)."""
    text = relay.metrics.render().decode()
    label = ",".join(f'{k}="{v}"' for k, v in labels.items())
    sample = f"{name}{{{label}}}" if labels else name
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def until(check: Callable[[], bool]) -> None:
    """Wait (bounded) until `check()` holds: the relay's bookkeeping right after a response,
    which nothing outside it signals."""
    for _ in range(1000):  # 10 s at most
        if check():
            return
        await trio.sleep(0.01)
    raise AssertionError("the relay did not get there in 10 s")


def hooks(receiver: Any, secret_file: str, **overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "webhook_url": receiver.url,
        "webhook_secret_file": secret_file,
        "webhook_delay": 0.2,
        "webhook_retry_initial": 0.02,
        "webhook_retry_max": 0.1,
    }
    return {**settings, **overrides}


async def test_a_message_to_an_offline_user_makes_one_signed_event(
    receiver: Any, secret: str, secret_file: str
) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery, **hooks(receiver, secret_file))
        async with connect(relay, "ann") as ann:
            sent = await send_to(ann, "m1", "see you at 7", recipientId="bob")
            got = await receiver.next()
            verify(secret, got.body, got.headers[SIGNATURE_HEADER.lower()])  # raises if not
            assert got.headers["content-type"] == "application/json"
            [event] = got.events
            assert event == {
                "id": event["id"],
                "type": "message.undelivered",
                "createdAt": event["createdAt"],
                "userId": "bob",
                "messageId": "m1",
                "senderId": "ann",
                "peerId": "ann",
                "seq": sent["seq"],
                "preview": "see you at 7",
            }
            assert event["id"].startswith("evt_") and event["createdAt"].endswith("Z")
            # a second offline recipient: the next request carries only the new event
            await send_to(ann, "m2", "and you?", recipientId="cid")
            second = await receiver.next()
            verify(secret, second.body, second.headers[SIGNATURE_HEADER.lower()])
            assert [(e["userId"], e["messageId"]) for e in second.events] == [("cid", "m2")]
            await until(lambda: metric(relay, "relay_webhook_pending") == 0)
            assert metric(relay, "relay_webhook_deliveries_total", outcome="delivered") == 2
            assert metric(relay, "relay_webhook_events_total") == 2
        nursery.cancel_scope.cancel()


async def test_a_signature_made_with_another_key_fails_the_helper(
    receiver: Any, secret: str, secret_file: str
) -> None:
    from relay.webhooks import WebhookSignatureError

    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery, **hooks(receiver, secret_file))
        async with connect(relay, "ann") as ann:
            await send_to(ann, "m1", recipientId="bob")
            got = await receiver.next()
            header = got.headers[SIGNATURE_HEADER.lower()]
            with pytest.raises(WebhookSignatureError):
                verify("another key", got.body, header)
            with pytest.raises(WebhookSignatureError):
                verify(secret, got.body.replace(b"bob", b"eve"), header)
        nursery.cancel_scope.cancel()


async def test_a_user_who_gets_the_message_within_the_delay_makes_no_event(
    receiver: Any, secret: str, secret_file: str
) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery, **hooks(receiver, secret_file, webhook_delay=1.0))
        async with connect(relay, "ann") as ann:
            await send_to(ann, "m1", recipientId="bob")
            # bob comes online, gets it from his backlog, and is gone again before the delay
            async with connect(relay, "bob", deviceId="phone") as bob:
                await bob.expect("message", id="m1")
            # a later message to someone who stays offline: its event comes after bob's turn
            await send_to(ann, "m2", recipientId="cid")
            got = await receiver.next()
            assert [(e["userId"], e["messageId"]) for e in got.events] == [("cid", "m2")]
            await until(lambda: metric(relay, "relay_webhook_pending") == 0)
            assert [e["userId"] for e in receiver.accepted_events()] == ["cid"]
            assert metric(relay, "relay_webhook_recipients_reached_total") == 1
        nursery.cancel_scope.cancel()


async def test_a_connected_user_makes_no_event(
    receiver: Any, secret: str, secret_file: str
) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery, **hooks(receiver, secret_file))
        async with connect(relay, "ann") as ann, connect(relay, "bob") as bob:
            await send_to(ann, "m1", recipientId="bob")
            await bob.expect("message", id="m1")
            await send_to(ann, "m2", recipientId="cid")
            got = await receiver.next()
            assert [e["userId"] for e in got.events] == ["cid"]
            assert metric(relay, "relay_webhook_recipients_reached_total") == 1
        nursery.cancel_scope.cancel()


async def test_a_group_message_makes_one_event_per_offline_member(
    receiver: Any, secret: str, secret_file: str
) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery, **hooks(receiver, secret_file))
        async with connect(relay, "ann") as ann, connect(relay, "dan") as dan:
            await ann.send({"type": "group_create", "groupId": "team", "name": "Team",
                            "members": ["bob", "cid", "dan"], "ref": "g"})  # fmt: skip
            await ann.expect("group", ref="g")
            sent = await send_to(ann, "g1", "standup", groupId="team")
            await dan.expect("message", id="g1")
            events = []
            while len(events) < 2:
                events += (await receiver.next()).events
            assert sorted((e["userId"], e["groupId"], e["seq"]) for e in events) == [
                ("bob", "team", sent["seq"]),
                ("cid", "team", sent["seq"]),
            ]
            assert all("peerId" not in e and e["senderId"] == "ann" for e in events)
            assert len({e["id"] for e in events}) == 2
        nursery.cancel_scope.cancel()


async def test_a_refusing_receiver_gets_the_event_once_it_accepts(
    receiver: Any, secret: str, secret_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay.webhooks")
    receiver.statuses.extend([500, 500, 500])
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery, **hooks(receiver, secret_file))
        async with connect(relay, "ann") as ann:
            await send_to(ann, "m1", recipientId="bob")
            attempts = [await receiver.next() for _ in range(4)]
            assert [a.status for a in attempts] == [500, 500, 500, 200]
            ids = {e["id"] for a in attempts for e in a.events}
            assert len(ids) == 1  # the same event each time, never a second one
            for attempt in attempts:
                verify(secret, attempt.body, attempt.headers[SIGNATURE_HEADER.lower()])
            await until(lambda: metric(relay, "relay_webhook_pending") == 0)
            # deduped by id, the receiver has the event exactly once: nothing lost, nothing extra
            assert [e["messageId"] for e in receiver.accepted_events()] == ["m1"]
            assert metric(relay, "relay_webhook_deliveries_total", outcome="retried") == 3
            assert metric(relay, "relay_webhook_deliveries_total", outcome="delivered") == 1
        nursery.cancel_scope.cancel()
    # an outage is a warning when it starts and a line when it ends, not one per request
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "relay.webhooks"]
    assert lines[0][1].startswith("webhooks: to 127.0.0.1, 0.2 s after a message")  # at start
    lines = lines[1:]
    assert [level for level, _ in lines] == ["WARNING", "INFO"]
    assert "the receiver answered 500" in lines[0][1]
    assert "accepts again after 3 failed request(s)" in lines[1][1]


async def test_an_event_older_than_max_age_is_given_up(
    receiver: Any, secret: str, secret_file: str
) -> None:
    receiver.default = 503
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery, **hooks(receiver, secret_file, webhook_max_age=0.5))
        async with connect(relay, "ann") as ann:
            await send_to(ann, "m1", recipientId="bob")
            await until(
                lambda: metric(relay, "relay_webhook_deliveries_total", outcome="expired") == 1
            )
            assert metric(relay, "relay_webhook_pending") == 0
            assert receiver.received  # it was tried before it was given up
            assert receiver.accepted_events() == []
        nursery.cancel_scope.cancel()


async def restart(
    db: Path,
    receiver: Any,
    secret_file: str,
    work: Callable[[Relay], Awaitable[None]],
    **kw: Any,
) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery, db_path=str(db), **hooks(receiver, secret_file, **kw))
        await work(relay)
        nursery.cancel_scope.cancel()


async def test_pending_events_are_delivered_after_a_restart(
    tmp_path: Path, receiver: Any, secret_file: str
) -> None:
    db = tmp_path / "relay.db"
    receiver.default = 500

    async def first(relay: Relay) -> None:
        async with connect(relay, "ann") as ann:
            await send_to(ann, "m1", recipientId="bob")
        assert (await receiver.next()).status == 500  # made, stored, not accepted

    async def second(relay: Relay) -> None:
        receiver.default = 200
        while True:  # the stopped relay's request may still be answered 500 first
            got = await receiver.next()
            if got.status == 200:
                break
        assert [(e["userId"], e["messageId"]) for e in got.events] == [("bob", "m1")]
        await until(lambda: metric(relay, "relay_webhook_pending") == 0)

    await restart(db, receiver, secret_file, first)
    await restart(db, receiver, secret_file, second)
    assert [e["messageId"] for e in receiver.accepted_events()] == ["m1"]


async def test_a_message_stored_before_a_stop_gets_its_event_after_the_restart(
    tmp_path: Path, receiver: Any, secret_file: str
) -> None:
    # The relay stops after the `sent` receipt and before the delay ran out: the event is
    # decided from the store at the next start.
    db = tmp_path / "relay.db"

    async def first(relay: Relay) -> None:
        async with connect(relay, "ann") as ann:
            await send_to(ann, "m1", recipientId="bob")

    async def second(relay: Relay) -> None:
        got = await receiver.next()
        assert [(e["userId"], e["messageId"]) for e in got.events] == [("bob", "m1")]

    await restart(db, receiver, secret_file, first, webhook_delay=3600)
    assert receiver.received == []
    await restart(db, receiver, secret_file, second)
