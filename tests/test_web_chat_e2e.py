"""End-to-end encryption in the web chat (#18), in headless Chromium against a real relay on
SQLite: what the Python client library (relay.client.e2e) seals is read in the page, what the
page seals (WebCrypto) is opened by the Python client, both sides compute the same safety
number, a changed identity key is warned about, a device whose key is not signed is left out
with a warning, a message without a box for the page's device or with an altered box is shown
as unreadable, a second browser device of the sender gets its box, a message typed as the
connection drops goes out sealed; and the plaintext is in neither the SQLite file nor the
relay's log."""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

import pytest
import trio
from support import JsonClient, start_relay, ws_connect
from web_browser import page_url, require_browser, scenario

from relay.client.e2e import DeviceIdentity, open_e2e, safety_number, seal, verify_device


@pytest.fixture(scope="module")
def browser_node() -> str:
    return require_browser()


FROM_PYTHON = "the plan: meet at 6 \N{SUNRISE}"
FROM_CHROMIUM = "reply from chromium \N{CHECK MARK} \N{CLOSED LOCK WITH KEY}"
ELSEWHERE = "only for another device"
ALTERED = "this box gets altered"
TO_ALL = "to every device of mine"
OFFLINE = "sealed while offline"
BAD_DEVICE = (
    "\N{WARNING SIGN} bob/py-bad: the encryption key is not signed by the identity key "
    "(that device is left out)"
)


def message(id: str, e2e: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message", "id": id, "recipientId": "alice", "e2e": e2e}


async def test_python_and_chromium_read_each_others_sealed_messages(
    nursery: trio.Nursery, browser_node: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="relay")
    db = tmp_path / "relay.db"
    relay = await start_relay(nursery, web_chat=True, db_path=str(db))
    bob_key = DeviceIdentity.generate("py-bob")
    with trio.fail_after(120):
        async with (
            ws_connect(relay.url) as ws,
            scenario(
                browser_node, "e2e_chat.mjs", [page_url(relay)], tmp_path / "stderr"
            ) as driver,
        ):
            bob = JsonClient(ws, wait=10)
            await bob.send({"type": "auth", "userId": "bob", "deviceId": "py-bob"})
            await bob.expect("auth_ok")
            await bob.send({**bob_key.publish_frame(), "ref": "p"})
            await bob.expect("keys", ref="p")

            # A device of bob's whose encryption key its identity key did not sign: the relay
            # checks shapes only, the page must leave it out.
            async with ws_connect(relay.url) as ws2:
                forger = JsonClient(ws2, wait=10)
                await forger.send({"type": "auth", "userId": "bob", "deviceId": "py-bad"})
                await forger.expect("auth_ok")
                forged = DeviceIdentity.generate("py-bad").publish_frame()
                forged["encKey"] = DeviceIdentity.generate("x").publish_frame()["encKey"]
                await forger.send({**forged, "ref": "f"})
                await forger.expect("keys", ref="f")

            web_device = (await driver.step("ready"))["deviceId"]
            await bob.send({"type": "keys_get", "userId": "alice", "ref": "a"})
            (entry,) = (await bob.expect("keys", ref="a"))["devices"]
            # The page's Ed25519 signature over its X25519 key verifies in Python.
            alice_web = verify_device("alice", entry)
            assert alice_web.device_id == web_device

            good = seal(
                FROM_PYTHON, sender_user="bob", sender_device="py-bob", recipients=[alice_web]
            )
            other = verify_device("alice", DeviceIdentity.generate("tablet").publish_frame())
            elsewhere = seal(
                ELSEWHERE, sender_user="bob", sender_device="py-bob", recipients=[other]
            )
            altered = seal(
                ALTERED, sender_user="bob", sender_device="py-bob", recipients=[alice_web]
            )
            box = bytearray(base64.b64decode(altered["boxes"][web_device]))
            box[40] ^= 1  # a byte of the ciphertext
            altered["boxes"][web_device] = base64.b64encode(bytes(box)).decode()
            for id, e2e in (("e1", good), ("e2", elsewhere), ("e3", altered)):
                await bob.send(message(id, e2e))
                assert (await bob.expect("receipt", id=id))["status"] == "sent"
            await driver.cue("sealed")

            step = await driver.step("read")
            assert step["warning"] == BAD_DEVICE
            assert step["preview"] == "\N{LOCK} Encrypted message"
            assert step["status"] == "\N{LOCK} end-to-end encrypted"
            assert step["states"] == ["read", "undecryptable", "undecryptable"]
            unreadable = "\N{LOCK} This message cannot be read here: "
            assert step["texts"] == [
                FROM_PYTHON,
                unreadable + f"not encrypted for this device (no box for {web_device})",
                unreadable + "does not decrypt: altered, or sealed for another device or key",
            ]

            step = await driver.step("sent")
            assert (step["e2e"], step["lock"]) == ("read", 1)
            frame = await bob.expect("message", senderId="alice")
            assert frame["id"] == step["id"] and "text" not in frame
            e2e = frame["e2e"]
            # one box for bob's device, one for the page's own device (its history)
            assert sorted(e2e["boxes"]) == sorted(["py-bob", web_device])
            assert e2e["senderDevice"] == web_device
            assert open_e2e(e2e, sender_user="alice", me=bob_key).text == FROM_CHROMIUM

            step = await driver.step("safety")
            number = safety_number("alice", [alice_web.identity_key], "bob", [bob_key.identity_key])
            assert step["text"] == f"Safety number with bob: {number}"

            new_key = DeviceIdentity.generate("py-bob")
            await bob.send({**new_key.publish_frame(), "ref": "p2"})
            await bob.expect("keys", ref="p2")
            await driver.cue("rekeyed")
            step = await driver.step("warned")
            assert step["warning"] == (
                "\N{WARNING SIGN} The identity key of bob's device py-bob changed. "
                "Compare safety numbers before trusting it."
            )
            number = safety_number("alice", [alice_web.identity_key], "bob", [new_key.identity_key])
            assert step["safety"] == f"Safety number with bob: {number}"

            step = await driver.step("reloaded")
            assert step["deviceId"] == web_device
            assert step["texts"][0] == FROM_PYTHON and step["texts"][3] == FROM_CHROMIUM
            # the key book remembers the new key: no warning for it again (the forged device
            # still gets one on this new page)
            assert step["warning"] == BAD_DEVICE

            step = await driver.step("other-device")
            phone = step["deviceId"]
            frame = await bob.expect("message", senderId="alice", id=step["id"])
            assert sorted(frame["e2e"]["boxes"]) == sorted(["py-bob", web_device, phone])
            assert open_e2e(frame["e2e"], sender_user="alice", me=new_key).text == TO_ALL
            # the new device reads only what was sealed after it published its keys
            assert step["states"] == ["undecryptable"] * 4 + ["read"]
            assert step["texts"][-1] == TO_ALL
            assert (
                step["texts"][0]
                == unreadable + f"not encrypted for this device (no box for {phone})"
            )

            step = await driver.step("resent")
            assert step["status"] in ("sent", "delivered") and step["e2e"] == "read"
            frame = await bob.expect("message", senderId="alice", id=step["id"])
            assert open_e2e(frame["e2e"], sender_user="alice", me=new_key).text == OFFLINE
            await driver.done()

    files = [p for p in await trio.Path(tmp_path).iterdir() if p.name.startswith("relay.db")]
    stored = b"".join([await p.read_bytes() for p in files])
    # The file holds the messages (their boxes, as sent) ...
    assert good["boxes"][web_device].encode() in stored
    assert e2e["boxes"]["py-bob"].encode() in stored
    # ... and none of the texts; nor does the relay's log.
    for text in (FROM_PYTHON, FROM_CHROMIUM, ELSEWHERE, ALTERED, TO_ALL, OFFLINE):
        assert text.encode() not in stored
        assert text not in caplog.text
