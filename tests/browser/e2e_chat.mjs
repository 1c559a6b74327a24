// End-to-end encryption between the web chat and the Python client
// (tests/test_web_chat_e2e.py). Usage: node e2e_chat.mjs <relay http url>
// alice (this page) reads what bob's Python client sealed for her device, sees the messages she
// cannot read marked as such, answers sealed, shows the safety number, and is warned when
// bob's device shows another identity key.
import { run, say, type, expectLine, STEP_MS } from "./lib.mjs";

const [url] = process.argv.slice(2);

await run(url, async (open) => {
  const alice = await open("alice", "Alice Web");
  await alice.waitForFunction(() => window.relayChat.state().keysPublished, null, { timeout: STEP_MS });
  say("ready", { deviceId: await alice.evaluate(() => window.relayChat.state().deviceId) });

  await expectLine("sealed");
  const item = alice.locator('.conv[data-key="u:bob"]');
  await item.locator(".unread", { hasText: /^3$/ }).waitFor({ timeout: STEP_MS });
  const preview = await item.locator(".conv-preview").textContent();
  await item.click();
  await alice.locator("#chat-e2e.on").waitFor({ timeout: STEP_MS });
  const settled = '#message-list .msg[data-e2e="read"], #message-list .msg[data-e2e="undecryptable"]';
  await alice.locator(settled).nth(2).waitFor({ timeout: STEP_MS });
  say("read", {
    preview,
    status: await alice.locator("#chat-e2e").textContent(),
    texts: await alice.locator("#message-list .msg-text").allTextContents(),
    states: await alice.locator("#message-list .msg").evaluateAll((l) => l.map((m) => m.dataset.e2e)),
    warning: await alice.locator("#key-warning-text").textContent(),
  });

  await type(alice, "reply from chromium ✓ 🔐");
  const mine = alice.locator('#message-list .msg.mine[data-status="sent"], #message-list .msg.mine[data-status="delivered"]');
  await mine.first().waitFor({ timeout: STEP_MS });
  say("sent", {
    id: await mine.first().getAttribute("data-id"),
    e2e: await mine.first().getAttribute("data-e2e"),
    lock: await mine.first().locator(".lock").count(),
  });

  await alice.click("#safety-btn");
  await alice.locator("#safety").waitFor({ timeout: STEP_MS });
  say("safety", { text: await alice.locator("#safety").textContent() });

  // bob's device publishes another identity key; asking again shows the warning.
  await expectLine("rekeyed");
  const before = await alice.locator("#safety").textContent();
  await alice.click("#safety-btn");
  await alice.locator("#key-warning", { hasText: "identity key" }).waitFor({ timeout: STEP_MS });
  await alice.waitForFunction((old) => document.getElementById("safety").textContent !== old, before, { timeout: STEP_MS });
  say("warned", {
    warning: await alice.locator("#key-warning-text").textContent(),
    safety: await alice.locator("#safety").textContent(),
  });
  await alice.click("#key-warning-close"); // seen: it goes until the next change
  await alice.locator("#key-warning").waitFor({ state: "hidden", timeout: STEP_MS });

  // A new page load of the same profile: the device's keys were kept (IndexedDB), so the
  // history reads again, her own message too (sealed for her own device as well).
  await alice.reload();
  await alice.click("#login-form button[type=submit]");
  await alice.waitForFunction(() => window.relayChat.state().connected, null, { timeout: STEP_MS });
  await alice.locator('.conv[data-key="u:bob"]').click();
  await alice.locator(settled).nth(3).waitFor({ timeout: STEP_MS });
  await alice.locator("#key-warning").waitFor({ timeout: STEP_MS });
  say("reloaded", {
    deviceId: await alice.evaluate(() => window.relayChat.state().deviceId),
    texts: await alice.locator("#message-list .msg-text").allTextContents(),
    warning: await alice.locator("#key-warning-text").textContent(),
  });

  // alice signs in on a second device: what she sends next is sealed for it too.
  const phone = await open("alice", "Alice Web");
  await type(alice, "to every device of mine");
  const last = alice.locator("#message-list .msg.mine").last();
  await alice.locator('#message-list .msg.mine:not([data-status="pending"]):not([data-status="failed"])').nth(1)
    .waitFor({ timeout: STEP_MS });
  await phone.locator('.conv[data-key="u:bob"]').click();
  await phone.locator(settled).nth(4).waitFor({ timeout: STEP_MS });
  say("other-device", {
    id: await last.getAttribute("data-id"),
    deviceId: await phone.evaluate(() => window.relayChat.state().deviceId),
    texts: await phone.locator("#message-list .msg-text").allTextContents(),
    states: await phone.locator("#message-list .msg").evaluateAll((l) => l.map((m) => m.dataset.e2e)),
  });

  // Typed as the connection drops: sealed (with the devices last known, or asked again once
  // back online) and sent after the page reconnected by itself.
  await alice.evaluate(() => window.relayChat.disconnect());
  await type(alice, "sealed while offline");
  const offline = alice.locator("#message-list .msg.mine").last();
  const offlineId = await offline.getAttribute("data-id");
  await alice.locator(`#message-list .msg.mine[data-id="${offlineId}"]:not([data-status="pending"])`).waitFor({ timeout: STEP_MS });
  say("resent", { id: offlineId, status: await offline.getAttribute("data-status"), e2e: await offline.getAttribute("data-e2e") });
});
