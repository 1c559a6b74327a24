// Shared parts of the web chat's browser scenarios (files_chat.mjs, e2e_chat.mjs,
// call_chat.mjs): Debian's /usr/bin/chromium through playwright-core, one browser context per
// user (its own storage, so its own device and keys), and the line protocol with the Python test:
// one JSON object per step on stdout ({"step": ..., ...}); where the test must act first, a line
// on stdin naming what it did. A failed expectation prints {"step": "error", ...} and exits 1.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

export const STEP_MS = 10000;

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

/** Wait for the test's cue `word` on stdin. */
export async function expectLine(word) {
  const got = await nextLine();
  if (got !== word) throw new Error(`expected "${word}" from the test, got "${got}"`);
}

export const say = (step, extra = {}) => process.stdout.write(JSON.stringify({ step, ...extra }) + "\n");

/** Run `scenario(open)` in a fresh headless Chromium; `open(user, name)` gives a signed-in page
 * of a new context. Prints the final "done" step with what the pages reported wrong. */
export async function run(url, scenario, { media = false } = {}) {
  const args = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ];
  if (media) {
    // A fake microphone, granted without asking; the loopback interface for ICE, and no mDNS
    // names for host candidates (resolving them would multicast on the network).
    args.push("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
      "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns");
  }
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args });
  const pageErrors = [];
  const cspViolations = [];
  const origin = new URL(url).host;
  const external = [];
  const open = async (user, name) => {
    const context = await browser.newContext({ viewport: { width: 1000, height: 640 }, acceptDownloads: true });
    const page = await context.newPage();
    page.on("pageerror", (err) => pageErrors.push(user + ": " + String(err)));
    page.on("console", (msg) => {
      if (msg.type() === "error" && /Content Security Policy/i.test(msg.text())) cspViolations.push(user + ": " + msg.text());
    });
    page.on("request", (req) => {
      const u = new URL(req.url());
      if (u.host !== origin && u.protocol !== "data:" && u.protocol !== "blob:") external.push(req.url());
    });
    await page.goto(url);
    await page.fill("#login-user", user);
    await page.fill("#login-name", name);
    await page.click("#login-form button[type=submit]");
    // Signed in, and this device's keys are with the relay (so a peer finds them).
    await page.waitForFunction(() => window.relayChat.state().keysPublished, null, { timeout: STEP_MS });
    return page;
  };
  try {
    await scenario(open);
    say("done", { pageErrors, cspViolations, external });
  } catch (err) {
    say("error", { error: String((err && err.stack) || err), pageErrors, cspViolations });
    process.exitCode = 1;
  } finally {
    await browser.close();
    lines.close();
  }
}

/** Open (or start) the direct conversation with `peer`. */
export async function openChat(page, peer) {
  await page.fill("#open-peer", peer);
  await page.press("#open-peer", "Enter");
  await page.locator("#chat-title", { hasText: peer }).waitFor({ timeout: STEP_MS });
}

/** Type and send `text` in the open conversation. */
export async function type(page, text) {
  await page.fill("#composer-text", text);
  await page.press("#composer-text", "Enter");
}
