"""Voice calls in the web chat (#18): two headless Chromium pages with a fake microphone call
each other through a real relay: ringing, answer, a WebRTC connection that reaches the
connected state and carries sound both ways, hang-up seen on both sides, the call's record in
both conversations; bob's second (Python) device rings too and is told the call was answered
elsewhere; a second call, declined; a call to a user with no connected device."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import pytest
import trio
from support import JsonClient, start_relay, ws_connect
from web_browser import page_url, require_browser, scenario


@pytest.fixture(scope="module")
def browser_node() -> str:
    return require_browser()


def call_record(frame: dict[str, Any]) -> dict[str, Any]:
    """The record a call left: the message's top-level `call` (what the page renders)."""
    record = frame.get("call")
    assert isinstance(record, dict), frame
    return record


def is_local(address: str) -> bool:
    """Whether `address` is one of this machine's (only those can be bound)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def connected(state: dict[str, Any]) -> bool:
    return state["connectionState"] == "connected" or state["iceConnectionState"] in (
        "connected",
        "completed",
    )


async def test_two_browsers_call_answer_connect_and_hang_up(
    nursery: trio.Nursery, browser_node: str, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, web_chat=True)
    with trio.fail_after(120):
        async with ws_connect(relay.url) as ws:
            phone = JsonClient(ws, wait=15)
            await phone.send({"type": "auth", "userId": "bob", "deviceId": "py-bob"})
            await phone.expect("auth_ok")
            args = [page_url(relay)]
            async with scenario(browser_node, "call_chat.mjs", args, tmp_path / "stderr") as driver:
                step = await driver.step("ringing")
                assert step["alice"] == "Ringing bob…"
                assert step["bob"].endswith(" is calling")
                assert step["buttons"] == ["Answer", "Decline"]
                invite = await phone.expect("call_invite", callerId="alice")
                assert invite["media"] == "audio" and "m=audio" in invite["sdp"]

                step = await driver.step("connected")
                alice, bob = step["alice"], step["bob"]
                assert alice["callId"] == bob["callId"] == invite["callId"]
                assert (alice["outgoing"], bob["outgoing"]) == (True, False)
                assert connected(alice) and connected(bob), step
                # Peer to peer between host candidates (no STUN/TURN configured), both ends
                # addresses of this machine: the sound never left the host.
                route = step["route"]
                assert route["local"]["candidateType"] == route["remote"]["candidateType"] == "host"
                assert is_local(route["local"]["address"]) and is_local(route["remote"]["address"])
                # the page that did not answer: told, and out of the call
                end = await phone.expect("call_end", callId=invite["callId"])
                assert end["reason"] == "answered_elsewhere"

                step = await driver.step("ended")
                assert (step["alice"]["phase"], step["alice"]["reason"]) == ("ended", "local")
                assert (step["bob"]["phase"], step["bob"]["reason"]) == ("ended", "hangup")
                assert step["bobBar"] == "Call ended"
                assert step["alice"]["connectionState"] == "closed"
                (mine,) = step["aliceRecords"]
                (theirs,) = step["bobRecords"]
                assert re.fullmatch(r"📞 Voice call · \d+:\d\d", mine) and theirs == mine
                record = await phone.expect("message", senderId="alice")
                assert call_record(record)["outcome"] == "answered"
                assert call_record(record)["callId"] == invite["callId"]

                step = await driver.step("declined")
                assert (step["alice"]["phase"], step["alice"]["reason"]) == ("ended", "rejected")
                assert (step["bob"]["phase"], step["bob"]["reason"]) == ("ended", "rejected")
                assert step["aliceBar"] == "Call declined"
                assert (
                    step["aliceRecords"][1] == step["bobRecords"][1] == "📞 Voice call · declined"
                )
                second = await phone.expect("call_invite", callerId="alice")
                assert second["callId"] == step["alice"]["callId"] != invite["callId"]
                end = await phone.expect("call_end", callId=second["callId"])
                assert end["reason"] == "rejected"

                step = await driver.step("unavailable")
                assert (step["alice"]["phase"], step["alice"]["reason"]) == ("ended", "unavailable")
                assert step["alice"]["connectionState"] == "closed"  # the microphone let go
                assert step["bar"] == "Call not reachable"
                await driver.done()
