// Baseline for `python -m bench`: the original design — Node.js, the `ws` package, one
// process routing frames by userId. It speaks the subset of protocol v1 the benchmark uses:
//   auth -> auth_ok
//   message (recipientId) -> `sent` receipt (with seq) to the sender, the message with
//     status "delivered", seq and serverTimestamp to every socket of the recipient
//   group_create -> `group` frame to every member; message (groupId) -> every member's sockets
//     except the sending socket
//   ping -> pong
// No store: state lives in memory for the life of the process.
//
// Usage: node server.js [--host 127.0.0.1] [--port 0]; prints "listening on ws://HOST:PORT".
'use strict';

const http = require('http');
const { WebSocketServer } = require('ws');

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const host = arg('--host', '127.0.0.1');
const port = Number(arg('--port', '0'));

const sockets = new Map(); // userId -> Set<WebSocket>
const groups = new Map(); // groupId -> {name, members: string[]}
const seqs = new Map(); // conversation key -> last seq

function nowIso() {
  return new Date().toISOString();
}

function nextSeq(key) {
  const seq = (seqs.get(key) || 0) + 1;
  seqs.set(key, seq);
  return seq;
}

function sendTo(userId, text, except) {
  const set = sockets.get(userId);
  if (!set) return;
  for (const ws of set) {
    if (ws !== except && ws.readyState === 1) ws.send(text);
  }
}

function reply(ws, obj) {
  ws.send(JSON.stringify(obj));
}

function error(ws, code, message, ref) {
  const frame = { type: 'error', code, message };
  if (ref !== undefined) frame.ref = ref;
  reply(ws, frame);
}

function onMessage(ws, data, isBinary) {
  if (isBinary) {
    ws.close(1003, 'binary frames are not supported');
    return;
  }
  let frame;
  try {
    frame = JSON.parse(data.toString());
  } catch (e) {
    error(ws, 'bad_json', 'not JSON');
    return;
  }
  if (frame === null || typeof frame !== 'object' || typeof frame.type !== 'string') {
    error(ws, 'bad_frame', 'a frame is an object with a string type');
    return;
  }
  if (frame.type === 'auth') {
    if (typeof frame.userId !== 'string' || frame.userId.length === 0) {
      error(ws, 'auth_failed', 'userId is required');
      ws.close(1008, 'auth failed');
      return;
    }
    ws.userId = frame.userId;
    let set = sockets.get(frame.userId);
    if (!set) {
      set = new Set();
      sockets.set(frame.userId, set);
    }
    set.add(ws);
    reply(ws, {
      type: 'auth_ok',
      userId: frame.userId,
      deviceId: frame.deviceId || 'd' + Math.random().toString(36).slice(2),
      sessionId: 's' + Math.random().toString(36).slice(2),
      serverTime: nowIso(),
    });
    return;
  }
  if (ws.userId === undefined) {
    error(ws, 'unauthenticated', 'auth first', frame.id);
    return;
  }
  switch (frame.type) {
    case 'message': {
      if (frame.senderId !== ws.userId) {
        reply(ws, { type: 'receipt', id: frame.id, status: 'failed', reason: 'forbidden' });
        return;
      }
      const serverTimestamp = nowIso();
      if (typeof frame.groupId === 'string') {
        const group = groups.get(frame.groupId);
        if (!group || !group.members.includes(ws.userId)) {
          reply(ws, { type: 'receipt', id: frame.id, status: 'failed', reason: 'forbidden' });
          return;
        }
        const seq = nextSeq('g:' + frame.groupId);
        reply(ws, { type: 'receipt', id: frame.id, groupId: frame.groupId, status: 'sent', seq, timestamp: serverTimestamp });
        frame.status = 'delivered';
        frame.seq = seq;
        frame.serverTimestamp = serverTimestamp;
        const text = JSON.stringify(frame);
        for (const member of group.members) sendTo(member, text, ws);
        return;
      }
      if (typeof frame.recipientId !== 'string') {
        reply(ws, { type: 'receipt', id: frame.id, status: 'failed', reason: 'invalid' });
        return;
      }
      const a = ws.userId;
      const b = frame.recipientId;
      const seq = nextSeq(a < b ? a + '\u0000' + b : b + '\u0000' + a);
      reply(ws, { type: 'receipt', id: frame.id, peerId: b, status: 'sent', seq, timestamp: serverTimestamp });
      frame.status = 'delivered';
      frame.seq = seq;
      frame.serverTimestamp = serverTimestamp;
      const text = JSON.stringify(frame);
      sendTo(b, text);
      if (b !== a) sendTo(a, text, ws); // the sender's other devices
      return;
    }
    case 'group_create': {
      const members = Array.isArray(frame.members) ? frame.members.filter((m) => typeof m === 'string') : [];
      if (!members.includes(ws.userId)) members.push(ws.userId);
      groups.set(frame.groupId, { name: frame.name || '', members });
      const text = JSON.stringify({ type: 'group', groupId: frame.groupId, name: frame.name || '', members, ref: frame.ref });
      for (const member of members) sendTo(member, text);
      return;
    }
    case 'ping':
      reply(ws, { type: 'pong', ref: frame.ref, serverTime: nowIso() });
      return;
    default:
      error(ws, 'unknown_type', 'unknown frame type ' + frame.type, frame.id);
  }
}

const server = http.createServer((req, res) => {
  res.writeHead(req.url === '/healthz' ? 200 : 404);
  res.end();
});
const wss = new WebSocketServer({ server, maxPayload: 64 * 1024 });

wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => onMessage(ws, data, isBinary));
  ws.on('close', () => {
    if (ws.userId === undefined) return;
    const set = sockets.get(ws.userId);
    if (set) {
      set.delete(ws);
      if (set.size === 0) sockets.delete(ws.userId);
    }
  });
  ws.on('error', () => {});
});

server.listen(port, host, () => {
  const addr = server.address();
  console.log(`listening on ws://${addr.address}:${addr.port}`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => process.exit(0));
}
