"""POST /api/v1/publish against a real relay: the same frame as a WebSocket message reaches the
recipient, a resend gets the same seq, a wrong key stores nothing, bad bodies get the frames'
error codes."""

from __future__ import annotations

import orjson
import trio
from api_support import KEY, OTHER_KEY, WAIT, api_client, base_url, start_api_relay, user
from support import TEST_DEFAULTS, http_get

from relay import Relay, RelayConfig
from relay.core import MessagingService
from relay.store.base import direct_conversation
from relay.store.memory import MemoryStore


async def test_a_publish_reaches_the_recipient_as_the_same_frame_as_a_websocket_message(
    relay: Relay,
) -> None:
    async with user(relay, "bob") as bob, user(relay, "ann") as ann, api_client(relay) as api:
        # over WebSocket first, to know the frame a message makes
        await ann.send(
            {"type": "message", "id": "ws1", "recipientId": "bob", "text": "hi", "meta": {"k": 1}}
        )
        with trio.fail_after(WAIT):
            ws_frame = orjson.loads(await bob.raw())
        r = await api.post(
            "/api/v1/publish",
            json={"senderId": "ann", "recipientId": "bob", "text": "hi", "id": "api1",
                  "meta": {"k": 1}},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["id"] == "api1" and answer["seq"] == 2
        with trio.fail_after(WAIT):
            api_frame = orjson.loads(await bob.raw())
        # the same frame but for what differs between two messages: id, seq, timestamps
        for frame in (ws_frame, api_frame):
            assert frame.pop("timestamp") == frame.pop("serverTimestamp")
        assert api_frame.pop("id") == "api1" and ws_frame.pop("id") == "ws1"
        assert (ws_frame.pop("seq"), api_frame.pop("seq")) == (1, 2)
        assert api_frame == ws_frame
        assert answer["timestamp"].endswith("Z")
        # the sender's own device gets it too, as it gets its other devices' messages
        assert (await ann.expect("message", id="api1"))["seq"] == 2


async def test_a_resend_with_the_same_id_gets_the_same_seq_and_is_not_delivered_again(
    sqlite_relay: Relay,
) -> None:
    relay = sqlite_relay
    body = {"senderId": "ann", "recipientId": "bob", "text": "once", "id": "same"}
    async with user(relay, "bob") as bob, api_client(relay) as api:
        first = await api.post("/api/v1/publish", json=body)
        again = await api.post("/api/v1/publish", json=body)
        assert first.status_code == again.status_code == 200
        assert first.json() == again.json()
        assert (await bob.expect("message", id="same"))["seq"] == first.json()["seq"]
        assert await bob.quiet(0.3, "message") == []
        # durable: the store has it, once
        page = await api.get("/api/v1/users/bob/conversations/ann/messages")
        assert [m["id"] for m in page.json()["items"]] == ["same"]


async def test_a_wrong_or_missing_key_is_401_and_nothing_is_stored(nursery: trio.Nursery) -> None:
    store = MemoryStore()
    relay = await start_api_relay(nursery, store)
    body = {"senderId": "ann", "recipientId": "bob", "text": "sneaky", "id": "x1"}
    for key in ("wrong", None, KEY + "x", KEY[:-1]):
        async with api_client(relay, key) as api:
            r = await api.post("/api/v1/publish", json=body)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthenticated"
        assert r.headers["www-authenticate"].startswith("Bearer")
    async with api_client(relay, "x") as api:
        r = await api.post("/api/v1/publish", json=body, headers={"Authorization": f"Basic {KEY}"})
        assert r.status_code == 401
    messages, _ = await store.history(direct_conversation("ann", "bob"), limit=10)
    assert messages == []
    async with api_client(relay, OTHER_KEY) as api:  # every configured key works
        assert (await api.post("/api/v1/publish", json=body)).status_code == 200


async def test_bodies_are_checked_as_frames_are(relay: Relay) -> None:
    async def refused(body: object, status: int, code: str, field: str | None) -> None:
        r = await api.post("/api/v1/publish", content=orjson.dumps(body),
                           headers={"content-type": "application/json"})  # fmt: skip
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert (error["code"], error["field"]) == (code, field), error
        assert error["message"]

    async with api_client(relay) as api:
        long_text = "x" * (relay.config.max_text_chars + 1)
        await refused({"senderId": "a", "recipientId": "b", "text": long_text}, 400, "too_long",
                      "text")  # fmt: skip
        await refused({"senderId": "a", "text": "t"}, 400, "invalid", "recipientId")
        await refused({"senderId": "a", "recipientId": "b", "groupId": "g", "text": "t"}, 400,
                      "invalid", "recipientId")  # fmt: skip
        await refused({"senderId": "a", "recipientId": "b", "text": ""}, 400, "invalid", "text")
        await refused({"senderId": "a", "recipientId": "b"}, 400, "invalid", "text")
        await refused({"recipientId": "b", "text": "t"}, 400, "invalid", "senderId")
        await refused({"senderId": "a", "recipientId": "b", "text": "t", "id": ""}, 400,
                      "invalid", "id")  # fmt: skip
        await refused({"senderId": "a", "recipientId": "b", "text": "t", "meta": []}, 400,
                      "invalid", "meta")  # fmt: skip
        await refused({"senderId": "a", "recipientId": "b", "text": "t", "x": 1}, 400,
                      "invalid", "x")  # fmt: skip
        await refused(["not", "an", "object"], 400, "bad_frame", None)
        await refused({"senderId": "a", "groupId": "nope", "text": "t"}, 404, "not_found",
                      "groupId")  # fmt: skip
        await api.put("/api/v1/groups/team", json={"members": ["ann", "bob"]})
        await refused({"senderId": "eve", "groupId": "team", "text": "t"}, 403, "forbidden",
                      "groupId")  # fmt: skip
        r = await api.post("/api/v1/publish", content=b"{nope",
                           headers={"content-type": "application/json"})  # fmt: skip
        assert (r.status_code, r.json()["error"]["code"]) == (400, "bad_json")
        r = await api.post("/api/v1/publish", content=b"{}", headers={"content-type": "text/plain"})
        assert (r.status_code, r.json()["error"]["code"]) == (415, "unsupported_media_type")
        big = b'{"text":"' + b"x" * relay.config.max_message_bytes + b'"}'
        r = await api.post("/api/v1/publish", content=big,
                           headers={"content-type": "application/json"})  # fmt: skip
        assert (r.status_code, r.json()["error"]["code"]) == (413, "too_long")
    async with api_client(relay) as api:
        r = await api.get("/api/v1/publish")
        assert (r.status_code, r.headers["allow"]) == (405, "POST")
        assert r.json()["error"]["code"] == "method_not_allowed"
        r = await api.get("/api/v1/nothing")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")


async def test_a_group_publish_reaches_every_member(relay: Relay) -> None:
    async with (
        user(relay, "ann") as ann,
        user(relay, "bob") as bob,
        api_client(relay) as api,
    ):
        r = await api.put("/api/v1/groups/team", json={"name": "Team", "members": ["ann", "bob"]})
        assert r.status_code == 201
        r = await api.post("/api/v1/publish",
                           json={"senderId": "ann", "groupId": "team", "text": "hello team"})  # fmt: skip
        assert r.status_code == 200
        seq = r.json()["seq"]
        got = await bob.expect("message", groupId="team")
        assert (got["text"], got["seq"], got["senderId"]) == ("hello team", seq, "ann")
        assert (await ann.expect("message", groupId="team"))["seq"] == seq


async def test_without_keys_the_api_is_404(nursery: trio.Nursery) -> None:
    config = RelayConfig(**TEST_DEFAULTS)
    relay = Relay(config, handler=MessagingService(config, MemoryStore()))
    await nursery.start(relay.serve)
    assert (await http_get(relay, "/api/v1/publish", "POST"))[0] == 404
    assert (await http_get(relay, "/api/v1/openapi.json"))[0] == 404
    assert base_url(relay)  # the relay serves otherwise
    assert await http_get(relay, "/healthz") == (200, b"ok")


async def test_an_encrypted_publish_is_stored_and_forwarded_untouched(sqlite_relay: Relay) -> None:
    relay = sqlite_relay
    e2e = {
        "v": 1,
        "suite": "hpke-x25519-sha256-aes256gcm",
        "senderDevice": "server",
        "boxes": {"phone": "QUJD", "watch": "QUI="},
    }
    async with user(relay, "bob") as bob, api_client(relay) as api:
        r = await api.post(
            "/api/v1/publish", json={"senderId": "ann", "recipientId": "bob", "e2e": e2e}
        )
        assert r.status_code == 200, r.text
        live = await bob.expect("message", id=r.json()["id"])
        assert live["e2e"] == e2e and "text" not in live
        # an object and a text at once, or a box that is not base64: refused, nothing stored
        for body, field in (
            ({"text": "hi", "e2e": e2e}, "text"),
            ({"e2e": {**e2e, "boxes": {"phone": "no!"}}}, "e2e"),
        ):
            bad = await api.post(
                "/api/v1/publish", json={"senderId": "ann", "recipientId": "bob", **body}
            )
            assert bad.status_code == 400, bad.text
            assert (bad.json()["error"]["code"], bad.json()["error"]["field"]) == (
                "invalid",
                field,
            )
        assert await bob.quiet(0.3, "message") == []


async def test_a_publish_carries_the_files_its_sender_uploaded(sqlite_relay: Relay) -> None:
    from live_clients import raw_client

    relay = sqlite_relay
    async with (
        raw_client(relay.url, "ann") as ann,
        user(relay, "bob") as bob,
        api_client(relay) as api,
    ):
        token = {"Authorization": f"Bearer {ann.auth_ok['httpToken']}"}
        up = await api.post("/files?name=report.pdf", content=b"%PDF-1.4 ...", headers=token)
        assert up.status_code == 201, up.text
        record = up.json()
        r = await api.post(
            "/api/v1/publish",
            json={"senderId": "ann", "recipientId": "bob", "attachments": [{"fileId": record["fileId"]}]},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        live = await bob.expect("message", id=r.json()["id"])
        assert live["attachments"] == [record]
        page = await api.get("/api/v1/users/bob/conversations/ann/messages")
        assert page.status_code == 200, page.text
        assert [m["attachments"] for m in page.json()["items"]] == [[record]]
        # a file ann did not upload (bob's name on it), or eleven: refused, nothing stored
        for body in (
            {"senderId": "bob", "recipientId": "ann", "attachments": [{"fileId": record["fileId"]}]},
            {"senderId": "ann", "recipientId": "bob", "attachments": [{"fileId": record["fileId"]}] * 11},
        ):  # fmt: skip
            bad = await api.post("/api/v1/publish", json=body)
            assert bad.status_code == 400, bad.text
            assert (bad.json()["error"]["code"], bad.json()["error"]["field"]) == (
                "invalid",
                "attachments",
            )
        assert await bob.quiet(0.3, "message") == []
