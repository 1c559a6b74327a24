// relay web chat: protocol v1 and v2 (files, end-to-end encryption, voice calls) over one
// WebSocket to the relay that served this page; hpke.js, e2e.js, attachments.js and calls.js hold the
// parts of those features that do not touch this page's state.
// Invariants:
// - User text only ever reaches the DOM through textContent and text nodes, never as HTML.
// - A message keeps its client id from the moment it is typed; it stays in `outbox` until its
//   `sent` receipt (or `failed`), and every (re)connection resends the outbox, in order, with
//   the same ids: the relay's idempotency key (senderId, id) makes a resend harmless.
// - A tick only moves forward: pending -> sent -> delivered -> read (failed is terminal).
// - A message is made ready (files uploaded, text sealed) in the order it was typed, one at a
//   time (`preparing`), and only then enters the outbox: the outbox order is the typed order.
// - A direct conversation is end-to-end encrypted when the peer has published at least one
//   device key whose signature verifies; its text then never leaves the page in clear, and a
//   conversation that was encrypted never falls back to clear text silently (the message fails).
"use strict";

(function () {
  const RANK = { pending: 0, sent: 1, delivered: 2, read: 3, failed: 4 };
  const PAGE = 50;
  const TYPING_REFRESH_MS = 3000;
  const TYPING_IDLE_MS = 5000;
  const TYPING_SHOWN_MS = 12000;
  const ACK_DELAY_MS = 50;

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  };

  // --- state ----------------------------------------------------------------------------------
  let me = null;              // {userId, userName, userAvatar, token, deviceId}
  let ws = null;
  let connected = false;      // auth_ok received on the current socket
  let attempt = 0;            // reconnect attempts since the last auth_ok
  let reconnectTimer = null;
  let refCounter = 0;
  const convs = new Map();    // key ("u:<peer>" / "g:<group>") -> conversation
  const outbox = new Map();   // message id -> my message not yet `sent`, in send order
  const presence = new Map(); // userId -> {status, lastSeen}
  const historyRefs = new Map(); // ref -> {key, older}
  const acksDue = new Map();  // key -> highest seq received, not yet acknowledged
  let ackTimer = null;
  let openKey = null;
  let typingSentAt = 0;
  let typingTarget = null;
  let typingIdleTimer = null;
  let httpToken = null;       // auth_ok's, for /files
  let iceServers = [];        // auth_ok's, for calls
  let staged = [];            // files chosen for the next message
  let preparing = Promise.resolve(); // the chain that readies typed messages in order

  // End-to-end encryption: this device's keys, peers' verified devices, what was seen before.
  let identity = null;        // Promise of this device's keys (RelayE2E.loadIdentity)
  let e2eProblem = null;      // why this browser cannot encrypt (null: it can)
  let keyBook = null;
  const keysCache = new Map(); // userId -> {devices: [verified], at: ms}
  const keyWaits = new Map();  // keys_get ref -> {userId, resolve}
  let onlineWaiters = [];
  let keysPublished = false;  // the relay answered this connection's keys_publish

  const calls = RelayCalls.create({
    send: (frame) => send(frame), iceServers: () => iceServers, onChange: () => render(), audio: $("call-audio"),
  });
  let callTimer = null;

  const keyOf = (target) => (target.groupId !== undefined ? "g:" + target.groupId : "u:" + target.peerId);
  const targetOf = (conv) => (conv.groupId !== undefined ? { groupId: conv.groupId } : { peerId: conv.peerId });
  const msgKey = (senderId, id) => senderId + "\n" + id;
  const nextRef = (prefix) => prefix + (++refCounter);

  function conv(target) {
    const key = keyOf(target);
    let c = convs.get(key);
    if (!c) {
      c = {
        key, peerId: target.peerId, groupId: target.groupId, name: target.groupId !== undefined ? target.groupId : target.peerId,
        members: [], messages: new Map(), lastMessage: null, unread: 0, lastSeq: 0, readSeq: 0,
        updatedAt: "", delivered: 0, read: 0, hasMore: true, loaded: false, oldest: 0,
        typing: new Map(),
      };
      convs.set(key, c);
    }
    return c;
  }

  // --- connection -----------------------------------------------------------------------------
  function wsUrl() {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/";
  }

  function send(frame) {
    if (ws && ws.readyState === WebSocket.OPEN && (connected || frame.type === "auth")) {
      ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  function connect() {
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    if (!me) return;
    setConn(attempt ? "reconnecting…" : "connecting…", "");
    const sock = new WebSocket(wsUrl());
    ws = sock;
    connected = false;
    sock.onopen = () => {
      const auth = {
        type: "auth", userId: me.userId, userName: me.userName, userAvatar: me.userAvatar,
        deviceId: me.deviceId, acks: true, timestamp: new Date().toISOString(),
      };
      if (me.token) auth.token = me.token;
      sock.send(JSON.stringify(auth));
    };
    sock.onmessage = (event) => {
      if (sock !== ws) return;
      let frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      if (frame && typeof frame.type === "string") handle(frame);
    };
    sock.onclose = (event) => {
      if (sock !== ws) return;
      ws = null;
      connected = false;
      httpToken = null;
      calls.disconnected();
      for (const w of keyWaits.values()) w.resolve(null);
      keyWaits.clear();
      for (const c of convs.values()) c.typing.clear();
      if (!me) return;
      if (event.code === 1008 && loginFailed) {
        signOut(loginFailed);
        return;
      }
      scheduleReconnect(event.code);
    };
  }

  let loginFailed = null;

  function scheduleReconnect(code) {
    // Exponential backoff with jitter: 0.5 s, 1 s, 2 s ... at most 15 s.
    const base = Math.min(15000, 500 * Math.pow(2, attempt));
    const delay = Math.round(base * (0.5 + Math.random() / 2));
    attempt += 1;
    const until = Date.now() + delay;
    const tick = () => {
      if (reconnectTimer === null || ws) return;
      const left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
      setConn("offline — reconnecting in " + left + " s" + (code ? " (" + code + ")" : ""), "offline");
      if (left > 0) setTimeout(tick, 1000);
    };
    reconnectTimer = setTimeout(connect, delay);
    tick();
    render();
  }

  function setConn(text, cls) {
    const node = $("conn");
    node.textContent = text;
    node.className = "conn " + cls;
  }

  // --- frames from the relay ------------------------------------------------------------------
  function handle(f) {
    switch (f.type) {
      case "auth_ok": return onAuthOk(f);
      case "message": return onMessage(f, false);
      case "receipt": return onReceipt(f);
      case "conversations": return onConversations(f);
      case "history": return onHistory(f);
      case "status": return onStatus(f);
      case "presence": return onPresence(f);
      case "typing": return onTyping(f);
      case "group": return onGroup(f);
      case "keys": return onKeys(f);
      case "error":
        if (calls.handle(f)) return undefined;
        return onError(f);
      default:
        if (f.type.startsWith("call_")) calls.handle(f);
        return undefined;
    }
  }

  function onAuthOk(f) {
    connected = true;
    attempt = 0;
    loginFailed = null;
    httpToken = typeof f.httpToken === "string" ? f.httpToken : null;
    iceServers = Array.isArray(f.iceServers) ? f.iceServers : [];
    setConn("online", "online");
    keysPublished = false;
    publishKeys();
    for (const w of onlineWaiters.splice(0)) w();
    send({ type: "conversations", ref: nextRef("c") });
    // Messages typed while offline, and those whose `sent` never came: same ids, in order.
    for (const m of outbox.values()) send(messageFrame(m));
    const c = openKey && convs.get(openKey);
    if (c) {
      if (c.loaded) fillGap(c); else requestHistory(c, false);
      if (c.peerId !== undefined) {
        queryPresence([c.peerId]);
        keysOf(c.peerId);
      }
    }
    render();
  }

  function onError(f) {
    const wait = f.ref !== undefined && keyWaits.get(f.ref);
    if (wait) {
      // keys_get refused (a store without keys answers not_found): the user has no keys here.
      keyWaits.delete(f.ref);
      wait.resolve({ devices: [], at: Date.now() });
      return;
    }
    if (f.ref === "kp") return; // keys_publish refused: this device stays without keys
    if (f.code === "auth_failed") {
      loginFailed = f.message || "sign-in refused";
      return;
    }
    toast((f.code || "error") + ": " + (f.message || ""));
  }

  function targetOfMessage(m) {
    if (m.groupId !== undefined) return { groupId: m.groupId };
    return { peerId: m.senderId === me.userId ? m.recipientId : m.senderId };
  }

  // Adds or updates a stored message (live, backlog, history or lastMessage); returns the record.
  function upsert(c, m) {
    const key = msgKey(m.senderId, m.id);
    const mine = m.senderId === me.userId;
    let rec = c.messages.get(key);
    if (!rec) {
      rec = { id: m.id, senderId: m.senderId, mine, status: mine ? "sent" : "delivered" };
      c.messages.set(key, rec);
    }
    rec.senderName = m.senderName;
    if (m.e2e && typeof m.e2e === "object") {
      rec.e2e = m.e2e;
      rec.encrypted = true;
      if (rec.text === undefined && !rec.opening && !rec.undecryptable) openMessage(rec);
    } else {
      rec.text = m.text;
    }
    if (Array.isArray(m.attachments)) rec.attachments = m.attachments;
    const call = callOf(m);
    if (call) rec.call = call;
    rec.seq = m.seq;
    rec.time = m.serverTimestamp || m.timestamp;
    if (mine) {
      advance(rec, "sent");
      if (c.read >= rec.seq) advance(rec, "read");
      else if (c.delivered >= rec.seq) advance(rec, "delivered");
    }
    if (c.oldest === 0 || rec.seq < c.oldest) c.oldest = rec.seq;
    return rec;
  }

  function advance(rec, status) {
    if (rec.status === "failed") return;
    if (RANK[status] > RANK[rec.status]) rec.status = status;
  }

  function noteLatest(c, m) {
    if (!c.lastMessage || m.seq >= (c.lastMessage.seq || 0)) {
      c.lastMessage = {
        senderId: m.senderId, id: m.id, text: m.text, seq: m.seq, e2e: !!m.e2e,
        attachments: Array.isArray(m.attachments) ? m.attachments : null, call: callOf(m),
      };
      c.updatedAt = m.serverTimestamp || c.updatedAt;
    }
  }

  function onMessage(m, fromHistory) {
    const c = conv(targetOfMessage(m));
    const known = c.messages.has(msgKey(m.senderId, m.id));
    upsert(c, m);
    noteLatest(c, m);
    if (!fromHistory) {
      if (!known && m.senderId !== me.userId && m.seq > c.lastSeq && m.seq > c.readSeq) c.unread += 1;
      c.lastSeq = Math.max(c.lastSeq, m.seq);
      c.typing.delete(m.senderId);
      ackLater(c, m.seq);
      maybeRead(c);
      render();
    }
  }

  function ackLater(c, seq) {
    acksDue.set(c.key, Math.max(acksDue.get(c.key) || 0, seq));
    if (ackTimer === null) ackTimer = setTimeout(flushAcks, ACK_DELAY_MS);
  }

  function flushAcks() {
    ackTimer = null;
    for (const [key, seq] of acksDue) {
      const c = convs.get(key);
      if (c && send({ type: "receipt", ...targetOf(c), seq, status: "delivered" })) acksDue.delete(key);
    }
  }

  // Everything from others is read while the conversation is open and the page is visible.
  function maybeRead(c) {
    if (!connected || c.key !== openKey || document.visibilityState !== "visible") return;
    let top = 0;
    for (const rec of c.messages.values()) if (!rec.mine && rec.seq > top) top = rec.seq;
    if (top > c.readSeq) {
      if (send({ type: "receipt", ...targetOf(c), seq: top, status: "read" })) {
        c.readSeq = top;
        c.unread = 0;
      }
    } else if (c.unread && top >= c.lastSeq) {
      c.unread = 0;
    }
  }

  function onReceipt(f) {
    if (f.status === "sent" || f.status === "failed") {
      const rec = outbox.get(f.id);
      if (!rec) return;
      outbox.delete(f.id);
      if (f.status === "failed") {
        rec.status = "failed";
        rec.reason = f.reason || "failed";
        toast("message not sent: " + rec.reason + (f.message ? " — " + f.message : ""));
      } else {
        const c = conv(f.groupId !== undefined ? { groupId: f.groupId } : { peerId: f.peerId });
        // Re-key the record under its seq: it is now a stored message of the conversation.
        rec.seq = f.seq;
        rec.time = f.timestamp;
        advance(rec, "sent");
        if (c.read >= rec.seq) advance(rec, "read");
        else if (c.delivered >= rec.seq) advance(rec, "delivered");
        c.lastSeq = Math.max(c.lastSeq, f.seq);
        noteLatest(c, {
          senderId: me.userId, id: rec.id, text: rec.text, seq: f.seq, serverTimestamp: f.timestamp,
          e2e: rec.e2e, attachments: rec.attachments,
        });
      }
      render();
      return;
    }
    // delivered / read watermarks
    const c = conv(f.groupId !== undefined ? { groupId: f.groupId } : { peerId: f.peerId });
    if (f.userId === me.userId) {
      // My other device read this conversation.
      if (f.status === "read" && f.seq > c.readSeq) {
        c.readSeq = f.seq;
        c.unread = 0;
        for (const rec of c.messages.values()) if (!rec.mine && rec.seq > f.seq) c.unread += 1;
      }
    } else {
      // In a group a tick shows the furthest any member got (each member reports separately).
      if (f.status === "read") c.read = Math.max(c.read, f.seq);
      c.delivered = Math.max(c.delivered, f.seq);
      for (const rec of c.messages.values()) {
        if (!rec.mine || !rec.seq || rec.seq > f.seq) continue;
        advance(rec, f.status);
      }
    }
    render();
  }

  function onConversations(f) {
    for (const item of f.items || []) {
      const c = conv(item.groupId !== undefined ? { groupId: item.groupId } : { peerId: item.peerId });
      if (item.name) c.name = item.name;
      // Messages that reached this device after the relay took its snapshot stay counted.
      let later = 0;
      for (const rec of c.messages.values()) if (!rec.mine && rec.seq > item.lastSeq && rec.seq > item.readSeq) later += 1;
      c.readSeq = Math.max(c.readSeq, item.readSeq);
      c.unread = item.unread + later;
      c.lastSeq = Math.max(c.lastSeq, item.lastSeq);
      c.updatedAt = item.updatedAt > c.updatedAt ? item.updatedAt : c.updatedAt;
      if (item.lastMessage) noteLatest(c, item.lastMessage);
      if (c.key === openKey) maybeRead(c);
    }
    const peers = [];
    for (const c of convs.values()) if (c.peerId !== undefined) peers.push(c.peerId);
    if (peers.length) queryPresence(peers);
    render();
  }

  function requestHistory(c, older) {
    const ref = nextRef("h");
    const frame = { type: "history", ...targetOf(c), limit: PAGE, ref };
    if (older && c.oldest > 1) frame.before = c.oldest;
    if (send(frame)) historyRefs.set(ref, { key: c.key, older });
  }

  // After a reconnect: page forward from the newest seq this device holds.
  function fillGap(c) {
    let top = 0;
    for (const rec of c.messages.values()) if (rec.seq && rec.seq > top) top = rec.seq;
    const ref = nextRef("g");
    if (send({ type: "history", ...targetOf(c), after: top, limit: 100, ref })) {
      historyRefs.set(ref, { key: c.key, older: false, gap: true });
    }
  }

  function onHistory(f) {
    const req = historyRefs.get(f.ref);
    historyRefs.delete(f.ref);
    const c = conv(f.groupId !== undefined ? { groupId: f.groupId } : { peerId: f.peerId });
    const list = $("messages");
    const fromBottom = list.scrollHeight - list.scrollTop;
    for (const m of f.messages) {
      upsert(c, m);
      noteLatest(c, m);
      c.lastSeq = Math.max(c.lastSeq, m.seq);
    }
    if (req && req.gap) {
      if (f.hasMore) fillGap(c);
    } else {
      c.hasMore = f.hasMore;
      c.loaded = true;
    }
    maybeRead(c);
    render();
    if (req && req.older && c.key === openKey) list.scrollTop = list.scrollHeight - fromBottom;
    else if (c.key === openKey && !(req && req.gap)) list.scrollTop = list.scrollHeight;
  }

  function queryPresence(userIds) {
    send({ type: "presence", userIds: userIds.slice(0, 1000), ref: nextRef("p") });
  }

  function onStatus(f) {
    presence.set(f.userId, { status: f.status, lastSeen: f.lastSeen || null });
    render();
  }

  function onPresence(f) {
    for (const u of f.users || []) presence.set(u.userId, { status: u.status, lastSeen: u.lastSeen });
    render();
  }

  function onTyping(f) {
    const c = convs.get(f.groupId !== undefined ? "g:" + f.groupId : "u:" + f.userId) ||
      (f.groupId === undefined && f.state === "start" ? conv({ peerId: f.userId }) : null);
    if (!c) return;
    clearTimeout(c.typing.get(f.userId));
    if (f.state === "start") {
      c.typing.set(f.userId, setTimeout(() => { c.typing.delete(f.userId); render(); }, TYPING_SHOWN_MS));
    } else {
      c.typing.delete(f.userId);
    }
    render();
  }

  function onGroup(f) {
    const c = conv({ groupId: f.groupId });
    if (f.name) c.name = f.name;
    c.members = f.members || [];
    if (!c.updatedAt) c.updatedAt = new Date().toISOString();
    render();
  }

  // --- sending --------------------------------------------------------------------------------
  function newId() {
    const bytes = new Uint8Array(8);
    crypto.getRandomValues(bytes);
    return "w" + Date.now().toString(36) + "-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function messageFrame(rec) {
    const frame = {
      type: "message", id: rec.id, senderId: me.userId, senderName: me.userName,
      senderAvatar: me.userAvatar, timestamp: rec.timestamp, status: "pending",
    };
    if (rec.e2e) frame.e2e = rec.e2e;
    else if (rec.text) frame.text = rec.text;
    if (rec.attachments && rec.attachments.length) frame.attachments = rec.attachments.map((a) => ({ fileId: a.fileId }));
    if (rec.target.groupId !== undefined) frame.groupId = rec.target.groupId;
    else frame.recipientId = rec.target.peerId;
    return frame;
  }

  // A typed message (text, files or both): shown at once as pending, then readied in order.
  // Files are never end-to-end encrypted (the relay stores their bytes), so in an encrypted
  // conversation a caption goes as a message of its own, encrypted.
  function compose(c, text, files) {
    const encrypt = c.peerId !== undefined && c.e2e === "on";
    const parts = [];
    if (files.length) parts.push({ text: encrypt ? "" : text, files });
    if (text && (!files.length || encrypt)) parts.push({ text, files: [] });
    for (const part of parts) {
      const rec = {
        id: newId(), senderId: me.userId, mine: true, status: "pending", text: part.text, seq: 0,
        timestamp: new Date().toISOString(), target: targetOf(c), mustEncrypt: encrypt && !!part.text,
        attachments: part.files.map((f) => ({ fileId: "", name: f.name, size: f.size, mime: f.type, local: true })),
      };
      rec.time = rec.timestamp;
      c.messages.set(msgKey(me.userId, rec.id), rec);
      preparing = preparing.then(() => ready(c, rec, part.files));
    }
    stopTyping();
    render();
    const list = $("messages");
    list.scrollTop = list.scrollHeight;
  }

  // Uploads the files and seals the text, then sends; a failure marks the message failed.
  async function ready(c, rec, files) {
    try {
      if (files.length) {
        const infos = [];
        for (const f of files) infos.push(await RelayFiles.upload(await token(), f, f.name));
        rec.attachments = infos;
      }
      // (the relay takes no `e2e` beside `attachments`: a caption with files stays as composed)
      const self = rec.text && !files.length && c.peerId !== undefined ? await identity : null;
      if (self) {
        const [peer, mine] = await Promise.all([keysOf(c.peerId), keysOf(me.userId)]);
        if (peer.devices.length) {
          const others = mine.devices.filter((d) => d.deviceId !== me.deviceId);
          // This device's own box lets it read the message again from history.
          const recipients = [...peer.devices, ...others, { deviceId: me.deviceId, encKey: self.encKey }];
          rec.e2e = await RelayE2E.sealText(rec.text, self, recipients);
          rec.encrypted = true;
        }
      }
      if (rec.mustEncrypt && !rec.encrypted) {
        throw new Error(c.peerId + " has no verified device keys any more: not sent in clear");
      }
    } catch (e) {
      rec.status = "failed";
      rec.reason = e.message || String(e);
      toast("message not sent: " + rec.reason);
      render();
      return;
    }
    if (!me || rec.status === "failed") return;
    outbox.set(rec.id, rec);
    send(messageFrame(rec));
    render();
  }

  // The current httpToken, waiting for a connection when there is none yet.
  async function token() {
    while (!httpToken) await new Promise((resolve) => onlineWaiters.push(resolve));
    return httpToken;
  }

  // --- end-to-end encryption ------------------------------------------------------------------
  function publishKeys() {
    if (!identity) return;
    const sock = ws;
    identity.then((self) => self && RelayE2E.publishFrame(self)).then((frame) => {
      if (frame && ws === sock) send({ ...frame, ref: "kp" });
    }, () => {});
  }

  // This device's keys (made on first use), or null with e2eProblem saying why there are none.
  function loadIdentity(userId, deviceId) {
    return RelayE2E.unsupported().then(async (problem) => {
      if (problem) { e2eProblem = problem; return null; }
      try {
        return await RelayE2E.loadIdentity(userId, deviceId);
      } catch (e) {
        e2eProblem = "this device's keys could not be kept (" + (e.message || e) + ")";
        return null;
      }
    }).then((self) => { render(); return self; });
  }

  // A user's verified devices, asked of the relay each time while online, so that every message
  // is sealed for the devices there are now (a new device gets its box at once, a peer who just
  // published gets encrypted messages); offline, the last answer, else the answer once online.
  async function keysOf(userId) {
    for (;;) {
      const cached = keysCache.get(userId);
      if (!connected) {
        if (cached) return cached;
        await new Promise((resolve) => onlineWaiters.push(resolve));
        continue;
      }
      // null: the connection closed before the answer (asked again) or the user signed out.
      const answer = await new Promise((resolve) => {
        const ref = nextRef("k");
        keyWaits.set(ref, { userId, resolve });
        if (!send({ type: "keys_get", userId, ref })) {
          keyWaits.delete(ref);
          resolve(null);
        }
      });
      if (answer) return answer;
      if (!me) return { devices: [], at: 0 };
    }
  }

  async function onKeys(f) {
    const wait = f.ref !== undefined ? keyWaits.get(f.ref) : undefined;
    if (wait) keyWaits.delete(f.ref);
    if (f.ref === "kp") keysPublished = true;
    const devices = [];
    const bad = [];
    for (const d of f.devices || []) {
      try {
        devices.push(await RelayE2E.verifyDevice(f.userId, d));
      } catch (e) {
        bad.push(e.message);
      }
    }
    const before = keysCache.get(f.userId);
    const entry = { devices, at: Date.now(), bad };
    keysCache.set(f.userId, entry);
    const changed = keyBook ? keyBook.see(devices) : [];
    const c = convs.get("u:" + f.userId);
    // (keys are asked for before every sealed message: a bad device is reported once)
    const newlyBad = bad.length && (!before || (before.bad || []).join() !== bad.join());
    if (changed.length || newlyBad) {
      const text = changed.length
        ? "⚠ The identity key of " + changed.map((d) => d.userId + "'s device " + d.deviceId).join(", ") +
          " changed. Compare safety numbers before trusting it."
        : "⚠ " + bad.join("; ") + " (that device is left out)";
      if (c) c.keyWarning = text;
      toast(text);
    }
    if (c && e2eProblem === null) c.e2e = devices.length ? "on" : "off";
    if (wait) wait.resolve(entry);
    render();
  }

  async function openMessage(rec) {
    rec.opening = true;
    const self = identity ? await identity : null;
    let result;
    if (!self) result = { undecryptable: e2eProblem || "encryption is not available here" };
    else result = await RelayE2E.openText(rec.e2e, rec.senderId, self);
    rec.opening = false;
    if (result.text !== undefined) { rec.text = result.text; rec.undecryptable = null; }
    else rec.undecryptable = result.undecryptable;
    render();
  }

  async function showSafetyNumber(c) {
    const [peer, mine] = await Promise.all([keysOf(c.peerId), keysOf(me.userId)]);
    const number = await RelayE2E.safetyNumber(
      me.userId, mine.devices.map((d) => d.identityKey), c.peerId, peer.devices.map((d) => d.identityKey));
    c.safety = number;
    render();
  }

  // A call record: the message's top-level `call` object (contract v2, "Calls").
  function callOf(m) {
    return m.call && typeof m.call === "object" ? m.call : null;
  }

  function typingFrame(target, state) {
    return target.groupId !== undefined
      ? { type: "typing", groupId: target.groupId, state }
      : { type: "typing", recipientId: target.peerId, state };
  }

  function noteTyping() {
    const c = openKey && convs.get(openKey);
    if (!c) return;
    const now = Date.now();
    if (typingTarget && keyOf(typingTarget) !== c.key) stopTyping();
    if (!typingTarget || now - typingSentAt > TYPING_REFRESH_MS) {
      if (send(typingFrame(targetOf(c), "start"))) {
        typingTarget = targetOf(c);
        typingSentAt = now;
      }
    }
    clearTimeout(typingIdleTimer);
    typingIdleTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
  }

  function stopTyping() {
    clearTimeout(typingIdleTimer);
    if (typingTarget) send(typingFrame(typingTarget, "stop"));
    typingTarget = null;
  }

  // --- rendering ------------------------------------------------------------------------------
  function fmtTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    if (isNaN(d)) return "";
    const today = new Date();
    return d.toDateString() === today.toDateString()
      ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
      : d.toLocaleDateString([], { month: "short", day: "numeric" });
  }

  function presenceText(userId) {
    const p = presence.get(userId);
    if (!p) return ["", ""];
    if (p.status === "offline") return [p.lastSeen ? "last seen " + fmtTime(p.lastSeen) : "offline", ""];
    return [p.status, p.status === "online" ? "online" : ""];
  }

  function sortedConvs() {
    const list = Array.from(convs.values()).filter((c) => c.lastMessage || c.groupId !== undefined || c.key === openKey);
    list.sort((a, b) => (a.updatedAt < b.updatedAt ? 1 : a.updatedAt > b.updatedAt ? -1 : 0));
    return list;
  }

  function render() {
    if (!me) return;
    renderList();
    renderChat();
    renderCall();
    const c = openKey && convs.get(openKey);
    if (c) renderE2E(c);
    renderStaged(c);
  }

  // What the list shows of a last message: its text, else what it is.
  function previewOf(c, last) {
    if (last.call) return RelayCalls.recordText(last.call, last.senderId === me.userId);
    if (last.e2e) {
      const rec = last.id !== undefined && c.messages.get(msgKey(last.senderId, last.id));
      return rec && rec.text ? "🔒 " + rec.text : "🔒 Encrypted message";
    }
    if (last.text) return last.text;
    if (last.attachments && last.attachments.length) return "📎 " + last.attachments.map((a) => a.name).join(", ");
    return "";
  }

  function renderList() {
    const ul = $("conversations");
    const items = sortedConvs();
    $("no-conversations").hidden = items.length > 0;
    ul.replaceChildren();
    for (const c of items) {
      const li = el("li", "conv" + (c.key === openKey ? " active" : ""));
      li.dataset.key = c.key;
      li.tabIndex = 0;
      const name = el("span", "conv-name");
      if (c.peerId !== undefined) {
        const dot = el("span", "dot " + presenceText(c.peerId)[1]);
        name.append(dot);
      }
      name.append(document.createTextNode(c.groupId !== undefined ? "# " + c.name : c.name));
      li.append(name, el("span", "conv-time", fmtTime(c.updatedAt)));
      let preview = "";
      if (c.typing.size) preview = "typing…";
      else if (c.lastMessage) preview = (c.lastMessage.senderId === me.userId ? "You: " : "") + previewOf(c, c.lastMessage);
      else preview = "no messages yet";
      li.append(el("span", "conv-preview", preview));
      if (c.unread > 0 && c.key !== openKey) li.append(el("span", "unread", String(c.unread)));
      else li.append(el("span"));
      li.addEventListener("click", () => openConversation(c.key));
      li.addEventListener("keydown", (e) => { if (e.key === "Enter") openConversation(c.key); });
      ul.append(li);
    }
  }

  function renderChat() {
    const c = openKey && convs.get(openKey);
    $("chat").hidden = !c;
    $("empty-pane").hidden = !!c;
    if (!c) return;
    $("chat-title").textContent = c.groupId !== undefined ? "# " + c.name : c.name;
    const [ptext, pcls] = c.peerId !== undefined ? presenceText(c.peerId) : [c.members.length ? c.members.length + " members" : "", ""];
    const pres = $("chat-presence");
    pres.textContent = ptext;
    pres.className = "presence " + pcls;
    const typers = Array.from(c.typing.keys());
    $("chat-typing").textContent = typers.length
      ? (c.groupId !== undefined ? typers.join(", ") + (typers.length > 1 ? " are" : " is") + " typing…" : "typing…")
      : "";
    $("load-older").hidden = !(c.loaded && c.hasMore && c.oldest > 1);

    const list = $("messages");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    const recs = Array.from(c.messages.values());
    recs.sort((a, b) => (a.seq || Infinity) - (b.seq || Infinity));
    const ol = $("message-list");
    ol.replaceChildren();
    for (const rec of recs) {
      const li = el("li", "msg" + (rec.mine ? " mine" : ""));
      li.dataset.id = rec.id;
      li.dataset.status = rec.status;
      if (rec.seq) li.dataset.seq = String(rec.seq);
      if (!rec.mine && c.groupId !== undefined) li.append(el("div", "msg-sender", rec.senderName || rec.senderId));
      if (rec.call) {
        li.classList.add("call-record");
        li.append(el("div", "msg-text", "📞 " + RelayCalls.recordText(rec.call, rec.mine)));
      } else if (rec.encrypted && rec.text === undefined) {
        li.dataset.e2e = rec.undecryptable ? "undecryptable" : "opening";
        li.append(rec.undecryptable
          ? el("div", "msg-text msg-undecryptable", "🔒 This message cannot be read here: " + rec.undecryptable)
          : el("div", "msg-text", "🔒 decrypting…"));
      } else if (rec.text) {
        li.append(el("div", "msg-text", rec.text));
      }
      if (rec.encrypted && rec.text !== undefined) li.dataset.e2e = "read";
      if (rec.attachments && rec.attachments.length) {
        const ready = rec.attachments.every((a) => a.fileId);
        if (!ready) {
          li.append(el("div", "attachment-size", "⇪ " + rec.attachments.map((a) => a.name).join(", ") +
            (rec.status === "failed" ? "" : " — uploading…")));
        } else {
          if (!rec.attachNode) {
            rec.attachNode = RelayFiles.render(rec.attachments, () => httpToken, (t) => toast(t), el);
          }
          li.append(rec.attachNode);
        }
      }
      const meta = el("div", "msg-meta", fmtTime(rec.time));
      if (rec.encrypted) {
        const lock = el("span", "lock", "🔒");
        lock.title = "end-to-end encrypted";
        meta.prepend(lock);
      }
      if (rec.mine) {
        const tick = el("span", "tick " + rec.status, { pending: "◷", sent: "✓", delivered: "✓✓", read: "✓✓", failed: "!" }[rec.status]);
        tick.title = rec.status + (rec.reason ? ": " + rec.reason : "");
        meta.append(tick);
      }
      li.append(meta);
      ol.append(li);
    }
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  function renderE2E(c) {
    const status = $("chat-e2e");
    const direct = c.peerId !== undefined;
    let text = "";
    let cls = "";
    if (direct && e2eProblem !== null) text = "not encrypted: " + e2eProblem;
    else if (direct && c.e2e === "on") { text = "🔒 end-to-end encrypted"; cls = "on"; }
    else if (direct && c.e2e === "off") text = "not encrypted: " + c.peerId + " has no device keys";
    else if (!direct) text = "group messages are not end-to-end encrypted";
    status.textContent = text;
    status.className = "chat-e2e " + cls;
    $("safety-btn").hidden = !(direct && c.e2e === "on" && e2eProblem === null);
    $("key-warning-text").textContent = c.keyWarning || "";
    $("key-warning").hidden = !c.keyWarning;
    const safety = $("safety");
    safety.textContent = c.safety ? "Safety number with " + c.peerId + ": " + c.safety : "";
    safety.hidden = !c.safety;
  }

  function renderStaged(c) {
    const ul = $("staged");
    ul.replaceChildren();
    ul.hidden = staged.length === 0;
    staged.forEach((f, i) => {
      const li = el("li", "", f.name + " (" + RelayFiles.size(f.size) + ")");
      const remove = el("button", "", "×");
      remove.type = "button";
      remove.title = "Remove";
      remove.addEventListener("click", () => { staged.splice(i, 1); render(); });
      li.append(remove);
      ul.append(li);
    });
    if (staged.length && c && c.peerId !== undefined && c.e2e === "on") {
      ul.append(el("li", "note", "files are not end-to-end encrypted; the text is"));
    }
  }

  function renderCall() {
    const st = calls.state();
    const bar = $("callbar");
    $("call-btn").hidden = true;
    const c = openKey && convs.get(openKey);
    const busy = st && st.phase !== "ended";
    if (c && c.peerId !== undefined && c.peerId !== me.userId) {
      $("call-btn").hidden = false;
      $("call-btn").disabled = !!busy || !connected;
    }
    clearTimeout(callTimer);
    callTimer = null;
    if (!st || (st.phase === "ended" && Date.now() - st.endedAt > 4000)) {
      bar.hidden = true;
      return;
    }
    bar.hidden = false;
    bar.dataset.phase = st.phase;
    const who = st.peerName;
    let text;
    switch (st.phase) {
      case "calling": text = "Calling " + who + "…"; break;
      case "ringing": text = "Ringing " + who + "…"; break;
      case "incoming": text = who + " is calling"; break;
      case "connecting": text = "Connecting to " + who + "…"; break;
      case "connected": {
        const secs = Math.floor((Date.now() - st.connectedAt) / 1000);
        text = "In call with " + who + " · " + Math.floor(secs / 60) + ":" + String(secs % 60).padStart(2, "0");
        callTimer = setTimeout(renderCall, 1000);
        break;
      }
      default:
        text = "Call " + (RelayCalls.END_TEXT[st.reason] || "ended");
        callTimer = setTimeout(renderCall, 4100);
    }
    $("call-text").textContent = text;
    $("call-answer").hidden = st.phase !== "incoming";
    $("call-reject").hidden = st.phase !== "incoming";
    $("call-hangup").hidden = !(busy && st.phase !== "incoming");
  }

  let toastTimer = null;
  function toast(text) {
    const t = $("toast");
    t.textContent = text;
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.hidden = true; }, 4000);
  }

  // --- UI actions -----------------------------------------------------------------------------
  function openConversation(key) {
    stopTyping();
    openKey = key;
    const c = convs.get(key);
    if (c && !c.loaded) requestHistory(c, false);
    if (c && c.peerId !== undefined) queryPresence([c.peerId]);
    if (c && c.peerId !== undefined && connected) keysOf(c.peerId);
    if (c) maybeRead(c);
    render();
    const list = $("messages");
    list.scrollTop = list.scrollHeight;
    $("composer-text").focus();
  }

  function deviceIdFor(userId) {
    const name = "relay.deviceId:" + userId;
    let id = localStorage.getItem(name);
    if (!id) {
      const bytes = new Uint8Array(8);
      crypto.getRandomValues(bytes);
      id = "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
      localStorage.setItem(name, id);
    }
    return id;
  }

  function initials(name) {
    return name.split(/\s+/).filter(Boolean).slice(0, 2).map((w) => w[0].toUpperCase()).join("");
  }

  function signIn(userId, userName, token) {
    me = {
      userId, userName: userName || userId, userAvatar: initials(userName || userId) || "?",
      token: token || "", deviceId: deviceIdFor(userId),
    };
    localStorage.setItem("relay.lastUser", JSON.stringify({ userId, userName }));
    $("login").hidden = true;
    $("app").hidden = false;
    $("me").textContent = me.userName + " (" + me.userId + ")";
    keyBook = RelayE2E.keyBook("relay.keyBook:" + userId);
    identity = loadIdentity(me.userId, me.deviceId);
    attempt = 0;
    connect();
    render();
  }

  function signOut(reason) {
    calls.hangUp(); // while the socket is still open: the peer hears "hangup"
    const sock = ws;
    me = null;
    ws = null;
    connected = false;
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    if (sock) sock.close(1000);
    stopTyping();
    RelayFiles.forget();
    staged = [];
    identity = null;
    e2eProblem = null;
    keysCache.clear();
    for (const w of keyWaits.values()) w.resolve(null);
    keyWaits.clear();
    onlineWaiters = [];
    preparing = Promise.resolve();
    httpToken = null;
    clearTimeout(ackTimer);
    ackTimer = null;
    for (const c of convs.values()) for (const t of c.typing.values()) clearTimeout(t);
    convs.clear();
    outbox.clear();
    presence.clear();
    historyRefs.clear();
    acksDue.clear();
    openKey = null;
    $("app").hidden = true;
    $("login").hidden = false;
    const err = $("login-error");
    err.textContent = reason || "";
    err.hidden = !reason;
  }

  function init() {
    try {
      const last = JSON.parse(localStorage.getItem("relay.lastUser") || "null");
      if (last) {
        $("login-user").value = last.userId || "";
        $("login-name").value = last.userName || "";
      }
    } catch (e) { /* a corrupt entry only loses the prefill */ }

    $("login-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const userId = $("login-user").value.trim();
      if (userId) signIn(userId, $("login-name").value.trim(), $("login-token").value);
    });
    $("sign-out").addEventListener("click", () => signOut(""));
    $("open-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const peer = $("open-peer").value.trim();
      if (!peer || !me) return;
      $("open-peer").value = "";
      const c = conv({ peerId: peer });
      if (!c.updatedAt) c.updatedAt = new Date().toISOString();
      openConversation(c.key);
    });
    $("composer").addEventListener("submit", (e) => {
      e.preventDefault();
      const box = $("composer-text");
      const text = box.value.trim();
      const c = openKey && convs.get(openKey);
      if ((!text && !staged.length) || !c) return;
      box.value = "";
      compose(c, text, staged.splice(0));
    });
    $("attach").addEventListener("click", () => $("attach-input").click());
    $("attach-input").addEventListener("change", (e) => {
      const room = RelayFiles.MAX_ATTACHMENTS - staged.length;
      const chosen = Array.from(e.target.files || []);
      if (chosen.length > room) toast("at most " + RelayFiles.MAX_ATTACHMENTS + " files in one message");
      staged.push(...chosen.slice(0, Math.max(0, room)));
      e.target.value = "";
      render();
    });
    $("call-btn").addEventListener("click", () => {
      const c = openKey && convs.get(openKey);
      if (c && c.peerId !== undefined) calls.place(c.peerId, c.name);
    });
    $("call-answer").addEventListener("click", () => calls.answer());
    $("call-reject").addEventListener("click", () => calls.reject());
    $("call-hangup").addEventListener("click", () => calls.hangUp());
    $("key-warning-close").addEventListener("click", () => {
      const c = openKey && convs.get(openKey);
      if (c) { c.keyWarning = null; render(); }
    });
    $("safety-btn").addEventListener("click", () => {
      const c = openKey && convs.get(openKey);
      if (c && c.peerId !== undefined) showSafetyNumber(c);
    });
    $("composer-text").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        $("composer").requestSubmit();
      }
    });
    $("composer-text").addEventListener("input", (e) => {
      if (e.target.value.trim()) noteTyping(); else stopTyping();
    });
    $("load-older").addEventListener("click", () => {
      // scrolling up to the button may have asked for that page already
      const c = openKey && convs.get(openKey);
      if (c && !pendingOlder(c)) requestHistory(c, true);
    });
    $("messages").addEventListener("scroll", () => {
      const c = openKey && convs.get(openKey);
      const list = $("messages");
      if (c && c.loaded && c.hasMore && c.oldest > 1 && list.scrollTop < 30 && !pendingOlder(c)) {
        requestHistory(c, true);
      }
    });
    document.addEventListener("visibilitychange", () => {
      const c = openKey && convs.get(openKey);
      if (c) { maybeRead(c); render(); }
    });
    window.addEventListener("online", () => {
      if (me && !ws) { attempt = 0; connect(); }
    });
  }

  function pendingOlder(c) {
    for (const r of historyRefs.values()) if (r.key === c.key && r.older) return true;
    return false;
  }

  // For tests and debugging: a read-only view of the connection.
  window.relayChat = Object.freeze({
    state: () => ({ connected, attempt, pending: outbox.size, user: me && me.userId, url: ws && ws.url, deviceId: me && me.deviceId, keysPublished }),
    call: () => calls.state(),
    callPackets: () => calls.packetsReceived(),
    callRoute: () => calls.route(),
    disconnect: () => { if (ws) ws.close(4000, "test"); },
  });

  init();
})();
