"""The `search` frame end to end: a real Relay (MessagingService over the memory store and over
SQLite) on 127.0.0.1, the project's RelayClient, and raw WebSocket clients for bad frames."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import trio
from support import TEST_DEFAULTS, ws_connect

from relay.app import Relay
from relay.client import ConversationId, MessageStatus, RelayClient, RequestFailed
from relay.config import RelayConfig
from relay.core import MessagingService
from relay.store.base import Store

TIMEOUT = 5.0


async def start(nursery: trio.Nursery, store: Store, **overrides: Any) -> Relay:
    config = RelayConfig(
        **{
            **TEST_DEFAULTS,
            "rate_limit_messages": 10_000.0,
            "rate_limit_burst": 10_000,
            **overrides,
        }
    )
    relay = Relay(config, handler=MessagingService(config, store))
    await nursery.start(relay.serve)
    return relay


@asynccontextmanager
async def client(relay: Relay, user: str) -> AsyncIterator[RelayClient]:
    async with RelayClient(relay.url, user_id=user) as made:
        with trio.fail_after(TIMEOUT):
            await made.wait_online()
        yield made


async def sent(sender: RelayClient, to: str | ConversationId, text: str) -> None:
    message = await sender.send_message(to, text)
    with trio.fail_after(TIMEOUT):
        stored = await sender.wait_message(message.id, MessageStatus.SENT)
    assert stored.status is not MessageStatus.FAILED


async def test_search_over_the_users_own_conversations(store: Store) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start(nursery, store)
        async with (
            client(relay, "ann") as ann,
            client(relay, "bob") as bob,
            client(relay, "cy") as cy,
        ):
            await sent(ann, "bob", "Rendez-vous au café à midi")
            first_id = ann.state.messages(ConversationId.direct("bob"))[-1].id
            await bob.mark_read("ann")
            with trio.fail_after(TIMEOUT):
                await ann.wait_message(first_id, MessageStatus.READ)
            await sent(bob, "ann", "see you at the CAFÉ")
            await sent(bob, "cy", "café secret between bob and cy")
            await ann.create_group("club", "Club", ["ann", "cy"])
            await sent(cy, ConversationId.group("club"), "le café du club")
            with trio.fail_after(TIMEOUT):
                found = await ann.search("cafe")
                assert [m.text for m in found.messages] == [
                    "le café du club",
                    "see you at the CAFÉ",
                    "Rendez-vous au café à midi",
                ]
                assert (found.has_more, found.next) == (False, None)
                # the conversation is as the user sees it; the status as history gives it
                assert found.messages[2].conversation == ConversationId.direct("bob")
                assert found.messages[2].outgoing
                assert found.messages[2].status is MessageStatus.READ
                assert found.messages[1].status is MessageStatus.DELIVERED
                assert found.messages[0].conversation == ConversationId.group("club")
                only = await ann.search("cafe", conversation="bob")
                assert [m.text for m in only.messages] == [
                    "see you at the CAFÉ",
                    "Rendez-vous au café à midi",
                ]
                phrase = await ann.search('"see you" caf*')
                assert [m.text for m in phrase.messages] == ["see you at the CAFÉ"]
                # paging: newest first, `next` until the last page
                first = await ann.search("cafe", limit=2)
                assert (len(first.messages), first.has_more) == (2, True)
                assert first.next is not None
                rest = await ann.search("cafe", limit=2, before=first.next)
                assert [m.text for m in rest.messages] == ["Rendez-vous au café à midi"]
                assert (rest.has_more, rest.next) == (False, None)
                # bob and cy's conversation never shows for ann, nor cy's group for bob
                assert await ann.search("secret") == type(first)((), False, None)
                assert [m.text for m in (await bob.search("club")).messages] == []
                with pytest.raises(RequestFailed, match="forbidden"):
                    await bob.search("cafe", conversation=ConversationId.group("club"))
            # every search answered with a page was timed (relay_search_seconds); the refusal not
            timed = relay.metrics.stats.search_seconds
            assert sum(timed.counts) == 7
            assert 0 < timed.total < 7 * TIMEOUT
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ({"query": ""}, "query"),
        ({}, "query"),
        ({"query": 5}, "query"),
        ({"query": "x" * 257}, "query"),
        ({"query": "!!! ..."}, "query"),
        ({"query": " ".join(f"w{i}" for i in range(17))}, "query"),
        ({"query": "hi", "limit": 0}, "limit"),
        ({"query": "hi", "limit": 101}, "limit"),
        ({"query": "hi", "before": 12}, "before"),
        ({"query": "hi", "before": "abc"}, "before"),
        ({"query": "hi", "before": "0"}, "before"),
        ({"query": "hi", "before": "99999999999999999999"}, "before"),
        ({"query": "hi", "peerId": "b", "groupId": "g"}, "groupId"),
    ],
)
async def test_bad_search_frames_get_invalid(
    store: Store, frame: dict[str, Any], field: str
) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start(nursery, store)
        async with ws_connect(relay.url) as ws:
            await ws.send_message(orjson.dumps({"type": "auth", "userId": "ann"}).decode())
            with trio.fail_after(TIMEOUT):
                assert orjson.loads(await ws.get_message())["type"] == "auth_ok"
                await ws.send_message(
                    orjson.dumps({"type": "search", "ref": "s1", **frame}).decode()
                )
                answer = orjson.loads(await ws.get_message())
                assert answer["type"] == "error"
                assert (answer["code"], answer["ref"], answer["field"]) == ("invalid", "s1", field)
                # the connection stays: a good search is answered
                await ws.send_message('{"type":"search","query":"hi","ref":"s2"}')
                answer = orjson.loads(await ws.get_message())
                assert answer == {
                    "type": "search_result",
                    "ref": "s2",
                    "items": [],
                    "hasMore": False,
                }
        nursery.cancel_scope.cancel()


async def test_a_page_is_cut_to_half_an_outbox_and_pages_on(store: Store) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start(nursery, store, outbox_max_bytes=64 * 1024)
        async with client(relay, "ann") as ann:
            for i in range(30):
                await sent(ann, "bob", f"long {i} " + "x" * 3000)
            texts: list[str] = []
            before = None
            with trio.fail_after(TIMEOUT):
                for _ in range(10):
                    page = await ann.search("long", limit=100, before=before)
                    assert len(page.messages) <= 10  # 32 KiB of 3 KB items
                    texts += [m.text.split()[1] for m in page.messages]
                    if page.next is None:
                        break
                    before = page.next
            assert texts == [str(i) for i in reversed(range(30))]
        nursery.cancel_scope.cancel()
