"""The key-directory frames of contract v2, "End-to-end encryption" (sans-IO): `keys_publish`
and `keys_get` as typed values, their parsers (registered in relay.protocol.parse's table),
and the `keys` answer.

The relay checks only the keys' shape: standard base64 (with padding) of exactly the sizes
the suite fixes — an Ed25519 public key (32 bytes), an X25519 public key (32 bytes), an
Ed25519 signature (64 bytes). Whether the signature verifies is for the clients to check:
they must not trust the relay (docs/PROTOCOL.md, threat model).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

import orjson
from attrs import frozen

from relay.protocol.fields import Fields
from relay.protocol.limits import IDENT_MAX, Limits
from relay.store.base import DeviceKeys

#: field -> the decoded size its base64 must have
KEY_SIZES = {"identityKey": 32, "encKey": 32, "signature": 64}


@frozen
class KeysPublishFrame:
    device_id: str
    identity_key: str
    enc_key: str
    signature: str
    ref: str | None = None


@frozen
class KeysGetFrame:
    user_id: str
    ref: str | None = None


KeysFrame = KeysPublishFrame | KeysGetFrame


def _key(f: Fields, name: str) -> str:
    size = KEY_SIZES[name]
    text = f.required_string(name, max_len=4 * ((size + 2) // 3))
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != size:
        raise f.fail(name, f"must be the standard base64 of {size} bytes")
    return text


def parse_keys_publish(f: Fields, limits: Limits) -> KeysPublishFrame:
    return KeysPublishFrame(
        device_id=f.required_string("deviceId", max_len=IDENT_MAX),
        identity_key=_key(f, "identityKey"),
        enc_key=_key(f, "encKey"),
        signature=_key(f, "signature"),
        ref=f.ref,
    )


def parse_keys_get(f: Fields, limits: Limits) -> KeysGetFrame:
    return KeysGetFrame(user_id=f.required_string("userId", max_len=IDENT_MAX), ref=f.ref)


def encode_keys(user_id: str, devices: Sequence[DeviceKeys], *, ref: str | None = None) -> bytes:
    body: dict[str, object] = {
        "type": "keys",
        "userId": user_id,
        "devices": [
            {
                "deviceId": d.device_id,
                "identityKey": d.identity_key,
                "encKey": d.enc_key,
                "signature": d.signature,
                "updatedAt": d.updated_at,
            }
            for d in devices
        ],
    }
    if ref is not None:
        body["ref"] = ref
    return orjson.dumps(body)
