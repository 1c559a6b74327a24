// End-to-end encryption of the web chat (contract v2, "End-to-end encryption"), the same scheme
// as relay/client/e2e.py: an Ed25519 identity key signs the raw X25519 encryption key; a message
// is one HPKE box (hpke.js) per device, base64(enc || ciphertext), whose HPKE `info` binds the
// suite, the sender's user and device and the recipient device.
// Invariants:
// - Private keys are made non-extractable and kept in IndexedDB as CryptoKeys: script on the
//   page can use them but never read their bytes, and they never leave this browser profile.
// - A device enters a message's boxes only after its signature verified (verifyDevice).
// - The key book remembers the identity key first seen per (user, device) and reports a change;
//   it never refuses one (the user decides, by comparing safety numbers).
"use strict";

(function (root) {
  const SUITE = "hpke-x25519-sha256-aes256gcm";
  const subtle = root.crypto && root.crypto.subtle;
  const { concat, utf8 } = root.RelayHpke;

  const b64 = (bytes) => {
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(s);
  };
  const unb64 = (text, what) => {
    if (typeof text !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4) {
      throw new E2EError(what + " is not valid base64");
    }
    const s = atob(text);
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  };

  class E2EError extends Error {}

  // The HPKE info of a box: each part as a 2-byte big-endian length and its UTF-8 bytes.
  function info(senderUser, senderDevice, recipientDevice) {
    const parts = [SUITE, senderUser, senderDevice, recipientDevice].map(utf8);
    return concat(...parts.flatMap((p) => [new Uint8Array([p.length >> 8, p.length & 0xff]), p]));
  }

  // Whether this browser has what the scheme needs (X25519 and Ed25519 in WebCrypto, a secure
  // context); resolves to a reason string when not, null when it has.
  async function unsupported() {
    if (!subtle) return "WebCrypto is unavailable (the page is not served over https or from localhost)";
    try {
      await subtle.generateKey({ name: "X25519" }, false, ["deriveBits"]);
      await subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
      return null;
    } catch (e) {
      return "this browser's WebCrypto has no X25519/Ed25519";
    }
  }

  // --- this device's keys, in IndexedDB ------------------------------------------------------
  function idb() {
    return new Promise((resolve, reject) => {
      const req = indexedDB.open("relay-e2e", 1);
      req.onupgradeneeded = () => req.result.createObjectStore("devices");
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  }

  function idbRequest(db, mode, act) {
    return new Promise((resolve, reject) => {
      const tx = db.transaction("devices", mode);
      const req = act(tx.objectStore("devices"));
      tx.oncomplete = () => resolve(req.result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }

  /** This device's identity ({deviceId, identity, enc, identityKey, encKey}), made on first
   * use for (userId, deviceId) and kept. */
  async function loadIdentity(userId, deviceId) {
    const db = await idb();
    try {
      const name = userId + "\n" + deviceId;
      let stored = await idbRequest(db, "readonly", (s) => s.get(name));
      if (!stored) {
        stored = {
          identity: await subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]),
          enc: await subtle.generateKey({ name: "X25519" }, false, ["deriveBits"]),
        };
        await idbRequest(db, "readwrite", (s) => s.put(stored, name));
      }
      return {
        userId, deviceId, identity: stored.identity, enc: stored.enc,
        identityKey: new Uint8Array(await subtle.exportKey("raw", stored.identity.publicKey)),
        encKey: new Uint8Array(await subtle.exportKey("raw", stored.enc.publicKey)),
      };
    } finally {
      db.close();
    }
  }

  async function publishFrame(me) {
    const signature = new Uint8Array(await subtle.sign("Ed25519", me.identity.privateKey, me.encKey));
    return {
      type: "keys_publish", deviceId: me.deviceId,
      identityKey: b64(me.identityKey), encKey: b64(me.encKey), signature: b64(signature),
    };
  }

  /** One device of a `keys` answer, its signature verified: {userId, deviceId, identityKey,
   * encKey} (raw bytes); throws E2EError naming the device otherwise. */
  async function verifyDevice(userId, d) {
    if (!d || typeof d.deviceId !== "string") throw new E2EError("deviceId missing");
    const identity = unb64(d.identityKey, "identityKey");
    const enc = unb64(d.encKey, "encKey");
    const signature = unb64(d.signature, "signature");
    if (identity.length !== 32 || enc.length !== 32) throw new E2EError(userId + "/" + d.deviceId + ": a key has the wrong size");
    let ok = false;
    try {
      const pub = await subtle.importKey("raw", identity, { name: "Ed25519" }, false, ["verify"]);
      ok = await subtle.verify("Ed25519", pub, signature, enc);
    } catch (e) {
      ok = false;
    }
    if (!ok) throw new E2EError(userId + "/" + d.deviceId + ": the encryption key is not signed by the identity key");
    return { userId, deviceId: d.deviceId, identityKey: identity, encKey: enc };
  }

  // --- trust on first use ----------------------------------------------------------------------
  /** Identity keys first seen, per (user, device), kept in localStorage under `name`. `see`
   * returns the devices whose identity key changed since ([{userId, deviceId}]). */
  function keyBook(name) {
    let seen = {};
    try { seen = JSON.parse(localStorage.getItem(name) || "{}") || {}; } catch (e) { seen = {}; }
    return {
      see(devices) {
        const changed = [];
        for (const d of devices) {
          const key = d.userId + "/" + d.deviceId;
          const now = b64(d.identityKey);
          if (seen[key] !== undefined && seen[key] !== now) changed.push({ userId: d.userId, deviceId: d.deviceId });
          seen[key] = now;
        }
        localStorage.setItem(name, JSON.stringify(seen));
        return changed;
      },
    };
  }

  /** The safety number of two users (12 groups of 5 digits), as relay.client.e2e.safety_number. */
  async function safetyNumber(userA, keysA, userB, keysB) {
    const cmp = (a, b) => {
      for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return a[i] - b[i];
      return a.length - b.length;
    };
    async function half(user, keys) {
      const sorted = keys.slice().sort(cmp);
      const raw = new Uint8Array(await subtle.digest("SHA-512",
        concat(utf8("relay-safety-number-v1\0" + user + "\0"), ...sorted)));
      let out = "";
      for (let i = 0; i < 30; i += 5) {
        let n = 0;
        for (let j = i; j < i + 5; j++) n = n * 256 + raw[j]; // 40 bits: exact in a double
        out += String(n % 100000).padStart(5, "0");
      }
      return out;
    }
    const halves = [await half(userA, keysA), await half(userB, keysB)].sort();
    return halves.join("").match(/.{5}/g).join(" ");
  }

  // --- messages --------------------------------------------------------------------------------
  /** The `e2e` object of a message from (me.userId, me.deviceId) to `recipients` (verified). */
  async function sealText(text, me, recipients) {
    const plaintext = utf8(text);
    const boxes = {};
    for (const d of recipients) {
      boxes[d.deviceId] = b64(await root.RelayHpke.seal(d.encKey, info(me.userId, me.deviceId, d.deviceId), plaintext));
    }
    return { v: 1, suite: SUITE, senderDevice: me.deviceId, boxes };
  }

  /** What this device reads of an encrypted message: {text} or {undecryptable: why}, never a
   * throw (a page must show every message, readable or not). */
  async function openText(e2e, senderUser, me) {
    if (!e2e || e2e.v !== 1 || e2e.suite !== SUITE) return { undecryptable: "unsupported encryption (version or suite)" };
    if (typeof e2e.senderDevice !== "string" || !e2e.boxes || typeof e2e.boxes !== "object") {
      return { undecryptable: "malformed encrypted message" };
    }
    const box = e2e.boxes[me.deviceId];
    if (box === undefined) return { undecryptable: "not encrypted for this device (no box for " + me.deviceId + ")" };
    let plaintext;
    try {
      plaintext = await root.RelayHpke.open(me.enc.privateKey, me.encKey, info(senderUser, e2e.senderDevice, me.deviceId), unb64(box, "box"));
    } catch (e) {
      return { undecryptable: "does not decrypt: altered, or sealed for another device or key", failed: true };
    }
    try {
      return { text: new TextDecoder("utf-8", { fatal: true }).decode(plaintext) };
    } catch (e) {
      return { undecryptable: "the decrypted text is not UTF-8", failed: true };
    }
  }

  root.RelayE2E = Object.freeze({
    SUITE, E2EError, unsupported, loadIdentity, publishFrame, verifyDevice, keyBook, safetyNumber,
    sealText, openText, b64,
  });
})(globalThis);
