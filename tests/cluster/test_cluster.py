"""Three relay nodes on one PostgreSQL and one Redis behave as one relay: messages, receipts,
typing, presence, history and the conversation list cross nodes; seqs stay gapless under
concurrent senders on every node; the nodes say when they lose Redis or PostgreSQL, refuse
messages meanwhile and recover by themselves."""

from __future__ import annotations

import contextlib
import itertools

import psycopg
import pytest
import trio
from cluster_nodes import Client, health_becomes, signed_in, start_nodes
from services import RedisServer
from support import http_get

from relay.cluster import link


def is_type(kind: str, **fields: object):  # type: ignore[no-untyped-def]
    return lambda f: f.get("type") == kind and all(f.get(k) == v for k, v in fields.items())


async def test_one_to_one_across_nodes_in_order_with_receipts(
    pg_url: str, redis: RedisServer
) -> None:
    async with trio.open_nursery() as nursery:
        a, b, _ = await start_nodes(nursery, pg_url, redis.url)
        async with signed_in(a, "ann") as ann, signed_in(b, "bob") as bob:
            for i in range(20):
                await ann.send(type="message", id=f"m{i}", recipientId="bob", text=f"hi {i}")
            got = await bob.messages(20)
            assert [m["text"] for m in got] == [f"hi {i}" for i in range(20)]
            assert [m["seq"] for m in got] == list(range(1, 21))
            # sent (from ann's node), delivered (bob's node wrote the watermark), read
            await ann.until(is_type("receipt", id="m19", status="sent"))
            await ann.until(is_type("receipt", status="delivered", seq=20))
            await bob.send(type="receipt", peerId="ann", seq=20, status="read")
            await ann.until(is_type("receipt", status="read", seq=20))
            # and back: bob's answer reaches ann on the other node
            await bob.send(type="message", id="r1", recipientId="ann", text="hello ann")
            [answer] = await ann.messages(1)
            assert answer["text"] == "hello ann" and answer["seq"] == 21
        nursery.cancel_scope.cancel()


async def test_group_across_three_nodes_in_order(pg_url: str, redis: RedisServer) -> None:
    async with trio.open_nursery() as nursery:
        nodes = await start_nodes(nursery, pg_url, redis.url)
        async with (
            signed_in(nodes[0], "ann") as ann,
            signed_in(nodes[1], "bob") as bob,
            signed_in(nodes[2], "cat") as cat,
        ):
            await ann.send(type="group_create", groupId="runners", name="Runners",
                           members=["bob", "cat"], ref="g1")  # fmt: skip
            await ann.until(is_type("group", groupId="runners"))
            for i in range(5):
                await ann.send(type="message", id=f"a{i}", groupId="runners", text=f"a{i}")
                await bob.send(type="message", id=f"b{i}", groupId="runners", text=f"b{i}")
            for client, count in ((cat, 10), (ann, 5), (bob, 5)):
                got = await client.messages(count)
                seqs = [m["seq"] for m in got]
                assert seqs == sorted(seqs), (client.user, seqs)
            # cat saw every message, in seq order, without a gap
            assert sorted(m["seq"] for m in cat.seen if m["type"] == "message") == list(
                range(1, 11)
            )
            # cat reads: both senders hear it on their nodes
            await cat.send(type="receipt", groupId="runners", seq=10, status="read")
            await ann.until(is_type("receipt", groupId="runners", status="read", userId="cat"))
            await bob.until(is_type("receipt", groupId="runners", status="read", userId="cat"))
            # a member removed on one node is refused on another
            await ann.send(type="group_remove", groupId="runners", userIds=["bob"], ref="r")
            await bob.until(is_type("group", groupId="runners", event="remove"))
            await bob.send(type="message", id="late", groupId="runners", text="still here?")
            refused = await bob.until(is_type("receipt", id="late"))
            assert refused["status"] == "failed" and refused["reason"] == "forbidden"
        nursery.cancel_scope.cancel()


async def test_typing_and_presence_across_nodes(pg_url: str, redis: RedisServer) -> None:
    async with trio.open_nursery() as nursery:
        a, b, c = await start_nodes(nursery, pg_url, redis.url, presence_grace=0.5)
        async with signed_in(a, "ann") as ann:
            async with signed_in(b, "bob") as bob:
                await ann.send(type="message", id="x", recipientId="bob", text="hey")
                await bob.messages(1)
                await ann.send(type="typing", recipientId="bob", state="start")
                await bob.until(is_type("typing", userId="ann", state="start"))
                # a presence query on a third node sees both online
                async with signed_in(c, "cat") as cat:
                    await cat.send(type="presence", userIds=["ann", "bob", "dan"], ref="q")
                    answer = await cat.until(is_type("presence", ref="q"))
                    status = {u["userId"]: u["status"] for u in answer["users"]}
                    assert status == {"ann": "online", "bob": "online", "dan": "offline"}
            # bob moves to another node within the grace: ann sees no offline, no flap
            async with signed_in(c, "bob") as bob_again:
                await trio.sleep(1.5)  # past the grace on bob's first node
                await bob_again.send(type="presence", userIds=["bob"], ref="p")
                await bob_again.until(is_type("presence", ref="p"))
            flaps = [f for f in ann.seen if f.get("type") == "status" and f["userId"] == "bob"]
            assert [f["status"] for f in flaps] == []
            # bob gone from every node: ann hears offline once the grace ended
            offline = await ann.until(is_type("status", userId="bob", status="offline"))
            assert offline["lastSeen"]
        nursery.cancel_scope.cancel()


async def presence_of(client: Client, user: str, want: str, within: float = 5) -> str:
    """`user`'s status in presence answers to `client`, once it is `want` (another node's note
    arrives a Redis round trip after the change); bounded, the last answer otherwise."""
    status = ""
    with trio.move_on_after(within):
        for k in itertools.count():
            await client.send(type="presence", userIds=[user], ref=f"s{k}")
            answer = await client.until(is_type("presence", ref=f"s{k}"))
            status = answer["users"][0]["status"]
            if status == want:
                break
            await trio.sleep(0.05)
    return status


async def test_a_status_is_the_same_on_every_node(pg_url: str, redis: RedisServer) -> None:
    async with trio.open_nursery() as nursery:
        a, b, c = await start_nodes(nursery, pg_url, redis.url, presence_grace=0.5)
        async with signed_in(b, "bob") as bob, signed_in(c, "cat") as cat:
            async with signed_in(a, "ann") as ann:
                await ann.send(type="message", id="x", recipientId="bob", text="hey")
                await bob.messages(1)
                await ann.send(type="status", status="away")
                await bob.until(is_type("status", userId="ann", status="away"))  # the frame
                # and the presence answers of every node
                for client in (ann, bob, cat):
                    assert await presence_of(client, "ann", "away") == "away", client.user
                # ann's phone moves to node c within the grace: still away, there and after
                # node a let ann go
                async with signed_in(c, "ann") as ann_on_c:
                    await ann.ws.aclose()
                    await trio.sleep(1.5)  # past the grace on node a
                    for client in (bob, cat, ann_on_c):
                        assert await presence_of(client, "ann", "away") == "away", client.user
                    await ann_on_c.send(type="status", status="busy")
                    for client in (bob, cat):
                        assert await presence_of(client, "ann", "busy") == "busy", client.user
            # ann gone from every node: offline, and online (not busy) when back
            assert await presence_of(bob, "ann", "offline") == "offline"
            async with signed_in(a, "ann"):
                for client in (bob, cat):
                    assert await presence_of(client, "ann", "online") == "online", client.user
                await trio.sleep(0.3)  # a stale register would show within a note or two
                assert await presence_of(cat, "ann", "online") == "online"
        nursery.cancel_scope.cancel()


async def test_history_conversations_and_unread_are_the_same_on_every_node(
    pg_url: str, redis: RedisServer
) -> None:
    async with trio.open_nursery() as nursery:
        nodes = await start_nodes(nursery, pg_url, redis.url)
        async with signed_in(nodes[0], "ann") as ann:
            for i in range(7):
                await ann.send(type="message", id=f"h{i}", recipientId="bob", text=f"t{i}")
            for i in range(7):
                await ann.until(is_type("receipt", id=f"h{i}", status="sent"))
        views = []
        for node in nodes:
            async with signed_in(node, "bob", device=f"d-{node.address}") as bob:
                await bob.send(type="history", peerId="ann", ref="h")
                history = await bob.until(is_type("history", ref="h"))
                await bob.send(type="conversations", ref="c")
                listed = await bob.until(is_type("conversations", ref="c"))
                views.append(
                    (
                        [(m["seq"], m["text"]) for m in history["messages"]],
                        [(i["peerId"], i["unread"], i["lastSeq"]) for i in listed["items"]],
                    )
                )
        assert views[0] == views[1] == views[2]
        assert views[0][1] == [("ann", 7, 7)]
        nursery.cancel_scope.cancel()


async def test_concurrent_senders_through_three_nodes_get_gapless_unique_seqs(
    pg_url: str, redis: RedisServer
) -> None:
    per_sender = 40
    async with trio.open_nursery() as nursery:
        nodes = await start_nodes(nursery, pg_url, redis.url, rate_limit_messages=1000.0)
        async with signed_in(nodes[0], "host") as host:
            await host.send(type="group_create", groupId="busy", name="Busy",
                            members=["s0", "s1", "s2", "reader"], ref="g")  # fmt: skip
            await host.until(is_type("group", groupId="busy"))
        acked: list[int] = []
        async with signed_in(nodes[1], "reader") as reader:

            async def sender(n: int) -> None:
                async with signed_in(nodes[n], f"s{n}") as me:
                    for i in range(per_sender):
                        await me.send(type="message", id=f"{n}-{i}", groupId="busy", text="x")
                    for _ in range(per_sender):
                        sent = await me.until(is_type("receipt", status="sent"))
                        acked.append(sent["seq"])

            async with trio.open_nursery() as senders:
                for n in range(3):
                    senders.start_soon(sender, n)
            assert sorted(acked) == list(range(1, 3 * per_sender + 1))
            got = await reader.messages(3 * per_sender)
            assert [m["seq"] for m in got] == list(range(1, 3 * per_sender + 1))
        nursery.cancel_scope.cancel()


async def test_redis_restart_refuses_then_recovers_without_losing_messages(
    pg_url: str, redis: RedisServer
) -> None:
    async with trio.open_nursery() as nursery:
        a, b, _ = await start_nodes(nursery, pg_url, redis.url)
        assert await http_get(a, "/healthz") == (200, b"ok")
        async with signed_in(a, "ann") as ann:
            async with signed_in(b, "bob") as bob:
                await ann.send(type="message", id="before", recipientId="bob", text="1")
                await bob.messages(1)
            redis.stop()
            body = await health_becomes(a, 503)
            assert b"Redis" in body
            await ann.send(type="message", id="during", recipientId="bob", text="2")
            refused = await ann.until(is_type("receipt", id="during"))
            assert refused["status"] == "failed" and "Redis" in refused["message"]
            redis.start()
            await health_becomes(a, 200)
        # ann's device reconnects (the node closed it with 1012 to catch up) and resends
        await health_becomes(b, 200)
        async with signed_in(a, "ann") as ann, signed_in(b, "bob") as bob:
            await ann.send(type="message", id="during", recipientId="bob", text="2")
            sent = await ann.until(is_type("receipt", id="during", status="sent"))
            assert sent["seq"] == 2
            [live] = await bob.messages(1)
            assert live["text"] == "2" and live["seq"] == 2
        nursery.cancel_scope.cancel()


def _cut(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'relay' AND datname = current_database()"
        )


async def test_postgres_connection_cut_while_serving(pg_url: str, redis: RedisServer) -> None:
    async with trio.open_nursery() as nursery:
        a, b, _ = await start_nodes(nursery, pg_url, redis.url)
        async with signed_in(a, "ann") as ann, signed_in(b, "bob") as bob:
            acked: list[str] = []
            for i in range(30):
                if i in (10, 20):
                    await trio.to_thread.run_sync(_cut, pg_url)
                await ann.send(type="message", id=f"p{i}", recipientId="bob", text=f"{i}")
                answer = await ann.until(is_type("receipt", id=f"p{i}"))
                if answer["status"] == "sent":
                    acked.append(f"p{i}")
                else:  # refused clearly, never acknowledged: the client resends
                    assert answer["status"] == "failed", answer
                    assert "PostgreSQL" in answer["message"], answer
                    with trio.fail_after(10):  # the node reconnects by itself (within 1 s)
                        while answer["status"] != "sent":
                            await trio.sleep(0.1)
                            await ann.send(
                                type="message", id=f"p{i}", recipientId="bob", text=f"{i}"
                            )
                            answer = await ann.until(is_type("receipt", id=f"p{i}"))
                    acked.append(f"p{i}")
            got = await bob.messages(30)
            assert [m["id"] for m in got] == acked == [f"p{i}" for i in range(30)]
            assert [m["seq"] for m in got] == list(range(1, 31))
            assert await http_get(a, "/healthz") == (200, b"ok")
        nursery.cancel_scope.cancel()


async def test_a_member_added_again_gets_nothing_said_while_out(
    pg_url: str, redis: RedisServer
) -> None:
    async with trio.open_nursery() as nursery:
        a, b, _ = await start_nodes(nursery, pg_url, redis.url)
        async with signed_in(a, "ann") as ann, signed_in(b, "bob") as bob:
            await ann.send(type="group_create", groupId="g", name="G", members=["bob"], ref="1")
            await bob.until(is_type("group", groupId="g", event="create"))
            await ann.send(type="message", id="in1", groupId="g", text="before")
            await bob.messages(1)
            await ann.send(type="group_remove", groupId="g", userIds=["bob"], ref="2")
            await bob.until(is_type("group", groupId="g", event="remove"))
            for i in range(3):
                await ann.send(type="message", id=f"out{i}", groupId="g", text="secret")
                await ann.until(is_type("receipt", id=f"out{i}", status="sent"))
            await ann.send(type="group_add", groupId="g", userIds=["bob"], ref="3")
            await bob.until(is_type("group", groupId="g", event="add"))
            await ann.send(type="message", id="in2", groupId="g", text="welcome back")
            [back] = await bob.messages(1)
            assert back["id"] == "in2"
            await trio.sleep(0.5)  # past the gap wait: nothing said while out follows
            await bob.send(type="ping", ref="p")
            await bob.until(is_type("pong", ref="p"))
            assert [m["id"] for m in bob.seen if m["type"] == "message"] == ["in1", "in2"]
        nursery.cancel_scope.cancel()


async def test_group_order_holds_right_after_a_membership_change(
    pg_url: str, redis: RedisServer
) -> None:
    # senders on two nodes, right after a member was added: the members' devices on a third
    # node get every message once, in seq order, without a gap. Each node publishes its own
    # appends after their commit, so the third node hears them out of seq order now and then;
    # a key started at its first delivery (as for 60 s after a change it once was) sent the
    # later seq and then dropped the earlier one as out of turn.
    senders = ["s0", "s1", "s2", "s3", "s4", "s5"]
    async with trio.open_nursery() as nursery:
        a, b, c = await start_nodes(nursery, pg_url, redis.url)
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(signed_in((a, b)[k % 2], user))
                for k, user in enumerate(senders)
            ]
            cat = await stack.enter_async_context(signed_in(c, "cat"))
            dan = await stack.enter_async_context(signed_in(c, "dan"))
            await clients[0].send(type="group_create", groupId="g", name="G",
                                  members=[*senders[1:], "cat"], ref="1")  # fmt: skip
            await cat.until(is_type("group", groupId="g", event="create"))
            await clients[0].send(type="message", id="first", groupId="g", text="first")
            await cat.messages(1)
            await clients[0].send(type="group_add", groupId="g", userIds=["dan"], ref="2")
            await cat.until(is_type("group", groupId="g", event="add"))
            await dan.until(is_type("group", groupId="g", event="add"))

            async def burst(client: Client) -> None:
                for i in range(30):
                    await client.send(type="message", id=f"{client.user}-{i}", groupId="g",
                                      text="x")  # fmt: skip

            async with trio.open_nursery() as sending:
                for client in clients:
                    sending.start_soon(burst, client)
            total = 30 * len(senders)
            for member in (cat, dan):
                with trio.move_on_after(15):
                    await member.messages(total, within=15)
                seqs = [m["seq"] for m in member.seen if m["type"] == "message"]
                seqs = seqs[1:] if member is cat else seqs  # cat's first: before the change
                assert seqs == list(range(2, 2 + total)), (member.user, seqs)
        nursery.cancel_scope.cancel()


async def test_a_sign_in_whose_subscription_is_late_still_gets_every_message(
    pg_url: str, redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a loaded node may take longer than JOIN_WAIT to subscribe a user's channel; with 0 every
    # sign-in goes on before its subscription, which finishes in the background, and what was
    # published meanwhile comes from the store
    monkeypatch.setattr(link, "JOIN_WAIT", 0.0)
    async with trio.open_nursery() as nursery:
        a, b, _ = await start_nodes(nursery, pg_url, redis.url)
        async with signed_in(a, "ann") as ann:
            await ann.send(type="message", id="early", recipientId="bob", text="0")
            await ann.until(is_type("receipt", id="early", status="sent"))
            async with signed_in(b, "bob") as bob:
                for i in range(1, 11):
                    await ann.send(type="message", id=f"m{i}", recipientId="bob", text=f"{i}")
                got = await bob.messages(11)
                assert [m["text"] for m in got] == [str(i) for i in range(11)]
        nursery.cancel_scope.cancel()
