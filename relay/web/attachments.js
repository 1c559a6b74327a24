// Files in the web chat (contract v2, "Files"): upload with POST /files, show a received
// picture inline and any other file as a download, both read with GET /files/{fileId}.
// Invariants:
// - Every request carries the session's httpToken as a Bearer header; an <img src> or a plain
//   link cannot, so the page fetches the bytes itself and shows them from a blob: URL.
// - A file's bytes are fetched at most once per page (the promise is cached by fileId) and
//   only a picture of a type the relay serves inline is fetched before the user asks for it.
// - Names and types come from the relay's record and reach the DOM as text only.
"use strict";

(function (root) {
  // What the relay serves inline (HTTP-API.md, GET /files): shown in the conversation.
  const INLINE = new Set(["image/png", "image/jpeg", "image/gif", "image/webp"]);
  const INLINE_MAX_BYTES = 10 * 1024 * 1024;
  const MAX_ATTACHMENTS = 10;

  const cache = new Map(); // fileId -> Promise<blob: URL>

  class FileError extends Error {}

  function size(n) {
    if (n < 1024) return n + " B";
    if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KB";
    return (n / 1024 / 1024).toFixed(1) + " MB";
  }

  /** Upload one File/Blob; resolves to the relay's record {fileId, name, size, mime, sha256}. */
  async function upload(token, file, name) {
    const headers = { Authorization: "Bearer " + token };
    if (file.type) headers["Content-Type"] = file.type;
    let res;
    try {
      res = await fetch("/files?name=" + encodeURIComponent(name || file.name || "file"), {
        method: "POST", headers, body: file, cache: "no-store",
      });
    } catch (e) {
      throw new FileError("upload failed: the relay could not be reached");
    }
    let body = null;
    try { body = await res.json(); } catch (e) { body = null; }
    if (res.status === 201 && body && typeof body.fileId === "string") return body;
    if (res.status === 413) throw new FileError("\"" + (name || file.name) + "\" is too large for the relay");
    throw new FileError("upload failed (" + res.status + (body && body.message ? ": " + body.message : "") + ")");
  }

  /** A blob: URL of the file's bytes (fetched once). */
  function blobUrl(token, fileId) {
    let p = cache.get(fileId);
    if (!p) {
      p = (async () => {
        const res = await fetch("/files/" + encodeURIComponent(fileId), {
          headers: { Authorization: "Bearer " + token }, cache: "no-store",
        });
        if (res.status !== 200) throw new FileError(res.status === 404 ? "file not available" : "download failed (" + res.status + ")");
        return URL.createObjectURL(await res.blob());
      })();
      p.catch(() => cache.delete(fileId)); // a failed fetch is tried again next time
      cache.set(fileId, p);
    }
    return p;
  }

  function forget() {
    for (const p of cache.values()) p.then((u) => URL.revokeObjectURL(u), () => {});
    cache.clear();
  }

  const inline = (a) => INLINE.has(a.mime) && a.size <= INLINE_MAX_BYTES;

  /** The DOM of a message's attachments. `token()` gives the current httpToken (null offline);
   * `onError(text)` reports a failed download. `el(tag, cls, text)` makes an element. */
  function render(attachments, token, onError, el) {
    const box = el("div", "attachments");
    for (const a of attachments) {
      const item = el("div", "attachment");
      item.dataset.fileId = a.fileId;
      if (inline(a)) {
        const img = el("img", "attachment-image");
        img.alt = a.name;
        img.dataset.fileId = a.fileId;
        item.append(img);
        const t = token();
        if (t) blobUrl(t, a.fileId).then((u) => { img.src = u; }, (e) => { item.append(el("span", "attachment-error", e.message)); });
      }
      const link = el("a", "attachment-link", (inline(a) ? "" : "📎 ") + a.name);
      link.href = "#";
      link.dataset.fileId = a.fileId;
      link.title = a.mime + ", " + size(a.size);
      link.addEventListener("click", (e) => {
        e.preventDefault();
        const t = token();
        if (!t) { onError("not connected: the file can be downloaded once online"); return; }
        blobUrl(t, a.fileId).then((u) => {
          const save = document.createElement("a");
          save.href = u;
          save.download = a.name;
          document.body.append(save);
          save.click();
          save.remove();
        }, (err) => onError(a.name + ": " + err.message));
      });
      item.append(link, el("span", "attachment-size", size(a.size)));
      box.append(item);
    }
    return box;
  }

  root.RelayFiles = Object.freeze({ upload, blobUrl, forget, render, size, FileError, MAX_ATTACHMENTS });
})(globalThis);
