// Fetches a history page in headless Chromium over a WebSocket for tests/test_browser_deflate.py.
//
// Usage: node deflate.mjs <relay http url> <user-data-dir> <userId> <peerId>
// Opens the relay's page (its origin may open WebSockets to the relay), then from the page
// opens a WebSocket as Chromium's own (it offers permessage-deflate), signs in as <userId>,
// asks for the history with <peerId> and prints one JSON line: the negotiated extensions, the
// page's size as text and its messages. Any failure prints {"error": ...} and exits 1.
import { chromium } from "playwright-core";

const [url, userDataDir, userId, peerId] = process.argv.slice(2);

const browser = await chromium.launchPersistentContext(userDataDir, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = browser.pages()[0] || (await browser.newPage());
  await page.goto(url);
  const result = await page.evaluate(
    ([userId, peerId]) =>
      new Promise((resolve, reject) => {
        const ws = new WebSocket(location.href.replace(/^http/, "ws"));
        const timer = setTimeout(() => reject(new Error("no history page within 10 s")), 10000);
        ws.onerror = () => reject(new Error("WebSocket error"));
        ws.onopen = () => ws.send(JSON.stringify({ type: "auth", userId }));
        ws.onmessage = (event) => {
          const frame = JSON.parse(event.data);
          if (frame.type === "auth_ok") {
            ws.send(JSON.stringify({ type: "history", peerId, limit: 50, ref: "page" }));
          } else if (frame.type === "history" && frame.ref === "page") {
            clearTimeout(timer);
            resolve({
              extensions: ws.extensions,
              size: new TextEncoder().encode(event.data).length,
              messages: frame.messages.map((m) => ({ id: m.id, text: m.text })),
            });
            ws.close(1000);
          }
        };
      }),
    [userId, peerId],
  );
  process.stdout.write(JSON.stringify(result) + "\n");
} catch (err) {
  process.stdout.write(JSON.stringify({ error: String(err && err.stack || err) }) + "\n");
  process.exitCode = 1;
} finally {
  await browser.close();
}
