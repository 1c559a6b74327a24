// Files between two users of the web chat (tests/test_web_chat_files.py).
// Usage: node files_chat.mjs <relay http url> <picture.png> <notes file>
// alice attaches a picture with a caption, then a text file; bob's page shows the picture
// decoded inline and the text file as a download whose bytes are the file's.
import { readFile } from "node:fs/promises";
import { basename } from "node:path";
import { run, say, openChat, STEP_MS } from "./lib.mjs";

const [url, picture, notes, big] = process.argv.slice(2);

await run(url, async (open) => {
  const alice = await open("alice", "Alice Web");
  const bob = await open("bob", "Bob Web");

  await openChat(alice, "bob");
  // Both published keys: the conversation is encrypted, so the caption goes apart, sealed.
  await alice.locator("#chat-e2e.on").waitFor({ timeout: STEP_MS });
  await alice.setInputFiles("#attach-input", picture);
  const staged = await alice.locator("#staged li").allTextContents();
  await alice.fill("#composer-text", "a picture");
  await alice.press("#composer-text", "Enter");
  await alice.setInputFiles("#attach-input", notes);
  await alice.click("#send");
  const sent = '#message-list .msg.mine:not([data-status="pending"]):not([data-status="failed"])';
  await alice.locator(sent).nth(2).waitFor({ timeout: STEP_MS });
  // The uploader sees her picture too, from the relay.
  await alice.waitForFunction(() => {
    const img = document.querySelector("#message-list img.attachment-image");
    return img && img.complete && img.naturalWidth > 0;
  }, null, { timeout: STEP_MS });
  say("sent", {
    staged,
    statuses: await alice.locator("#message-list .msg.mine").evaluateAll((l) => l.map((m) => m.dataset.status)),
    failed: await alice.locator('#message-list .msg[data-status="failed"]').count(),
  });

  const item = bob.locator('.conv[data-key="u:alice"]');
  await item.waitFor({ timeout: STEP_MS });
  const preview = await item.locator(".conv-preview").textContent();
  await item.click();
  const handle = await bob.waitForFunction(() => {
    const img = document.querySelector("#message-list img.attachment-image");
    return img && img.complete && img.naturalWidth > 0 ? img : null;
  }, null, { timeout: STEP_MS });
  const image = await handle.evaluate((img) => ({
    naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight, scheme: new URL(img.src).protocol, alt: img.alt,
  }));
  await bob.locator('#message-list .msg[data-e2e="read"]').waitFor({ timeout: STEP_MS });

  // The other file is a link; clicking it saves the bytes under the file's name.
  const link = bob.locator("#message-list a.attachment-link", { hasText: basename(notes) });
  const [download] = await Promise.all([bob.waitForEvent("download", { timeout: STEP_MS }), link.click()]);
  const saved = await readFile(await download.path());
  say("shown", {
    preview,
    image,
    texts: await bob.locator("#message-list .msg-text").allTextContents(),
    links: await bob.locator("#message-list a.attachment-link").allTextContents(),
    sizes: await bob.locator("#message-list .attachment-size").allTextContents(),
    download: { name: download.suggestedFilename(), text: saved.toString("utf8") },
  });

  // A file over the relay's limit: the message fails, saying why, and nothing reaches bob.
  await alice.setInputFiles("#attach-input", big);
  await alice.click("#send");
  const failed = alice.locator('#message-list .msg.mine[data-status="failed"]');
  await failed.waitFor({ timeout: STEP_MS });
  say("too-large", {
    reason: await failed.locator(".tick").getAttribute("title"),
    toast: await alice.locator("#toast").textContent(),
    bobLinks: await bob.locator("#message-list a.attachment-link").count(),
  });
});
