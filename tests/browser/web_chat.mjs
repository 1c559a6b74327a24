// Drives the relay's web chat in headless Chromium for tests/test_web_chat.py.
//
// Usage: node web_chat.mjs <relay http url> <screenshot path> <user-data-dir> [chat|paging]
// Talks to the Python test in lines: prints one JSON object per step on stdout
// ({"step": ..., ...}) and, where the scenario needs the Python user to act first, waits for
// a line on stdin naming what it did. Any failed expectation prints {"error": ...} and exits 1.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const [url, screenshotPath, userDataDir, scenario = "chat"] = process.argv.slice(2);
const STEP_MS = 5000;

const lines = createInterface({ input: process.stdin });
const waiting = [];
const queued = [];
lines.on("line", (line) => {
  const w = waiting.shift();
  if (w) w(line.trim()); else queued.push(line.trim());
});
function nextLine() {
  if (queued.length) return Promise.resolve(queued.shift());
  return new Promise((resolve) => waiting.push(resolve));
}
async function expectLine(word) {
  const got = await nextLine();
  if (got !== word) throw new Error(`expected "${word}" from the test, got "${got}"`);
}
const say = (step, extra = {}) => process.stdout.write(JSON.stringify({ step, ...extra }) + "\n");

const browser = await chromium.launchPersistentContext(userDataDir, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  viewport: { width: 1000, height: 640 },
  // The TLS test's relay has a self-signed certificate.
  ignoreHTTPSErrors: url.startsWith("https:"),
});
const pageErrors = [];
const cspViolations = [];
const external = [];
try {
  const page = browser.pages()[0] || (await browser.newPage());
  page.on("pageerror", (err) => pageErrors.push(String(err)));
  page.on("console", (msg) => {
    if (msg.type() === "error" && /Content Security Policy/i.test(msg.text())) cspViolations.push(msg.text());
  });
  const origin = new URL(url).host;
  page.on("request", (req) => {
    const u = new URL(req.url());
    if (u.host !== origin && u.protocol !== "data:") external.push(req.url());
  });

  await page.goto(url);
  await page.fill("#login-user", "alice");
  await page.fill("#login-name", "Alice Web");
  await page.click("#login-form button[type=submit]");
  if (scenario === "paging") await paging(page);
  else await chat(page);
  await page.screenshot({ path: screenshotPath });
  say("done", { pageErrors, cspViolations, external });
} catch (err) {
  say("error", { error: String(err && err.stack || err), pageErrors, cspViolations });
  process.exitCode = 1;
} finally {
  await browser.close();
  lines.close();
}

// A browser user and the Python user bob talk; bob already wrote to alice while she was away.
async function chat(page) {
  const bobItem = page.locator('.conv[data-key="u:bob"]');
  await bobItem.locator(".unread", { hasText: /^1$/ }).waitFor({ timeout: STEP_MS });
  say("listed", {
    unread: await bobItem.locator(".unread").textContent(),
    preview: await bobItem.locator(".conv-preview").textContent(),
  });

  // A live message to a conversation that is not open raises its unread count.
  await expectLine("sent2");
  await bobItem.locator(".unread", { hasText: /^2$/ }).waitFor({ timeout: STEP_MS });
  say("unread2", { unread: await bobItem.locator(".unread").textContent() });

  // Opening it shows the history, escaped, and the peer's presence; the page sends `read`.
  await bobItem.click();
  await page.locator("#message-list .msg").nth(1).waitFor({ timeout: STEP_MS });
  await page.locator("#chat-presence", { hasText: "online" }).waitFor({ timeout: STEP_MS });
  say("opened", {
    texts: await page.locator("#message-list .msg-text").allTextContents(),
    htmlElementsInMessages: await page.locator("#message-list .msg-text *").count(),
    title: await page.locator("#chat-title").textContent(),
    presence: await page.locator("#chat-presence").textContent(),
    unreadBadges: await bobItem.locator(".unread").count(),
  });

  // bob starts typing.
  await expectLine("typing");
  await page.locator("#chat-typing", { hasText: "typing" }).waitFor({ timeout: STEP_MS });
  say("typing-shown");

  // alice answers; the tick goes pending -> sent (relay) -> read (bob's receipt).
  await page.fill("#composer-text", "hi from the browser");
  await page.press("#composer-text", "Enter");
  const mine = page.locator("#message-list .msg.mine").last();
  await page.locator('#message-list .msg.mine[data-status="sent"], #message-list .msg.mine[data-status="delivered"], #message-list .msg.mine[data-status="read"]').first().waitFor({ timeout: STEP_MS });
  say("sent", { id: await mine.getAttribute("data-id"), status: await mine.getAttribute("data-status") });
  await expectLine("read");
  await page.locator('#message-list .msg.mine[data-status="read"]').first().waitFor({ timeout: STEP_MS });
  say("read", { id: await mine.getAttribute("data-id"), tick: await mine.locator(".tick").textContent() });

  // The connection drops; a message typed meanwhile stays pending, then goes out with the
  // same id once the page has reconnected by itself.
  await page.evaluate(() => window.relayChat.disconnect());
  await page.fill("#composer-text", "sent while offline");
  await page.press("#composer-text", "Enter");
  const offline = page.locator("#message-list .msg.mine").last();
  const pendingStatus = await offline.getAttribute("data-status");
  const offlineId = await offline.getAttribute("data-id");
  await page.locator(`#message-list .msg.mine[data-id="${offlineId}"][data-status="sent"]`)
    .or(page.locator(`#message-list .msg.mine[data-id="${offlineId}"][data-status="delivered"]`))
    .waitFor({ timeout: STEP_MS });
  say("resent", { id: offlineId, pendingStatus, state: await page.evaluate(() => window.relayChat.state()) });
}

// alice's other device already received bob's 120 messages, so this new device gets them
// only as history: 50 at first, 50 more by the button, the rest by scrolling to the top.
async function paging(page) {
  await page.locator('.conv[data-key="g:runners"]').waitFor({ timeout: STEP_MS });
  const bobItem = page.locator('.conv[data-key="u:bob"]');
  await bobItem.locator(".unread").waitFor({ timeout: STEP_MS });
  say("listed", {
    keys: await page.locator(".conv").evaluateAll((items) => items.map((i) => i.dataset.key)),
    group: await page.locator('.conv[data-key="g:runners"] .conv-name').textContent(),
    unread: await bobItem.locator(".unread").textContent(),
    preview: await bobItem.locator(".conv-preview").textContent(),
  });
  const texts = () => page.locator("#message-list .msg-text").allTextContents();
  const count = (n) => page.locator("#message-list .msg").nth(n - 1).waitFor({ timeout: STEP_MS });
  await bobItem.click();
  await count(50);
  await page.locator("#load-older").waitFor({ state: "visible", timeout: STEP_MS });
  say("page1", { texts: await texts() });
  // The button's own click, without the pointer's scroll into view: scrolling the list to its
  // top loads the next page by itself (page3 below), and the two could race.
  await page.locator("#load-older").dispatchEvent("click");
  await count(100);
  say("page2", { texts: await texts() });
  await page.evaluate(() => { document.getElementById("messages").scrollTop = 0; });
  await count(120);
  await page.locator("#load-older").waitFor({ state: "hidden", timeout: STEP_MS });
  say("page3", { texts: await texts(), socket: await page.evaluate(() => window.relayChat.state().url) });
}
