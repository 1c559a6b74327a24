"""The client's end-to-end encryption (relay.client.e2e): keys published through a real relay
and fetched back verify; boxes open only on their device, in their context; tampering, forged
signatures and changed identity keys are reported clearly; a device without a box reads
`undecryptable`, not an exception."""

from __future__ import annotations

import base64
import logging
from typing import Any

import pytest
import trio
from support import start_relay

from relay.client.e2e import (
    SUITE,
    BadSignature,
    DecryptionFailed,
    DeviceIdentity,
    KeyBook,
    open_e2e,
    safety_number,
    seal,
    verify_device,
)


async def test_keys_through_the_relay_seal_and_open_on_every_addressed_device(
    nursery: trio.Nursery, raw: Any
) -> None:
    relay = await start_relay(nursery)
    alice_laptop = DeviceIdentity.generate("laptop")
    alice_phone = DeviceIdentity.generate("a-phone")
    bob_phone = DeviceIdentity.generate("phone")
    bob_watch = DeviceIdentity.generate("watch")
    async with (
        raw(relay.url, "alice", "laptop") as laptop,
        raw(relay.url, "alice", "a-phone") as a_phone,
        raw(relay.url, "bob", "phone") as b_phone,
        raw(relay.url, "bob", "watch") as b_watch,
    ):
        for conn, me in ((laptop, alice_laptop), (a_phone, alice_phone), (b_phone, bob_phone),
                         (b_watch, bob_watch)):  # fmt: skip
            await conn.send(me.publish_frame())
            await conn.expect("keys")
        await laptop.send({"type": "keys_get", "userId": "bob", "ref": "b"})
        bob_devices = [verify_device("bob", d) for d in (await laptop.expect("keys"))["devices"]]
        await laptop.send({"type": "keys_get", "userId": "alice", "ref": "a"})
        own = [verify_device("alice", d) for d in (await laptop.expect("keys", ref="a"))["devices"]]
    others = [d for d in own if d.device_id != "laptop"]
    e2e = seal(
        "meet at 6", sender_user="alice", sender_device="laptop", recipients=bob_devices + others
    )
    assert e2e["suite"] == SUITE and e2e["v"] == 1 and e2e["senderDevice"] == "laptop"
    assert sorted(e2e["boxes"]) == ["a-phone", "phone", "watch"]
    assert b"meet at 6" not in str(e2e).encode()
    for me in (bob_phone, bob_watch, alice_phone):
        assert open_e2e(e2e, sender_user="alice", me=me).text == "meet at 6"
    # the sending device addressed no box to itself
    opened = open_e2e(e2e, sender_user="alice", me=alice_laptop)
    assert opened.text is None and opened.undecryptable == "no box for device laptop"


def _pair() -> tuple[DeviceIdentity, dict[str, Any]]:
    bob = DeviceIdentity.generate("phone")
    frame = bob.publish_frame()
    e2e = seal(
        "secret", sender_user="alice", sender_device="laptop",
        recipients=[verify_device("bob", frame)],
    )  # fmt: skip
    return bob, e2e


def test_a_tampered_box_fails_with_a_clear_error() -> None:
    bob, e2e = _pair()
    sealed = bytearray(base64.b64decode(e2e["boxes"]["phone"]))
    sealed[-1] ^= 1
    e2e["boxes"]["phone"] = base64.b64encode(bytes(sealed)).decode()
    with pytest.raises(DecryptionFailed, match="does not decrypt: it was altered"):
        open_e2e(e2e, sender_user="alice", me=bob)


def test_a_box_moved_to_another_sender_or_device_does_not_open() -> None:
    bob, e2e = _pair()
    with pytest.raises(DecryptionFailed):
        open_e2e(e2e, sender_user="mallory", me=bob)  # the relay claims another sender
    with pytest.raises(DecryptionFailed):
        open_e2e({**e2e, "senderDevice": "tablet"}, sender_user="alice", me=bob)
    stranger = DeviceIdentity.generate("phone")  # same device id, other keys
    with pytest.raises(DecryptionFailed):
        open_e2e(e2e, sender_user="alice", me=stranger)


def test_a_forged_signature_is_refused() -> None:
    bob = DeviceIdentity.generate("phone")
    frame = bob.publish_frame()
    frame["encKey"] = DeviceIdentity.generate("x").publish_frame()["encKey"]  # swapped key
    with pytest.raises(BadSignature, match="not signed by the identity key"):
        verify_device("bob", frame)


def test_a_changed_identity_key_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    book = KeyBook()
    first = verify_device("bob", DeviceIdentity.generate("phone").publish_frame())
    assert book.see([first]) == []
    assert book.see([first]) == []
    again = verify_device("bob", DeviceIdentity.generate("phone").publish_frame())
    with caplog.at_level(logging.WARNING, logger="relay.client.e2e"):
        (change,) = book.see([again])
    assert (change.user_id, change.device_id) == ("bob", "phone")
    assert (change.old, change.new) == (first.identity_key, again.identity_key)
    assert "identity key of bob/phone changed" in caplog.text


def test_safety_numbers_match_on_both_sides_and_change_with_a_key() -> None:
    a = [DeviceIdentity.generate("laptop").identity_key]
    b = [DeviceIdentity.generate("phone").identity_key, DeviceIdentity.generate("w").identity_key]
    mine = safety_number("alice", a, "bob", b)
    theirs = safety_number("bob", list(reversed(b)), "alice", a)
    assert mine == theirs
    assert len(mine.split()) == 12 and all(len(g) == 5 and g.isdigit() for g in mine.split())
    swapped = safety_number("alice", a, "bob", [DeviceIdentity.generate("phone").identity_key])
    assert swapped != mine
