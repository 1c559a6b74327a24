"""End-to-end encryption for the Python client (contract v2, "End-to-end encryption"), sans-IO.

Suite `hpke-x25519-sha256-aes256gcm`: HPKE (RFC 9180) base mode, DHKEM(X25519, HKDF-SHA256),
HKDF-SHA256, AES-256-GCM, through `cryptography`'s HPKE (no primitive is written here).
A box is base64(enc || ciphertext), one per recipient device and per other device of the
sender. HPKE's `info` binds each box to its context — suite, sender user and device, and the
recipient device — so a relay that moves a box to another message, sender or device makes it
fail to open instead of showing another text.

Keys: each device has an Ed25519 identity key and an X25519 encryption key; the identity key
signs the raw encryption key (`keys_publish`). `verify_device` refuses a device whose
signature does not verify (BadSignature); `KeyBook` remembers identity keys first seen
(trust on first use) and reports — a warning in the log and an IdentityKeyChanged value —
when a known device's identity key changes. `safety_number` is the fingerprint two users
compare out of band.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from attrs import define, field, frozen
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from relay.errors import ClientError

log = logging.getLogger("relay.client.e2e")

SUITE = "hpke-x25519-sha256-aes256gcm"
_HPKE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
#: the encapsulated key's length: a box is enc (the sender's ephemeral X25519 key) || ciphertext
ENC_BYTES = 32


class E2EError(ClientError):
    """End-to-end encryption failed; the message says why."""


class BadSignature(E2EError):
    """A device's encryption key is not signed by its identity key."""


class DecryptionFailed(E2EError):
    """A box did not open: tampered with, for another context, or for another key."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise E2EError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise E2EError(f"{what} is not valid base64") from None


def _raw(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def box_info(sender_user: str, sender_device: str, recipient_device: str) -> bytes:
    """HPKE's `info` of a box: the suite, the sender's user and device and the recipient
    device, each as a 2-byte length and its UTF-8."""
    parts = (SUITE, sender_user, sender_device, recipient_device)
    return b"".join(len(p.encode()).to_bytes(2, "big") + p.encode() for p in parts)


def seal_box(plaintext: bytes, recipient: X25519PublicKey, info: bytes) -> bytes:
    """One HPKE box (RFC 9180 SealBase, single shot: sequence number 0, empty aad) of SUITE:
    enc || ciphertext, with a fresh ephemeral key."""
    return _HPKE.encrypt(plaintext, recipient, info=info)


def open_box(box: bytes, recipient: X25519PrivateKey, info: bytes) -> bytes:
    """seal_box's inverse (RFC 9180 OpenBase); raises DecryptionFailed when the box does not
    open under this key and `info`."""
    try:
        return _HPKE.decrypt(box, recipient, info=info)
    except (InvalidTag, ValueError):
        raise DecryptionFailed(
            "the box does not decrypt: it was altered, or sealed for another device, key or context"
        ) from None


@frozen
class DeviceKeys:
    """A device's public keys as published (raw bytes), its signature verified."""

    user_id: str
    device_id: str
    identity_key: bytes
    enc_key: bytes


@define
class DeviceIdentity:
    """This device's private keys. Keep them on the device; `publish_frame` is what the relay
    may see."""

    device_id: str
    identity: Ed25519PrivateKey
    enc: X25519PrivateKey

    @classmethod
    def generate(cls, device_id: str) -> DeviceIdentity:
        return cls(device_id, Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    @property
    def identity_key(self) -> bytes:
        return _raw(self.identity.public_key())

    @property
    def enc_key(self) -> bytes:
        return _raw(self.enc.public_key())

    def publish_frame(self) -> dict[str, Any]:
        enc = self.enc_key
        return {
            "type": "keys_publish",
            "deviceId": self.device_id,
            "identityKey": _b64(self.identity_key),
            "encKey": _b64(enc),
            "signature": _b64(self.identity.sign(enc)),
        }


def verify_device(user_id: str, device: Mapping[str, Any]) -> DeviceKeys:
    """One device of a `keys` answer, its signature verified; raises BadSignature (or E2EError
    for a malformed entry)."""
    device_id = device.get("deviceId")
    if not isinstance(device_id, str):
        raise E2EError("deviceId missing")
    identity = _unb64(device.get("identityKey"), "identityKey")
    enc = _unb64(device.get("encKey"), "encKey")
    signature = _unb64(device.get("signature"), "signature")
    try:
        public = Ed25519PublicKey.from_public_bytes(identity)
        X25519PublicKey.from_public_bytes(enc)
    except ValueError:
        raise E2EError(f"{user_id}/{device_id}: a key has the wrong size") from None
    try:
        public.verify(signature, enc)
    except InvalidSignature:
        raise BadSignature(
            f"{user_id}/{device_id}: the encryption key is not signed by the identity key"
        ) from None
    return DeviceKeys(user_id, device_id, identity, enc)


# --- trust ----------------------------------------------------------------------------------------


@frozen
class IdentityKeyChanged:
    """A known device now shows another identity key: compare safety numbers again."""

    user_id: str
    device_id: str
    old: bytes
    new: bytes


@define
class KeyBook:
    """Identity keys seen per (user, device): first seen is trusted; a change is reported."""

    _seen: dict[tuple[str, str], bytes] = field(factory=dict)

    def see(self, devices: Iterable[DeviceKeys]) -> list[IdentityKeyChanged]:
        changes = []
        for d in devices:
            key = (d.user_id, d.device_id)
            old = self._seen.get(key)
            if old is not None and old != d.identity_key:
                log.warning(
                    "the identity key of %s/%s changed: compare safety numbers again",
                    d.user_id,
                    d.device_id,
                )
                changes.append(IdentityKeyChanged(d.user_id, d.device_id, old, d.identity_key))
            self._seen[key] = d.identity_key
        return changes


def safety_number(
    user_a: str, keys_a: Iterable[bytes], user_b: str, keys_b: Iterable[bytes]
) -> str:
    """60 digits in 12 groups of 5 that both users compute the same (their halves in user id
    order), from each user's id and identity keys; equal numbers mean no key was swapped."""

    def half(user: str, keys: Iterable[bytes]) -> str:
        digest = hashlib.sha512(b"relay-safety-number-v1\0" + user.encode() + b"\0")
        for key in sorted(keys):
            digest.update(key)
        raw = digest.digest()
        return "".join(
            f"{int.from_bytes(raw[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5)
        )

    halves = sorted([half(user_a, keys_a), half(user_b, keys_b)])
    digits = "".join(halves)
    return " ".join(digits[i : i + 5] for i in range(0, 60, 5))


# --- boxes ----------------------------------------------------------------------------------------


def seal(
    text: str, *, sender_user: str, sender_device: str, recipients: Iterable[DeviceKeys]
) -> dict[str, Any]:
    """The `e2e` object of a message: one box per recipient device (pass every device of the
    peer and the sender's other devices, each verified)."""
    plaintext = text.encode()
    boxes = {
        d.device_id: _b64(
            seal_box(
                plaintext,
                X25519PublicKey.from_public_bytes(d.enc_key),
                box_info(sender_user, sender_device, d.device_id),
            )
        )
        for d in recipients
    }
    return {"v": 1, "suite": SUITE, "senderDevice": sender_device, "boxes": boxes}


@frozen
class Opened:
    """What a device reads of an encrypted message: its text, or why it has none."""

    text: str | None
    undecryptable: str | None = None  # why no text: no box for this device


def open_e2e(e2e: Mapping[str, Any], *, sender_user: str, me: DeviceIdentity) -> Opened:
    """Open this device's box. A message without one is `undecryptable` (not an error: it was
    sent before this device published keys); a box that does not open raises
    DecryptionFailed."""
    if e2e.get("v") != 1 or e2e.get("suite") != SUITE:
        raise E2EError(f"unsupported e2e version or suite: {e2e.get('v')!r} {e2e.get('suite')!r}")
    sender_device = e2e.get("senderDevice")
    boxes = e2e.get("boxes")
    if not isinstance(sender_device, str) or not isinstance(boxes, Mapping):
        raise E2EError("e2e needs senderDevice and boxes")
    box = boxes.get(me.device_id)
    if box is None:
        return Opened(None, f"no box for device {me.device_id}")
    sealed = _unb64(box, "box")
    try:
        plaintext = open_box(sealed, me.enc, box_info(sender_user, sender_device, me.device_id))
    except DecryptionFailed:
        raise DecryptionFailed(
            f"the box from {sender_user}/{sender_device} does not decrypt: it was altered, "
            "or sealed for another device or key"
        ) from None
    try:
        return Opened(plaintext.decode())
    except UnicodeDecodeError:
        raise DecryptionFailed("the decrypted text is not UTF-8") from None
