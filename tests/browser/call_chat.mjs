// A voice call between two web chat pages (tests/test_web_chat_calls.py).
// Usage: node call_chat.mjs <relay http url>
// alice calls bob; bob's page rings (so does bob's Python device), bob answers, the two
// RTCPeerConnections connect over loopback and sound (the fake microphone) arrives on both
// sides; alice hangs up and both pages see the call end and its record. Then a second call
// that bob declines.
import { run, say, openChat, STEP_MS } from "./lib.mjs";

const [url] = process.argv.slice(2);

const phase = (page, want) => page.waitForFunction(
  (p) => { const s = window.relayChat.call(); return s && s.phase === p; }, want, { timeout: STEP_MS });
const callOf = (page) => page.evaluate(() => window.relayChat.call());
const records = (page) => page.locator("#message-list .msg.call-record .msg-text").allTextContents();

await run(url, async (open) => {
  const alice = await open("alice", "Alice Web");
  const bob = await open("bob", "Bob Web");
  await openChat(alice, "bob");
  await openChat(bob, "alice");

  await alice.click("#call-btn");
  await phase(alice, "ringing");
  await bob.locator('#callbar[data-phase="incoming"]').waitFor({ timeout: STEP_MS });
  say("ringing", {
    alice: await alice.locator("#call-text").textContent(),
    bob: await bob.locator("#call-text").textContent(),
    buttons: await bob.locator("#callbar button:visible").allTextContents(),
  });

  await bob.click("#call-answer");
  await phase(alice, "connected");
  await phase(bob, "connected");
  // The fake microphone's sound reaches each side over the peer connection.
  for (const page of [alice, bob]) {
    await page.waitForFunction(async () => (await window.relayChat.callPackets()) > 0, null, { timeout: STEP_MS, polling: 100 });
  }
  say("connected", {
    alice: await callOf(alice), bob: await callOf(bob),
    route: await alice.evaluate(() => window.relayChat.callRoute()),
  });

  await alice.click("#call-hangup");
  await phase(alice, "ended");
  await phase(bob, "ended");
  await alice.locator("#message-list .msg.call-record").waitFor({ timeout: STEP_MS });
  await bob.locator("#message-list .msg.call-record").waitFor({ timeout: STEP_MS });
  say("ended", {
    alice: await callOf(alice), bob: await callOf(bob),
    bobBar: await bob.locator("#call-text").textContent(),
    aliceRecords: await records(alice), bobRecords: await records(bob),
  });

  // A second call, declined.
  await alice.click("#call-btn");
  await bob.locator('#callbar[data-phase="incoming"]').waitFor({ timeout: STEP_MS });
  await bob.click("#call-reject");
  await phase(alice, "ended");
  await alice.locator("#message-list .msg.call-record").nth(1).waitFor({ timeout: STEP_MS });
  await bob.locator("#message-list .msg.call-record").nth(1).waitFor({ timeout: STEP_MS });
  say("declined", {
    alice: await callOf(alice), bob: await callOf(bob),
    aliceBar: await alice.locator("#call-text").textContent(),
    aliceRecords: await records(alice), bobRecords: await records(bob),
  });

  // Nobody to ring: carol has no connected device.
  await openChat(alice, "carol");
  await alice.click("#call-btn");
  await phase(alice, "ended");
  say("unavailable", { alice: await callOf(alice), bar: await alice.locator("#call-text").textContent() });
}, { media: true });
