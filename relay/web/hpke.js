// HPKE (RFC 9180) base mode for the suite "hpke-x25519-sha256-aes256gcm": DHKEM(X25519,
// HKDF-SHA256), HKDF-SHA256, AES-256-GCM; single-shot seal/open (sequence number 0, empty
// aad), the box being enc || ciphertext. The same bytes as relay/client/e2e.py (`cryptography`'s
// HPKE), which tests/test_web_chat_e2e.py checks both ways.
// Invariants:
// - Every primitive is WebCrypto's: X25519 (DH), HMAC-SHA256 (the bare Extract), HKDF-SHA256
//   (Extract then Expand in one call), AES-GCM. This file only lays out RFC 9180's labels.
// - LabeledExtract with an empty salt is HMAC keyed with 32 zero bytes: HMAC pads its key with
//   zeros to the block size, so the two keys are the same key (RFC 5869 2.2 says so too), and
//   WebCrypto refuses an empty HMAC key.
// Works in a page and in Node (globalThis.crypto); exposes globalThis.RelayHpke.
"use strict";

(function (root) {
  const subtle = root.crypto && root.crypto.subtle;
  const utf8 = (s) => new TextEncoder().encode(s);
  const i2osp = (n, w) => {
    const out = new Uint8Array(w);
    for (let i = w - 1; i >= 0; i--) { out[i] = n & 0xff; n >>>= 8; }
    return out;
  };
  const concat = (...parts) => {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  };

  const KEM_ID = 0x0020, KDF_ID = 0x0001, AEAD_ID = 0x0002; // X25519, HKDF-SHA256, AES-256-GCM
  const N_SECRET = 32, N_ENC = 32, N_K = 32, N_N = 12;
  const KEM_SUITE = concat(utf8("KEM"), i2osp(KEM_ID, 2));
  const HPKE_SUITE = concat(utf8("HPKE"), i2osp(KEM_ID, 2), i2osp(KDF_ID, 2), i2osp(AEAD_ID, 2));
  const V1 = utf8("HPKE-v1");
  const ZERO_SALT = new Uint8Array(32);

  const labeledIkm = (suite, label, ikm) => concat(V1, suite, utf8(label), ikm);
  const labeledInfo = (suite, label, info, length) => concat(i2osp(length, 2), V1, suite, utf8(label), info);

  // LabeledExtract alone: HMAC-SHA256(salt, labeled ikm).
  async function labeledExtract(suite, salt, label, ikm) {
    const key = await subtle.importKey("raw", salt.length ? salt : ZERO_SALT, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    return new Uint8Array(await subtle.sign("HMAC", key, labeledIkm(suite, label, ikm)));
  }

  // LabeledExpand(LabeledExtract(salt, extractLabel, ikm), expandLabel, info, length): one HKDF.
  async function extractAndExpand(suite, salt, extractLabel, ikm, expandLabel, info, length) {
    const key = await subtle.importKey("raw", labeledIkm(suite, extractLabel, ikm), "HKDF", false, ["deriveBits"]);
    const bits = await subtle.deriveBits(
      { name: "HKDF", hash: "SHA-256", salt, info: labeledInfo(suite, expandLabel, info, length) }, key, length * 8);
    return new Uint8Array(bits);
  }

  // DHKEM's shared secret from the DH output and kem_context = enc || pkRm.
  async function kemSecret(dh, enc, pkRm) {
    return extractAndExpand(KEM_SUITE, new Uint8Array(0), "eae_prk", dh, "shared_secret", concat(enc, pkRm), N_SECRET);
  }

  // The base-mode key schedule: the AEAD key and base nonce (empty psk and psk_id).
  async function keySchedule(sharedSecret, info) {
    const pskIdHash = await labeledExtract(HPKE_SUITE, new Uint8Array(0), "psk_id_hash", new Uint8Array(0));
    const infoHash = await labeledExtract(HPKE_SUITE, new Uint8Array(0), "info_hash", info);
    const context = concat(new Uint8Array([0]), pskIdHash, infoHash);
    const key = await extractAndExpand(HPKE_SUITE, sharedSecret, "secret", new Uint8Array(0), "key", context, N_K);
    const nonce = await extractAndExpand(HPKE_SUITE, sharedSecret, "secret", new Uint8Array(0), "base_nonce", context, N_N);
    return {
      key: await subtle.importKey("raw", key, "AES-GCM", false, ["encrypt", "decrypt"]),
      nonce,
    };
  }

  async function x25519(privateKey, publicRaw) {
    const pub = await subtle.importKey("raw", publicRaw, { name: "X25519" }, true, []);
    // WebCrypto refuses an all-zero result (a small-order public key), as RFC 9180 asks.
    return new Uint8Array(await subtle.deriveBits({ name: "X25519", public: pub }, privateKey, 256));
  }

  /** The box for recipient public key `pkRm` (32 raw bytes): enc || AES-GCM ciphertext. */
  async function seal(pkRm, info, plaintext) {
    const eph = await subtle.generateKey({ name: "X25519" }, false, ["deriveBits"]);
    const enc = new Uint8Array(await subtle.exportKey("raw", eph.publicKey));
    const shared = await kemSecret(await x25519(eph.privateKey, pkRm), enc, pkRm);
    const { key, nonce } = await keySchedule(shared, info);
    const ct = new Uint8Array(await subtle.encrypt({ name: "AES-GCM", iv: nonce }, key, plaintext));
    return concat(enc, ct);
  }

  /** The plaintext of `box` for the recipient's private key (pkRm: its raw public key); throws
   * (OperationError) when the box does not open. */
  async function open(skR, pkRm, info, box) {
    if (box.length < N_ENC + 16) throw new Error("box too short");
    const enc = box.subarray(0, N_ENC);
    const shared = await kemSecret(await x25519(skR, enc), enc, pkRm);
    const { key, nonce } = await keySchedule(shared, info);
    return new Uint8Array(await subtle.decrypt({ name: "AES-GCM", iv: nonce }, key, box.subarray(N_ENC)));
  }

  root.RelayHpke = Object.freeze({ seal, open, concat, utf8, i2osp });
})(globalThis);
