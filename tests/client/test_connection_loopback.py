"""RelayClient against a real relay (Relay + MessagingService + MemoryStore) over loopback.

Some tests put a TCP proxy between a client and the relay: cutting it drops the connection
mid-stream exactly as a network failure would (bytes in flight are lost), and closing it keeps
the client out while others carry on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
from attrs import define, field

from relay.app import Relay
from relay.client import (
    ConnectionChanged,
    ConnectionLost,
    ConnectionState,
    ConversationId,
    MessageAdded,
    MessageStatus,
    MessageUpdated,
    RelayClient,
    RequestFailed,
)
from relay.config import RelayConfig
from relay.core import MessagingService
from relay.errors import FrameError
from relay.store.base import Store, direct_conversation
from relay.store.memory import MemoryStore

TIMEOUT = 5.0


def config(port: int = 0, **overrides: Any) -> RelayConfig:
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "db_path": None,
        "presence_grace": 0.2,
        "rate_limit_messages": 10_000.0,
        "rate_limit_burst": 10_000,
        "drain_timeout": 1.0,
    }
    settings.update(overrides)
    return RelayConfig(**settings)


@define(eq=False)
class RunningRelay:
    """A relay that can be stopped and started again on the same port with the same store."""

    nursery: trio.Nursery
    store: Store
    port: int = 0
    scope: trio.CancelScope | None = None
    relay: Relay | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> None:
        cfg = config(self.port)
        relay = Relay(cfg, handler=MessagingService(cfg, self.store))
        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await relay.serve(task_status=task_status)

        await self.nursery.start(run)
        self.relay, self.scope = relay, scope
        self.port = relay.address.port  # type: ignore[union-attr]

    async def stop(self) -> None:
        """Stop it (clients get 1012) and wait until it has drained."""
        assert self.scope is not None
        self.scope.cancel()
        with trio.fail_after(TIMEOUT):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                except OSError:
                    return
                await stream.aclose()
                await trio.sleep(0.02)


@asynccontextmanager
async def running_relay() -> AsyncIterator[RunningRelay]:
    async with trio.open_nursery() as nursery:
        relay = RunningRelay(nursery, MemoryStore())
        await relay.start()
        yield relay
        nursery.cancel_scope.cancel()


@define(eq=False)
class CutProxy:
    """A TCP forwarder in front of the relay; `cut()` drops every connection through it."""

    target: Callable[[], int]
    port: int = 0
    accepting: bool = True
    _scopes: set[trio.CancelScope] = field(factory=set)
    _thaw: dict[trio.CancelScope, trio.Event] = field(factory=dict)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    def cut(self) -> None:
        for scope in self._scopes:
            scope.cancel()

    def freeze(self) -> None:
        """Stop forwarding on every current connection without closing it: a silent network."""
        for scope in self._scopes:
            self._thaw[scope] = trio.Event()  # never set: those bytes are never forwarded

    async def _handle(self, downstream: trio.SocketStream) -> None:
        async with downstream:
            if not self.accepting:
                return
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", self.target())
            except OSError:
                return
            async with upstream:
                with trio.CancelScope() as scope:
                    self._scopes.add(scope)
                    try:
                        async with trio.open_nursery() as nursery:
                            for src, dst in ((downstream, upstream), (upstream, downstream)):
                                nursery.start_soon(
                                    self._pump, src, dst, scope, nursery.cancel_scope
                                )
                    finally:
                        self._scopes.discard(scope)

    async def _pump(
        self,
        src: trio.SocketStream,
        dst: trio.SocketStream,
        pair: trio.CancelScope,
        done: trio.CancelScope,
    ) -> None:
        try:
            async for data in src:
                thaw = self._thaw.get(pair)
                if thaw is not None:
                    await thaw.wait()
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # either side went away: the pair ends below
        done.cancel()


@asynccontextmanager
async def proxy_to(relay: RunningRelay) -> AsyncIterator[CutProxy]:
    async with trio.open_nursery() as nursery:
        proxy = CutProxy(lambda: relay.port)
        await nursery.start(proxy.serve)
        yield proxy
        nursery.cancel_scope.cancel()


def client(url: str, user: str, **kw: Any) -> RelayClient:
    kw.setdefault("reconnect_delay", 0.05)
    kw.setdefault("reconnect_attempts", 50)
    # trio-websocket notices a TCP close during the opening handshake only at connect_timeout
    # (as the proxy does while not accepting), so keep that short here
    kw.setdefault("connect_timeout", 1.0)
    return RelayClient(
        url, user_id=user, user_name=user.title(), user_avatar=user[:1].upper(), **kw
    )


async def eventually(client: RelayClient, predicate: Callable[[], bool]) -> None:
    """Wait until `predicate()` holds, re-checked on every change of `client`'s state."""
    with trio.fail_after(TIMEOUT):
        await client.wait_until(lambda _: predicate())


async def within(awaitable: Awaitable[Any]) -> Any:
    with trio.fail_after(TIMEOUT):
        return await awaitable


# --- tests --------------------------------------------------------------------------------------


async def test_a_message_goes_through_every_status_between_two_clients() -> None:
    async with (
        running_relay() as relay,
        client(relay.url, "alice") as alice,
        client(relay.url, "bob") as bob,
    ):
        seen: list[tuple[str, MessageStatus]] = []
        events = alice.events()
        await within(alice.wait_online())
        await within(bob.wait_online())

        msg = await alice.send_message("bob", "hello bob")
        # optimistic: in the conversation at once, before any network round trip
        assert (
            alice.state.messages(ConversationId.direct("bob"))[-1].status is MessageStatus.PENDING
        )
        await within(alice.wait_message(msg.id, MessageStatus.DELIVERED))

        got = bob.state.find(msg.id, "alice")
        assert got is not None and got.text == "hello bob" and got.seq == 1
        conv = bob.state.conversation(ConversationId.direct("alice"))
        assert conv is not None and conv.unread == 1
        await bob.mark_read("alice")
        assert bob.state.conversation(ConversationId.direct("alice")).unread == 0  # type: ignore[union-attr]
        final = await within(alice.wait_message(msg.id, MessageStatus.READ))
        assert final.status is MessageStatus.READ and final.seq == 1

        for event in events.drain():
            if isinstance(event, MessageAdded | MessageUpdated) and event.message.id == msg.id:
                seen.append((event.message.id, event.message.status))
        assert [s for _, s in seen] == [
            MessageStatus.PENDING,
            MessageStatus.SENT,
            MessageStatus.DELIVERED,
            MessageStatus.READ,
        ]


async def test_a_refused_message_is_marked_failed_with_the_reason() -> None:
    async with running_relay() as relay, client(relay.url, "alice") as alice:
        await within(alice.wait_online())
        msg = await alice.send_message("bob", "x" * 5000)
        failed = await within(alice.wait_message(msg.id, MessageStatus.SENT))
        assert failed.status is MessageStatus.FAILED and failed.reason == "too_long"
        assert alice.state.outbox == []
        ok = await alice.send_message("bob", "short")
        assert (await within(alice.wait_message(ok.id))).status is MessageStatus.SENT


async def test_messages_written_while_the_relay_is_down_arrive_once_after_it_returns() -> None:
    async with (
        running_relay() as relay,
        client(relay.url, "alice") as alice,
        client(relay.url, "bob") as bob,
    ):
        await within(alice.wait_online())
        await within(bob.wait_online())
        first = await alice.send_message("bob", "before")
        await within(alice.wait_message(first.id, MessageStatus.DELIVERED))

        await relay.stop()
        await within(alice.wait_until(lambda s: s.connection is not ConnectionState.ONLINE))
        queued = [await alice.send_message("bob", f"while down {i}") for i in range(5)]
        assert [m.status for m in alice.state.outbox] == [MessageStatus.PENDING] * 5

        await relay.start()
        for m in queued:
            await within(alice.wait_message(m.id, MessageStatus.DELIVERED))
        texts = [m.text for m in bob.state.messages(ConversationId.direct("alice"))]
        assert texts == ["before", *(f"while down {i}" for i in range(5))]
        stored, _ = await relay.store.history(direct_conversation("alice", "bob"), limit=100)
        assert [m.seq for m in stored] == [1, 2, 3, 4, 5, 6]
        assert [m.id for m in stored[1:]] == [m.id for m in queued]


async def test_a_connection_dropped_mid_stream_loses_and_doubles_nothing() -> None:
    count = 300
    async with (
        running_relay() as relay,
        proxy_to(relay) as pa,
        proxy_to(relay) as pb,
        client(pa.url, "alice") as alice,
        client(pb.url, "bob") as bob,
    ):
        await within(alice.wait_online())
        await within(bob.wait_online())
        sent: list[str] = []
        for i in range(count):
            sent.append((await alice.send_message("bob", f"n{i}")).id)
            if i % 10 == 0:
                await trio.sleep(0.005)  # let frames flow, so the cuts land mid-stream
            if i in (60, 180):
                pa.cut()  # the sender's link: unconfirmed messages go out again
            if i in (120, 240):
                pb.cut()  # the reader's link: unacknowledged messages come again
        with trio.fail_after(TIMEOUT * 2):
            await alice.flush()
            await bob.wait_until(lambda s: len(s.messages(ConversationId.direct("alice"))) == count)
        received = [m.id for m in bob.state.messages(ConversationId.direct("alice"))]
        # each once: nothing lost, nothing doubled. (Across a cut the relay may still be reading
        # the old connection's last bytes while the new one delivers, so the order of the few
        # messages in flight at the cut is not promised; each conversation's seq order is.)
        assert len(received) == len(set(received)) == count
        assert set(received) == set(sent)
        assert [m.seq for m in bob.state.messages(ConversationId.direct("alice"))] == list(
            range(1, count + 1)
        )
        stored, more = await relay.store.history(
            direct_conversation("alice", "bob"), limit=count + 10
        )
        assert not more and [m.id for m in stored] == received
        mine = alice.state.messages(ConversationId.direct("bob"))
        assert [m.seq for m in mine] == list(range(1, count + 1))


async def test_gaps_are_filled_from_history_after_a_reconnect() -> None:
    async with (
        running_relay() as relay,
        proxy_to(relay) as proxy,
        client(proxy.url, "alice", device_id="phone") as phone,
        client(relay.url, "alice", device_id="laptop") as laptop,
        client(relay.url, "bob") as bob,
    ):
        for c in (phone, laptop, bob):
            await within(c.wait_online())
        m = await bob.send_message("alice", "hi alice")
        await within(bob.wait_message(m.id, MessageStatus.DELIVERED))
        await eventually(phone, lambda: phone.state.find(m.id, "bob") is not None)

        proxy.accepting = False
        proxy.cut()
        await within(phone.wait_until(lambda s: s.connection is not ConnectionState.ONLINE))
        # meanwhile the laptop writes; the relay does not replay a user's own messages as
        # backlog, so only the history gap-fill brings them to the phone
        written = [await laptop.send_message("bob", f"from laptop {i}") for i in range(3)]
        for w in written:
            await within(laptop.wait_message(w.id))
        proxy.accepting = True

        bob_conv = ConversationId.direct("bob")
        await within(phone.wait_until(lambda s: len(s.messages(bob_conv)) == 4))
        msgs = phone.state.messages(bob_conv)
        assert [x.seq for x in msgs] == [1, 2, 3, 4]
        assert [x.outgoing for x in msgs] == [False, True, True, True]
        assert msgs[-1].text == "from laptop 2"


async def test_unread_counts_and_previews_match_the_relays_answer() -> None:
    async with (
        running_relay() as relay,
        client(relay.url, "alice") as alice,
        client(relay.url, "bob") as bob,
        client(relay.url, "carol") as carol,
    ):
        for c in (alice, bob, carol):
            await within(c.wait_online())
        group = await within(carol.create_group("runners", "Runners", ["alice", "bob", "carol"]))
        assert group.members == ("alice", "bob", "carol")
        for i in range(4):
            await bob.send_message("alice", f"bob {i}")
        await carol.send_message("alice", "carol 0")
        await alice.send_message("carol", "alice to carol")
        await carol.send_message(ConversationId.group("runners"), "group hello")
        await bob.send_message(ConversationId.group("runners"), "group reply")
        for c in (alice, bob, carol):
            await within(c.flush())
        await eventually(alice, lambda: sum(c.unread for c in alice.state.conversations()) == 7)
        await alice.mark_read("carol")
        await within(alice.ping())  # the read receipt is processed before the ping's answer

        mine = {str(c.id): c for c in alice.state.conversations()}
        answer = await within(alice.request({"type": "conversations"}, "conversations"))
        theirs = {
            (f"#{item['groupId']}" if "groupId" in item else item["peerId"]): item
            for item in answer["items"]
        }
        assert set(mine) == set(theirs) == {"bob", "carol", "#runners"}
        for key, item in theirs.items():
            row = mine[key]
            assert row.unread == item["unread"], key
            assert row.last_seq == item["lastSeq"], key
            assert row.read_seq == item["readSeq"], key
            assert row.last_message is not None and item["lastMessage"] is not None
            assert row.last_message.id == item["lastMessage"]["id"], key
            assert row.last_message.text == item["lastMessage"]["text"], key
        assert [str(c.id) for c in alice.state.conversations()] == [
            (f"#{i['groupId']}" if "groupId" in i else i["peerId"]) for i in answer["items"]
        ]
        assert mine["bob"].unread == 4 and mine["carol"].unread == 0


async def test_history_pages_of_fifty() -> None:
    async with (
        running_relay() as relay,
        client(relay.url, "alice") as alice,
        client(relay.url, "bob") as bob,
    ):
        await within(alice.wait_online())
        for i in range(120):
            await alice.send_message("bob", f"m{i}")
        await within(alice.flush())
        conv = ConversationId.direct("alice")
        await within(bob.wait_until(lambda s: len(s.messages(conv)) == 120))
        await within(bob.ping())  # its delivered receipts went out before the ping
        async with client(relay.url, "bob", sync_on_connect=False) as fresh:
            await within(fresh.wait_online())
            opened = await within(fresh.open_conversation("alice"))
            assert fresh.state.active == conv
            assert [m.seq for m in opened] == list(range(71, 121))
            pages = [[m.seq for m in opened]]
            while True:
                page = await within(fresh.load_history(conv))
                pages.append([m.seq for m in page.messages])
                if not page.has_more:
                    break
            assert [len(p) for p in pages] == [50, 50, 20]
            assert pages[0] == list(range(71, 121)) and pages[-1] == list(range(1, 21))
            assert [m.text for m in fresh.state.messages(conv)] == [f"m{i}" for i in range(120)]


def _typing(c: RelayClient, peer: str) -> tuple[str, ...]:
    conv = c.state.conversation(ConversationId.direct(peer))
    return () if conv is None else conv.typing


async def test_presence_and_typing() -> None:
    async with running_relay() as relay, client(relay.url, "alice") as alice:
        await within(alice.wait_online())
        m = await alice.send_message("bob", "hi")  # alice and bob now share a conversation
        await within(alice.wait_message(m.id))
        who = await within(alice.query_presence(["bob"]))
        assert who["bob"].status == "offline" and who["bob"].last_seen is None
        async with client(relay.url, "bob") as bob:
            await within(bob.wait_online())
            await within(
                alice.wait_until(
                    lambda s: "bob" in s.presence and s.presence["bob"].status == "online"
                )
            )
            await bob.typing("alice")
            await within(alice.wait_until(lambda s: _typing(alice, "bob") == ("bob",)))
            await bob.typing("alice", active=False)
            await within(alice.wait_until(lambda s: _typing(alice, "bob") == ()))
            await bob.set_status("away")
            await within(alice.wait_until(lambda s: s.presence["bob"].status == "away"))
        # within the grace (0.2 s, checked every 0.25 s) bob still counts as present
        for _ in range(50):
            who = await within(alice.query_presence(["bob"]))
            if who["bob"].status == "offline":
                break
            await trio.sleep(0.05)
        assert who["bob"].status == "offline" and who["bob"].last_seen


async def test_presence_offline_is_announced_after_the_grace() -> None:
    async with running_relay() as relay, client(relay.url, "alice") as alice:
        await within(alice.wait_online())
        m = await alice.send_message("bob", "hi")
        await within(alice.wait_message(m.id))
        async with client(relay.url, "bob") as bob:
            await within(bob.wait_online())
            await within(alice.wait_until(lambda s: "bob" in s.presence))
        # the relay's grace is 0.2 s here
        await within(alice.wait_until(lambda s: s.presence["bob"].status == "offline"))
        assert alice.state.presence["bob"].last_seen


async def test_a_refused_request_raises_request_failed() -> None:
    async with running_relay() as relay, client(relay.url, "alice") as alice:
        await within(alice.wait_online())
        try:
            await within(alice.load_history(ConversationId.group("nope")))
        except RequestFailed as exc:
            assert exc.code in ("not_found", "forbidden")
        else:
            raise AssertionError("history of an unknown group must fail")
        assert alice.connection_state is ConnectionState.ONLINE
        assert await within(alice.ping())


async def test_a_silent_link_is_detected_by_the_heartbeat_and_replaced() -> None:
    async with (
        running_relay() as relay,
        proxy_to(relay) as proxy,
        client(proxy.url, "alice", heartbeat_interval=0.1, heartbeat_timeout=0.3) as alice,
        client(relay.url, "bob") as bob,
    ):
        events = alice.events()
        await within(alice.wait_online())
        await within(bob.wait_online())
        proxy.freeze()  # no FIN, no RST: only the missing pong tells
        await within(alice.wait_until(lambda s: s.connection is not ConnectionState.ONLINE))
        drops = [
            e
            for e in events.drain()
            if isinstance(e, ConnectionChanged) and e.state is ConnectionState.OFFLINE
        ]
        assert drops and drops[0].reason is not None and "pong" in drops[0].reason
        await within(alice.wait_online())
        m = await alice.send_message("bob", "still here")
        await within(alice.wait_message(m.id, MessageStatus.DELIVERED))


class _Refuse:
    async def authenticate(self, frame: Any) -> str:
        raise FrameError("auth_failed", "bad token")


async def test_refused_authentication_is_final_and_not_retried() -> None:
    async with trio.open_nursery() as nursery:
        cfg = config()
        relay = Relay(cfg, handler=MessagingService(cfg, MemoryStore(), authenticator=_Refuse()))
        await nursery.start(relay.serve)
        c = client(relay.url, "alice", token="nope")
        events = c.events()
        async with c:
            try:
                await within(c.wait_online())
            except ConnectionLost as exc:
                assert "auth_failed" in str(exc)
            else:
                raise AssertionError("a refused client must not come online")
        attempts = [
            e
            for e in events.drain()
            if isinstance(e, ConnectionChanged) and e.state is ConnectionState.CONNECTING
        ]
        assert len(attempts) == 1  # refused is refused: no reconnection storm
        nursery.cancel_scope.cancel()


async def test_a_read_marked_while_offline_reaches_the_sender_after_reconnecting() -> None:
    async with (
        running_relay() as relay,
        proxy_to(relay) as proxy,
        client(relay.url, "alice") as alice,
        client(proxy.url, "bob") as bob,
    ):
        await within(alice.wait_online())
        await within(bob.wait_online())
        m = await alice.send_message("bob", "read me")
        await within(alice.wait_message(m.id, MessageStatus.DELIVERED))
        proxy.accepting = False
        proxy.cut()
        await within(bob.wait_until(lambda s: s.connection is not ConnectionState.ONLINE))
        await bob.mark_read("alice")
        assert bob.state.conversation(ConversationId.direct("alice")).unread == 0  # type: ignore[union-attr]
        assert alice.state.find(m.id).status is MessageStatus.DELIVERED  # type: ignore[union-attr]
        proxy.accepting = True
        await within(alice.wait_message(m.id, MessageStatus.READ))


async def test_a_long_absence_backlog_arrives_complete_and_in_order() -> None:
    count = 1200
    async with running_relay() as relay, client(relay.url, "alice") as alice:
        await within(alice.wait_online())
        for i in range(count):
            await alice.send_message("bob", f"m{i}")
            if i % 400 == 399:
                await within(alice.flush())  # the outbox holds 1000 unconfirmed at most
        conv = ConversationId.direct("alice")
        added: list[int] = []
        async with client(relay.url, "bob") as bob:
            events = bob.events(buffer=10 * count)
            await within(bob.wait_online())
            with trio.fail_after(TIMEOUT):
                async for event in events:
                    if isinstance(event, MessageAdded) and event.message.conversation == conv:
                        added.append(event.message.seq or 0)
                        if len(added) == count:
                            break
            assert sorted(added) == list(range(1, count + 1))  # each once
            assert [m.seq for m in bob.state.messages(conv)] == list(range(1, count + 1))
            assert bob.state.conversation(conv).unread == count  # type: ignore[union-attr]
        last = alice.state.messages(ConversationId.direct("bob"))[-1]
        await within(alice.wait_message(last.id, MessageStatus.DELIVERED))
