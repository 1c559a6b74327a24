"""keys_publish / keys_get between real clients over a real relay (contract v2, "End-to-end
encryption"): a device publishes its own keys only, others fetch them byte for byte and can
verify the signature, malformed keys are refused naming the field, and a relay whose store
keeps no keys says so."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from support import start_relay

from relay.store.memory import MemoryStore


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def device_keys(device: str) -> dict[str, Any]:
    identity = Ed25519PrivateKey.generate()
    enc = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {
        "type": "keys_publish",
        "deviceId": device,
        "identityKey": b64(identity.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)),
        "encKey": b64(enc),
        "signature": b64(identity.sign(enc)),
    }


async def test_devices_publish_and_others_fetch_verifiable_keys(
    nursery: trio.Nursery, raw: Any, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, db_path=str(tmp_path / "relay.db"))
    phone, watch = device_keys("phone"), device_keys("watch")
    async with (
        raw(relay.url, "bob", "phone") as bob_phone,
        raw(relay.url, "bob", "watch") as bob_watch,
        raw(relay.url, "alice", "laptop") as alice,
    ):
        await bob_phone.send({**phone, "ref": "p1"})
        assert [d["deviceId"] for d in (await bob_phone.expect("keys", ref="p1"))["devices"]] == [
            "phone"
        ]
        await bob_watch.send(watch)
        await bob_watch.expect("keys")
        await alice.send({"type": "keys_get", "userId": "bob", "ref": "g"})
        answer = await alice.expect("keys", ref="g")
        assert answer["userId"] == "bob"
        got = {d["deviceId"]: d for d in answer["devices"]}
        assert sorted(got) == ["phone", "watch"]
        for sent in (phone, watch):
            d = got[sent["deviceId"]]
            assert (d["identityKey"], d["encKey"], d["signature"]) == (
                sent["identityKey"],
                sent["encKey"],
                sent["signature"],
            )
            assert d["updatedAt"].endswith("Z")
            # what a client checks: the identity key signed this encryption key
            Ed25519PublicKey.from_public_bytes(base64.b64decode(d["identityKey"])).verify(
                base64.b64decode(d["signature"]), base64.b64decode(d["encKey"])
            )
        # publishing for another device (even of the same user) is forbidden
        await bob_phone.send({**watch, "ref": "w"})
        error = await bob_phone.expect("error", ref="w")
        assert (error["code"], error["field"]) == ("forbidden", "deviceId")
        await alice.send({"type": "keys_get", "userId": "nobody", "ref": "n"})
        assert (await alice.expect("keys", ref="n"))["devices"] == []


@pytest.mark.parametrize(
    "change,field",
    [
        ({"identityKey": b64(b"x" * 31)}, "identityKey"),
        ({"encKey": b64(b"x" * 33)}, "encKey"),
        ({"encKey": "not base64!" + "A" * 33}, "encKey"),
        ({"signature": b64(b"x" * 32)}, "signature"),
        ({"signature": None}, "signature"),
        ({"deviceId": ""}, "deviceId"),
    ],
)
async def test_malformed_keys_are_invalid_naming_the_field(
    relay: Any, raw: Any, change: dict[str, Any], field: str
) -> None:
    async with raw(relay.url, "bob", "phone") as bob:
        frame = {k: v for k, v in {**device_keys("phone"), **change}.items() if v is not None}
        await bob.send({**frame, "ref": "bad"})
        error = await bob.expect("error", ref="bad")
        assert (error["code"], error["field"]) == ("invalid", field)
        await bob.send({"type": "keys_get", "userId": "bob", "ref": "g"})
        assert (await bob.expect("keys", ref="g"))["devices"] == []  # nothing stored


class NoKeys(MemoryStore):
    """A store without the KeyStore ability: the same methods, hidden."""

    publish_keys = None  # type: ignore[assignment]
    device_keys = None  # type: ignore[assignment]


async def test_a_store_without_keys_answers_not_found(nursery: trio.Nursery, raw: Any) -> None:
    relay = await start_relay(nursery, store=NoKeys())
    async with raw(relay.url, "bob", "phone") as bob:
        await bob.send({**device_keys("phone"), "ref": "p"})
        assert (await bob.expect("error", ref="p"))["code"] == "not_found"
        await bob.send({"type": "keys_get", "userId": "bob", "ref": "g"})
        assert (await bob.expect("error", ref="g"))["code"] == "not_found"
