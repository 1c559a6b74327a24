"""The client's HPKE boxes (relay.client.e2e: seal_box / open_box, suite
hpke-x25519-sha256-aes256gcm) held to RFC 9180's published test vector.

The vector (tests/e2e/data/hpke_rfc9180_a1_1.json) is RFC 9180 Appendix A.1.1: Base mode,
DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM. The RFC publishes no vector for the
client's AEAD (AES-256-GCM, aead_id 2); the test-vectors.json of the CFRG draft repository
that has one, as stored for this project, is a pre-RFC draft's (its shared secret, key and
nonce are not what RFC 9180's schedule gives, nor what `cryptography` computes). So:

- the RFC's vector is checked as published, through `cryptography`'s HPKE (the engine the
  client uses) and through the reference schedule below, which reproduces every value of it;
- the vector's X25519 shared secret does not depend on the AEAD, so the client's suite is
  checked on the same keys: its key and base nonce are that reference schedule's for
  aead_id 2, and the client opens exactly what they seal, and seals what they open.

The reference schedule is RFC 9180 sections 4 and 5.1 written over `cryptography`'s HMAC and
HKDF-Expand: the test's expectation, never the client's code. `cryptography`'s HPKE cannot be
given the ephemeral key, so the client's sealing is checked by opening its boxes here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.bindings._rust import openssl as rust_openssl
from cryptography.hazmat.primitives import hashes, hmac, hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from relay.client.e2e import ENC_BYTES, DecryptionFailed, open_box, seal_box

VECTOR: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "hpke_rfc9180_a1_1.json").read_text()
)
V = {k: bytes.fromhex(v) for k, v in VECTOR.items() if isinstance(v, str) and k != "source"}
(E0,) = [{k: bytes.fromhex(v) for k, v in e.items() if k != "sequence_number"} for e in VECTOR["encryptions"]]  # fmt: skip
#: the client's AEAD, AES-256-GCM (RFC 9180 section 7.3); a box of another AEAD does not open
CLIENT_AEAD = 2
#: the AEAD key length of each aead_id (RFC 9180 section 7.3)
NK = {1: 16, 2: 32}


# --- RFC 9180's schedule, for the expectations ------------------------------------------------------


def _extract(salt: bytes, ikm: bytes) -> bytes:
    mac = hmac.HMAC(salt or bytes(32), hashes.SHA256())
    mac.update(ikm)
    return mac.finalize()


def _labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return _extract(salt, b"HPKE-v1" + suite_id + label + ikm)


def _labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, size: int) -> bytes:
    labeled = size.to_bytes(2, "big") + b"HPKE-v1" + suite_id + label + info
    return HKDFExpand(hashes.SHA256(), size, labeled).derive(prk)


def _raw(key: X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def decap(sk_r: X25519PrivateKey, enc: bytes) -> bytes:
    """DHKEM(X25519, HKDF-SHA256).Decap (section 4.1): the shared secret."""
    kem_id = b"KEM" + (0x0020).to_bytes(2, "big")
    dh = sk_r.exchange(X25519PublicKey.from_public_bytes(enc))
    prk = _labeled_extract(kem_id, b"", b"eae_prk", dh)
    return _labeled_expand(kem_id, prk, b"shared_secret", enc + _raw(sk_r.public_key()), 32)


def schedule(aead_id: int, shared_secret: bytes, info: bytes) -> dict[str, bytes]:
    """KeyScheduleS/R in Base mode (section 5.1) for DHKEM(X25519), HKDF-SHA256 and `aead_id`."""
    suite_id = b"HPKE" + b"".join(i.to_bytes(2, "big") for i in (0x0020, 0x0001, aead_id))
    context = (
        b"\x00"
        + _labeled_extract(suite_id, b"", b"psk_id_hash", b"")
        + _labeled_extract(suite_id, b"", b"info_hash", info)
    )
    secret = _labeled_extract(suite_id, shared_secret, b"secret", b"")
    return {
        "key_schedule_context": context,
        "secret": secret,
        "key": _labeled_expand(suite_id, secret, b"key", context, NK[aead_id]),
        "base_nonce": _labeled_expand(suite_id, secret, b"base_nonce", context, 12),
    }


SK_R = X25519PrivateKey.from_private_bytes(V["skRm"])


# --- the published vector ---------------------------------------------------------------------------


def test_the_reference_schedule_reproduces_the_published_vector() -> None:
    assert _raw(SK_R.public_key()) == V["pkRm"]
    assert _raw(X25519PrivateKey.from_private_bytes(V["skEm"]).public_key()) == V["enc"]
    assert decap(SK_R, V["enc"]) == V["shared_secret"]
    derived = schedule(VECTOR["aead_id"], V["shared_secret"], V["info"])
    for name, value in derived.items():
        assert value == V[name], name
    assert AESGCM(V["key"]).encrypt(E0["nonce"], E0["pt"], E0["aad"]) == E0["ct"]


def test_cryptographys_hpke_opens_the_published_ciphertext_exactly() -> None:
    # the one entry point that takes the vector's aad ("Count-0"): the client's boxes have
    # none, and Suite.decrypt takes none
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
    opened = rust_openssl.hpke._decrypt_with_aad(
        suite, V["enc"] + E0["ct"], SK_R, info=V["info"], aad=E0["aad"]
    )
    assert opened == E0["pt"]


# --- the client's suite on the vector's keys ---------------------------------------------------------


def test_the_client_opens_exactly_what_rfc_9180_seals_for_its_suite() -> None:
    ours = schedule(CLIENT_AEAD, V["shared_secret"], V["info"])
    ct = AESGCM(ours["key"]).encrypt(ours["base_nonce"], E0["pt"], b"")
    assert open_box(V["enc"] + ct, SK_R, V["info"]) == E0["pt"]
    # one bit off anywhere (the encapsulated key, the ciphertext, the tag), or another info
    box = bytearray(V["enc"] + ct)
    for at in (0, ENC_BYTES + 3, len(box) - 1):
        box[at] ^= 1
        with pytest.raises(DecryptionFailed, match="does not decrypt"):
            open_box(bytes(box), SK_R, V["info"])
        box[at] ^= 1
    with pytest.raises(DecryptionFailed):
        open_box(bytes(box), SK_R, V["info"] + b"!")
    # the AES-128 box of the published vector is not one of this suite's
    aes128 = schedule(1, V["shared_secret"], V["info"])
    ct128 = AESGCM(aes128["key"]).encrypt(aes128["base_nonce"], E0["pt"], b"")
    with pytest.raises(DecryptionFailed):
        open_box(V["enc"] + ct128, SK_R, V["info"])


def test_the_client_seals_rfc_9180_base_mode_boxes_for_its_suite() -> None:
    boxes = [seal_box(E0["pt"], SK_R.public_key(), V["info"]) for _ in range(2)]
    for box in boxes:
        enc, ct = box[:ENC_BYTES], box[ENC_BYTES:]
        ours = schedule(CLIENT_AEAD, decap(SK_R, enc), V["info"])
        assert AESGCM(ours["key"]).decrypt(ours["base_nonce"], ct, b"") == E0["pt"]
        assert len(ct) == len(E0["pt"]) + 16  # the GCM tag
    # a fresh ephemeral key each time (the API cannot be given one)
    assert boxes[0][:ENC_BYTES] != boxes[1][:ENC_BYTES]
