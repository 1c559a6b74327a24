// A scripted Node `ws` client for the relay's interoperability tests.
// Usage: node ws_client.js URL STEPS_JSON
// Steps run in order once the socket is open:
//   {"send": "text"}               send a text message
//   {"sendRepeat": ["a", 65536]}   send a text message of one character repeated
//   {"sendBinary": 10}             send a binary message of 10 zero bytes
//   {"ping": "data"}               send a WebSocket ping
//   {"expect": "message"}          wait for the next event and fail unless it has that kind
//   {"close": 1000, "reason": ""}  start the closing handshake
// Every event is printed as one JSON line: open, message (length, sha256, head), pong, close
// (code, reason), error; the process exits when the connection is closed.
"use strict";
const crypto = require("crypto");
const WebSocket = require("ws");

const [url, stepsJson] = process.argv.slice(2);
const steps = JSON.parse(stepsJson || "[]");
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const queue = [];
let waiter = null;

function push(ev) {
  out(ev);
  if (waiter) {
    const w = waiter;
    waiter = null;
    w(ev);
  } else {
    queue.push(ev);
  }
}

function next() {
  return queue.length ? Promise.resolve(queue.shift()) : new Promise((r) => (waiter = r));
}

const ws = new WebSocket(url);
ws.on("message", (data, isBinary) =>
  push({
    event: "message",
    binary: isBinary,
    length: data.length,
    sha256: crypto.createHash("sha256").update(data).digest("hex"),
    head: isBinary ? null : data.toString("utf8").slice(0, 64),
  })
);
ws.on("pong", (data) => push({ event: "pong", data: data.toString("utf8") }));
ws.on("close", (code, reason) => push({ event: "close", code, reason: reason.toString("utf8") }));
ws.on("error", (err) => out({ event: "error", message: err.message }));
ws.on("open", async () => {
  out({ event: "open" });
  for (const step of steps) {
    if (step.send !== undefined) ws.send(step.send);
    else if (step.sendRepeat) ws.send(step.sendRepeat[0].repeat(step.sendRepeat[1]));
    else if (step.sendBinary !== undefined) ws.send(Buffer.alloc(step.sendBinary), { binary: true });
    else if (step.ping !== undefined) ws.ping(step.ping);
    else if (step.close !== undefined) ws.close(step.close, step.reason || "");
    else if (step.expect !== undefined) {
      const ev = await next();
      if (ev.event !== step.expect) {
        out({ event: "error", message: `expected ${step.expect}, got ${ev.event}` });
        ws.terminate();
        return;
      }
    }
  }
});
