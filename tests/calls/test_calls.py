"""Call signalling between real clients over a real relay on loopback (contract v2, "Calls"):
every path of a call, a callee with two connected devices, the stored call record, and the
refusals of frames that do not fit."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from relay import Relay
from relay.client import RelayClient
from relay.client.calls import CallAccepted, CallInvited, CallRecord, CallSignalled
from relay.client.model import Message
from relay.config import RelayConfig
from relay.core import MessagingService
from relay.store.memory import MemoryStore

#: seconds any expected frame may take on loopback; a missing one fails instead of hanging
WAIT = 5.0
#: `client(relay, user, device)` and `raw(url, user, device)`: see conftest.py
ClientFactory = Any
OFFER = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=offer\r\n"
ANSWER = "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\ns=answer\r\n"


async def phase(c: RelayClient, call_id: str, *phases: str) -> Any:
    with trio.fail_after(WAIT):
        return await c.wait_call(call_id, *phases)


async def call_record(c: RelayClient, peer: str, call_id: str) -> Message:
    """The stored record of `call_id` as `c` received it live (delivered to both users)."""

    def record(s: Any) -> Message | None:
        for m in s.messages(_direct(peer)):
            if m.call is not None and m.call.call_id == call_id:
                return m
        return None

    with trio.fail_after(WAIT):
        await c.wait_until(lambda s: record(s) is not None)
    found = record(c.state)
    assert found is not None
    return found


def _direct(peer: str) -> Any:
    from relay.client import ConversationId

    return ConversationId.direct(peer)


async def next_event(stream: Any, kind: type) -> Any:
    with trio.fail_after(WAIT):
        async for event in stream:
            if isinstance(event, kind):
                return event
    raise AssertionError("the stream ended")


async def test_an_answered_call_between_a_caller_and_a_callee_with_two_devices(
    relay: Relay, client: ClientFactory
) -> None:
    async with (
        client(relay, "alice", "laptop") as alice,
        client(relay, "bob", "phone") as phone,
        client(relay, "bob", "watch") as watch,
    ):
        phone_events = phone.events()
        alice_events = alice.events()
        call = await alice.place_call("bob", OFFER, media="video")
        assert (await phase(alice, call.call_id, "ringing")).phase == "ringing"
        # every connected device of the callee rings, with the caller's offer
        for device in (phone, watch):
            ringing = await phase(device, call.call_id, "incoming")
            assert (ringing.peer_id, ringing.media, ringing.remote_sdp) == ("alice", "video", OFFER)
        invited = await next_event(phone_events, CallInvited)
        assert (invited.caller_id, invited.sdp) == ("alice", OFFER)

        await phone.answer_call(call.call_id, ANSWER)
        answered = await phase(alice, call.call_id, "answered")
        assert (answered.remote_sdp, answered.remote_device) == (ANSWER, "phone")
        accepted = await next_event(alice_events, CallAccepted)
        assert accepted.device_id == "phone"
        # the other device stops ringing
        elsewhere = await phase(watch, call.call_id, "ended")
        assert elsewhere.reason == "answered_elsewhere"

        # ICE candidates travel between the call's two devices, both ways
        await alice.send_call_signal(call.call_id, {"candidate": "a=1", "sdpMid": "0"})
        assert (await next_event(phone_events, CallSignalled)).payload == {
            "candidate": "a=1",
            "sdpMid": "0",
        }
        await phone.send_call_signal(call.call_id, {"candidate": "b=2"})
        assert (await next_event(alice_events, CallSignalled)).payload == {"candidate": "b=2"}

        await trio.sleep(0.05)  # the call lasts a little
        await alice.hang_up(call.call_id)
        assert (await phase(phone, call.call_id, "ended")).reason == "hangup"
        assert (await phase(alice, call.call_id, "ended")).reason == "hangup"

        # one record, from the caller, in the 1:1 conversation, on every device
        record = await call_record(phone, "alice", call.call_id)
        assert record.call is not None and record.meta is None
        assert record.sender_id == "alice" and record.seq == 1
        assert record.call.outcome == "answered" and record.call.media == "video"
        assert record.call.duration_ms >= 50  # it was answered at least the 50 ms slept above
        await call_record(alice, "bob", call.call_id)
        await call_record(watch, "alice", call.call_id)
        page = await phone.load_history("alice", before=2)
        assert [m.call.call_id for m in page.messages if m.call] == [call.call_id]
        convs = await phone.refresh_conversations()
        assert [(c.id.id, c.last_seq) for c in convs] == [("alice", 1)]


async def test_the_watch_rejects_and_the_phone_stops_ringing(
    relay: Relay, client: ClientFactory
) -> None:
    async with (
        client(relay, "alice") as alice,
        client(relay, "bob", "phone") as phone,
        client(relay, "bob", "watch") as watch,
    ):
        call = await alice.place_call("bob", OFFER)
        await phase(phone, call.call_id, "incoming")
        await phase(watch, call.call_id, "incoming")
        await watch.reject_call(call.call_id)
        assert (await phase(alice, call.call_id, "ended")).reason == "rejected"
        assert (await phase(phone, call.call_id, "ended")).reason == "rejected"
        record = await call_record(alice, "bob", call.call_id)
        assert record.call == CallRecord(call.call_id, "audio", "rejected", 0)
        assert record.text == "Declined audio call" and record.meta is None


async def test_a_callee_with_no_device_is_unavailable_and_the_missed_call_is_unread(
    relay: Relay, client: ClientFactory
) -> None:
    async with client(relay, "alice") as alice:
        call = await alice.place_call("bob", OFFER)
        assert (await phase(alice, call.call_id, "ended")).reason == "unavailable"
        record = await call_record(alice, "bob", call.call_id)
        assert record.call is not None and record.call.outcome == "unavailable"
    async with client(relay, "bob") as bob:
        convs = await bob.refresh_conversations()
        assert [(c.id.id, c.unread) for c in convs] == [("alice", 1)]
        last = convs[0].last_message
        assert last is not None and last.call is not None and last.call.call_id == call.call_id


async def test_a_callee_in_another_call_is_busy(relay: Relay, client: ClientFactory) -> None:
    async with (
        client(relay, "alice") as alice,
        client(relay, "bob") as bob,
        client(relay, "carol") as carol,
    ):
        first = await alice.place_call("bob", OFFER)
        await phase(bob, first.call_id, "incoming")
        second = await carol.place_call("bob", OFFER)
        assert (await phase(carol, second.call_id, "ended")).reason == "busy"
        assert bob.state.calls.get(second.call_id) is None  # it never rang
        record = await call_record(carol, "bob", second.call_id)
        assert record.call is not None and record.call.outcome == "busy"
        # the caller is busy too: calling alice while she rings bob
        third = await carol.place_call("alice", OFFER)
        assert (await phase(carol, third.call_id, "ended")).reason == "busy"


async def test_the_caller_gives_up_before_an_answer_and_the_call_is_missed(
    relay: Relay, client: ClientFactory
) -> None:
    async with (
        client(relay, "alice") as alice,
        client(relay, "bob", "phone") as phone,
        client(relay, "bob", "watch") as watch,
    ):
        call = await alice.place_call("bob", OFFER)
        await phase(phone, call.call_id, "incoming")
        await phase(watch, call.call_id, "incoming")
        await alice.hang_up(call.call_id)
        assert (await phase(phone, call.call_id, "ended")).reason == "hangup"
        assert (await phase(watch, call.call_id, "ended")).reason == "hangup"
        record = await call_record(phone, "alice", call.call_id)
        assert record.call is not None and record.call.outcome == "missed"


async def test_an_unanswered_call_times_out_on_both_sides(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, client: ClientFactory
) -> None:
    # the core on trio's (virtual) clock: 30 s of ringing pass without waiting for them
    config = RelayConfig(host="127.0.0.1", port=0, db_path=None)
    relay = Relay(config, handler=MessagingService(config, MemoryStore(), clock=trio.current_time))
    await nursery.start(relay.serve)
    async with (
        client(relay, "alice", heartbeat_interval=None) as alice,
        client(relay, "bob", heartbeat_interval=None) as bob,
    ):
        call = await alice.place_call("bob", OFFER)
        await phase(bob, call.call_id, "incoming")
        start = trio.current_time()
        with trio.fail_after(60):
            ended = await alice.wait_call(call.call_id, "ended")
        rang = trio.current_time() - start
        assert ended.reason == "timeout"
        assert 29.0 <= rang <= 31.0  # call_ring_timeout, at the core's 250 ms tick
        assert (await phase(bob, call.call_id, "ended")).reason == "timeout"
        with trio.fail_after(60):
            record = await call_record(bob, "alice", call.call_id)
        assert record.call is not None and record.call.outcome == "missed"


@pytest.mark.parametrize("who", ["caller", "callee"])
async def test_a_dropped_connection_ends_its_answered_call(
    relay: Relay, client: ClientFactory, who: str
) -> None:
    async with client(relay, "alice") as alice, client(relay, "bob", "phone") as phone:
        call = await alice.place_call("bob", OFFER)
        await phase(phone, call.call_id, "incoming")
        await phone.answer_call(call.call_id, ANSWER)
        await phase(alice, call.call_id, "answered")
        gone, stays = (alice, phone) if who == "caller" else (phone, alice)
        await gone.aclose()
        assert (await phase(stays, call.call_id, "ended")).reason == "dropped"
        assert gone.state.calls.get(call.call_id).phase == "ended"  # type: ignore[union-attr]
        record = await call_record(stays, "bob" if stays is alice else "alice", call.call_id)
        assert record.call is not None and record.call.outcome == "answered"


async def test_a_ringing_device_that_drops_stops_ringing_only_when_it_is_the_last(
    relay: Relay, client: ClientFactory
) -> None:
    async with client(relay, "alice") as alice, client(relay, "bob", "phone") as phone:
        async with client(relay, "bob", "watch") as watch:
            call = await alice.place_call("bob", OFFER)
            await phase(phone, call.call_id, "incoming")
            await phase(watch, call.call_id, "incoming")
        # the watch is gone: the phone still rings, the caller still waits
        await phone.answer_call(call.call_id, ANSWER)
        assert (await phase(alice, call.call_id, "answered")).remote_device == "phone"
        await alice.hang_up(call.call_id)
        await phase(phone, call.call_id, "ended")
        second = await alice.place_call("bob", OFFER)
        await phase(phone, second.call_id, "incoming")
        await phone.aclose()
        assert (await phase(alice, second.call_id, "ended")).reason == "dropped"
        record = await call_record(alice, "bob", second.call_id)
        assert record.call is not None and record.call.outcome == "missed"


async def test_a_caller_that_drops_while_ringing_stops_every_ringing_device(
    relay: Relay, client: ClientFactory
) -> None:
    async with client(relay, "bob", "phone") as phone, client(relay, "bob", "watch") as watch:
        async with client(relay, "alice") as alice:
            call = await alice.place_call("bob", OFFER)
            await phase(phone, call.call_id, "incoming")
            await phase(watch, call.call_id, "incoming")
        assert (await phase(phone, call.call_id, "ended")).reason == "dropped"
        assert (await phase(watch, call.call_id, "ended")).reason == "dropped"
        record = await call_record(watch, "alice", call.call_id)
        assert record.call is not None and record.call.outcome == "missed"


async def test_signals_and_answers_from_outside_the_call_are_forbidden(
    relay: Relay, raw: Any
) -> None:
    url = relay.url
    raw_client = raw
    async with (
        raw_client(url, "alice", "laptop") as alice,
        raw_client(url, "alice", "tablet") as alice_tablet,
        raw_client(url, "bob", "phone") as phone,
        raw_client(url, "bob", "watch") as watch,
        raw_client(url, "mallory") as mallory,
    ):
        await alice.send(
            {"type": "call_invite", "callId": "c1", "peerId": "bob", "media": "audio",
             "sdp": OFFER, "ref": "r1"}
        )  # fmt: skip
        assert await alice.expect("call_ringing") == {
            "type": "call_ringing",
            "callId": "c1",
            "ref": "r1",
        }
        assert (await phone.expect("call_invite"))["callerId"] == "alice"
        await watch.expect("call_invite")
        # nobody but a ringing callee device may answer
        for outsider in (mallory, alice_tablet, alice):
            await outsider.send({"type": "call_accept", "callId": "c1", "sdp": ANSWER, "ref": "x"})
            error = await outsider.expect("error", ref="x")
            assert (error["code"], error["field"]) == ("forbidden", "callId")
        await phone.send({"type": "call_accept", "callId": "c1", "sdp": ANSWER})
        accept = await alice.expect("call_accept")
        assert accept == {"type": "call_accept", "callId": "c1", "sdp": ANSWER, "deviceId": "phone"}
        assert (await watch.expect("call_end"))["reason"] == "answered_elsewhere"
        # too late: the call is answered
        await watch.send({"type": "call_accept", "callId": "c1", "sdp": ANSWER, "ref": "late"})
        late = await watch.expect("error", ref="late")
        assert late["code"] == "forbidden"
        # signals only between laptop and phone
        for outsider in (watch, mallory, alice_tablet):
            await outsider.send(
                {"type": "call_signal", "callId": "c1", "payload": {"c": 1}, "ref": "s"}
            )
            assert (await outsider.expect("error", ref="s"))["code"] == "forbidden"
        await alice.send({"type": "call_signal", "callId": "c1", "payload": {"c": 2}})
        assert (await phone.expect("call_signal"))["payload"] == {"c": 2}
        # hanging up someone else's call
        await mallory.send({"type": "call_end", "callId": "c1", "ref": "e"})
        assert (await mallory.expect("error", ref="e"))["code"] == "forbidden"
        await phone.send({"type": "call_end", "callId": "c1"})
        assert (await alice.expect("call_end")) == {
            "type": "call_end",
            "callId": "c1",
            "reason": "hangup",
        }
        # the call is over: its id is unknown now
        await alice.send({"type": "call_signal", "callId": "c1", "payload": {}, "ref": "gone"})
        gone = await alice.expect("error", ref="gone")
        assert (gone["code"], gone["field"]) == ("not_found", "callId")


@pytest.mark.parametrize(
    "frame,field",
    [
        ({"type": "call_invite", "peerId": "bob", "media": "audio", "sdp": OFFER}, "callId"),
        ({"type": "call_invite", "callId": "", "peerId": "bob", "media": "audio", "sdp": OFFER},
         "callId"),
        ({"type": "call_invite", "callId": "c" * 65, "peerId": "bob", "media": "audio",
          "sdp": OFFER}, "callId"),
        ({"type": "call_invite", "callId": "c", "media": "audio", "sdp": OFFER}, "peerId"),
        ({"type": "call_invite", "callId": "c", "peerId": "bob", "media": "fax", "sdp": OFFER},
         "media"),
        ({"type": "call_invite", "callId": "c", "peerId": "bob", "media": "audio"}, "sdp"),
        ({"type": "call_invite", "callId": "c", "peerId": "bob", "media": "audio", "sdp": 7},
         "sdp"),
        ({"type": "call_invite", "callId": "c", "peerId": "bob", "media": "audio",
          "sdp": "x" * 32769}, "sdp"),
        ({"type": "call_invite", "callId": "c", "peerId": "alice", "media": "audio",
          "sdp": OFFER}, "peerId"),
        ({"type": "call_accept", "callId": "c"}, "sdp"),
        ({"type": "call_reject", "callId": 5}, "callId"),
        ({"type": "call_end"}, "callId"),
        ({"type": "call_signal", "callId": "c"}, "payload"),
        ({"type": "call_signal", "callId": "c", "payload": "candidate"}, "payload"),
        ({"type": "call_signal", "callId": "c", "payload": {"x": "y" * 16400}}, "payload"),
        ({"type": "call_signal", "callId": "c", "payload": {"a": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}},
         "payload"),
    ],
)  # fmt: skip
async def test_malformed_call_frames_get_invalid_naming_the_field(
    relay: Relay, raw: Any, frame: dict[str, Any], field: str
) -> None:
    raw_client = raw
    async with raw_client(relay.url, "alice") as alice, raw_client(relay.url, "bob"):
        await alice.send({**frame, "ref": "bad"})
        error = await alice.expect("error", ref="bad")
        assert (error["code"], error["field"]) == ("invalid", field), error
        # the connection stays, and calls still work
        await alice.send(
            {"type": "call_invite", "callId": "ok", "peerId": "bob", "media": "audio", "sdp": OFFER}
        )
        await alice.expect("call_ringing", callId="ok")


async def test_a_call_id_in_use_and_a_second_call_of_a_caller_are_refused(
    relay: Relay, raw: Any
) -> None:
    raw_client = raw
    async with (
        raw_client(relay.url, "alice") as alice,
        raw_client(relay.url, "bob") as bob,
        raw_client(relay.url, "carol") as carol,
        raw_client(relay.url, "dave") as dave,
    ):
        invite = {"type": "call_invite", "callId": "same", "peerId": "bob", "media": "audio",
                  "sdp": OFFER}  # fmt: skip
        await alice.send(invite)
        await alice.expect("call_ringing")
        await bob.expect("call_invite")
        await carol.send({**invite, "peerId": "dave", "ref": "dup"})
        assert (await carol.expect("error", ref="dup"))["field"] == "callId"
        await alice.send({**invite, "callId": "other", "peerId": "dave", "ref": "two"})
        two = await alice.expect("error", ref="two")
        assert two["code"] == "invalid" and "already in a call" in two["message"]
        await dave.send({"type": "ping", "ref": "p"})
        await dave.expect("pong")  # dave was never invited


async def test_before_auth_call_frames_are_unauthenticated(
    relay: Relay, unauthenticated: Any
) -> None:
    async with unauthenticated(relay.url) as raw:
        await raw.send({"type": "call_end", "callId": "c", "ref": "early"})
        assert (await raw.expect("error", ref="early"))["code"] == "unauthenticated"
