"""Presence, pages, groups and disconnect through the HTTP API, watched from real WebSocket
clients."""

from __future__ import annotations

from typing import Any

import trio
from api_support import OTHER_KEY, api_client, eventually, start_api_relay, user
from trio_websocket import ConnectionClosed

from relay import Relay
from relay.store.memory import MemoryStore


async def test_presence_counts_devices_and_gives_last_seen_once_offline(
    nursery: trio.Nursery,
) -> None:
    relay = await start_api_relay(nursery, presence_grace=0.0)
    async with api_client(relay) as api:
        r = await api.get("/api/v1/users/ann/presence")
        assert r.json() == {"userId": "ann", "status": "offline", "lastSeen": None, "devices": 0}
        async with user(relay, "ann", "phone"), user(relay, "ann", "laptop") as laptop:
            r = await api.get("/api/v1/users/ann/presence")
            assert r.json() == {"userId": "ann", "status": "online", "lastSeen": None,
                                "devices": 2}  # fmt: skip
            await laptop.send({"type": "status", "status": "busy"})

            async def presence_now() -> dict[str, Any]:
                return (await api.get("/api/v1/users/ann/presence")).json()  # type: ignore[no-any-return]

            await eventually(presence_now, lambda p: p["status"] == "busy")
        presence = await eventually(presence_now, lambda p: p["status"] == "offline")
        assert presence["devices"] == 0 and presence["lastSeen"].endswith("Z")
        r = await api.get("/api/v1/users/" + "x" * 129 + "/presence")
        assert (r.status_code, r.json()["error"]["field"]) == (400, "userIds")


async def test_pages_are_the_history_frames_items(relay: Relay) -> None:
    async with user(relay, "ann") as ann, user(relay, "bob") as bob, api_client(relay) as api:
        for i in range(5):
            await ann.send({"type": "message", "id": f"m{i}", "recipientId": "bob",
                            "text": f"n{i}"})  # fmt: skip
            await ann.expect("receipt", id=f"m{i}")
        await bob.send({"type": "receipt", "peerId": "ann", "seq": 5, "status": "delivered"})
        await bob.send({"type": "receipt", "peerId": "ann", "seq": 3, "status": "read"})
        # until the watermarks are in the store (receipts are written in the background)
        url = "/api/v1/users/ann/conversations/bob/messages"

        async def statuses() -> list[str]:
            page = (await api.get(url, params={"before": 5, "limit": 3})).json()
            return [m["status"] for m in page["items"]]

        await eventually(statuses, lambda got: got == ["read", "read", "delivered"])
        await bob.send({"type": "history", "peerId": "ann", "limit": 3, "ref": "h"})
        await ann.send({"type": "history", "peerId": "bob", "limit": 3, "before": 5, "ref": "h"})
        ws_bob = await bob.expect("history", ref="h")
        ws_ann = await ann.expect("history", ref="h")
        r = await api.get("/api/v1/users/bob/conversations/ann/messages", params={"limit": 3})
        assert r.json() == {"items": ws_bob["messages"], "hasMore": True}
        r = await api.get(
            "/api/v1/users/ann/conversations/bob/messages", params={"limit": 3, "before": 5}
        )
        page = r.json()
        assert page == {"items": ws_ann["messages"], "hasMore": True}
        assert [m["status"] for m in page["items"]] == ["read", "read", "delivered"]
        r = await api.get(
            "/api/v1/users/ann/conversations/bob/messages", params={"after": 3, "limit": 10}
        )
        assert [m["seq"] for m in r.json()["items"]] == [4, 5] and not r.json()["hasMore"]
        for params, field in (
            ({"limit": 0}, "limit"),
            ({"limit": 101}, "limit"),
            ({"limit": "x"}, "limit"),
            ({"before": 2, "after": 1}, "after"),
            ({"before": 2**63}, "before"),
            ({"after": "-1"}, "after"),
        ):
            r = await api.get("/api/v1/users/ann/conversations/bob/messages", params=params)
            assert (r.status_code, r.json()["error"]["field"]) == (400, field), params


async def test_put_group_creates_then_sets_members_and_tells_them(relay: Relay) -> None:
    async with (
        user(relay, "ann") as ann,
        user(relay, "bob") as bob,
        user(relay, "cat") as cat,
        api_client(relay) as api,
    ):
        r = await api.put("/api/v1/groups/team", json={"name": "Team", "members": ["bob", "ann"]})
        assert r.status_code == 201
        group = r.json()
        assert (group["members"], group["createdBy"], group["name"]) == (
            ["ann", "bob"], "bob", "Team")  # fmt: skip
        for device in (ann, bob):
            frame = await device.expect("group", groupId="team")
            assert (frame["event"], frame["members"]) == ("create", ["ann", "bob"])
        # the same again: nothing changes, nobody is told
        r = await api.put("/api/v1/groups/team", json={"members": ["ann", "bob"]})
        assert (r.status_code, r.json()["members"]) == (200, ["ann", "bob"])
        # set: cat in, bob out
        r = await api.put("/api/v1/groups/team", json={"name": "Team", "members": ["ann", "cat"]})
        assert (r.status_code, r.json()["members"]) == (200, ["ann", "cat"])
        assert (await cat.expect("group", groupId="team", event="add"))["members"] == ["ann", "cat"]
        assert (await bob.expect("group", groupId="team", event="remove"))["members"] == [
            "ann", "cat"]  # fmt: skip
        # members' messages flow: bob's does not
        await cat.send({"type": "message", "id": "c1", "groupId": "team", "text": "hi"})
        assert (await ann.expect("message", id="c1"))["senderId"] == "cat"
        await bob.send({"type": "message", "id": "b1", "groupId": "team", "text": "hi"})
        refused = await bob.expect("receipt", id="b1")
        assert (refused["status"], refused["reason"]) == ("failed", "forbidden")
        r = await api.get("/api/v1/groups/team/messages")
        assert [(m["id"], m["status"]) for m in r.json()["items"]] == [("c1", "sent")]
        # the name is fixed at creation
        r = await api.put("/api/v1/groups/team", json={"name": "Other", "members": ["ann"]})
        assert (r.status_code, r.json()["error"]["field"]) == (409, "name")
        for body, field in (
            ({"members": []}, "members"),
            ({"name": "x"}, "members"),
            ({"members": ["a"], "createdBy": "b"}, "createdBy"),
            ({"members": ["a"], "name": None}, "name"),
            ({"members": ["a"], "extra": 1}, "extra"),
            ({"members": "ann"}, "members"),
        ):
            r = await api.put("/api/v1/groups/g2", json=body)
            assert (r.status_code, r.json()["error"]["field"]) == (400, field), body
        r = await api.get("/api/v1/groups/nope/messages")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")


async def test_disconnect_closes_every_connection_of_the_user_with_1008(relay: Relay) -> None:
    async with (
        user(relay, "ann", "phone") as phone,
        user(relay, "ann", "laptop") as laptop,
        user(relay, "bob") as bob,
        api_client(relay, OTHER_KEY) as api,
    ):
        r = await api.post("/api/v1/users/ann/disconnect", json={"reason": "account suspended"})
        assert r.json() == {"userId": "ann", "closed": 2}
        for device in (phone, laptop):
            with trio.fail_after(2):
                try:
                    while True:
                        await device.raw()
                except ConnectionClosed as exc:
                    assert exc.reason is not None
                    assert (exc.reason.code, exc.reason.reason) == (1008, "account suspended")
        # bob is untouched
        await bob.send({"type": "ping", "ref": "p"})
        await bob.expect("pong", ref="p")
        # no body at all is fine; a reason over 123 bytes is not
        r = await api.post("/api/v1/users/bob/disconnect")
        assert r.json() == {"userId": "bob", "closed": 1}
        r = await api.post("/api/v1/users/bob/disconnect", json={"reason": "é" * 62})
        assert (r.status_code, r.json()["error"]["field"]) == (400, "reason")
        r = await api.post("/api/v1/users/bob/disconnect", json=None, content=b"null",
                           headers={"content-type": "application/json"})  # fmt: skip
        assert (r.status_code, r.json()["error"]["code"]) == (400, "bad_frame")


async def test_api_requests_are_counted_by_route_and_status(nursery: trio.Nursery) -> None:
    relay = await start_api_relay(nursery, MemoryStore())
    async with api_client(relay) as api:
        await api.get("/api/v1/users/ann/presence")
        await api.get("/api/v1/users/ann/presence")
        await api.get("/api/v1/nothing")
    async with api_client(relay, "wrong") as api:
        await api.get("/api/v1/users/ann/presence")
    text = relay.metrics.render().decode()
    route = "/api/v1/users/{userId}/presence"
    assert f'relay_api_requests_total{{method="GET",route="{route}",status="200"}} 2.0' in text
    assert f'relay_api_requests_total{{method="GET",route="{route}",status="401"}} 1.0' in text
    assert 'relay_api_requests_total{method="GET",route="/api/",status="404"} 1.0' in text
