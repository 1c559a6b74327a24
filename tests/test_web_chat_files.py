"""Files in the web chat (#17), in headless Chromium against a real relay: alice attaches a
picture and a text file; bob's page shows the picture decoded inline (fetched with the session's
httpToken, shown from a blob: URL) and the text file as a download of the very bytes sent."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
import trio
from support import start_relay
from web_browser import page_url, require_browser, scenario


@pytest.fixture(scope="module")
def browser_node() -> str:
    return require_browser()


def png(width: int, height: int) -> bytes:
    """A real RGB PNG of `width` x `height` pixels: a gradient, each row filter 0."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    rows = b"".join(
        b"\0" + b"".join(bytes((x * 30 % 256, y * 50 % 256, 200)) for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


async def test_a_picture_shows_inline_and_a_file_downloads(
    nursery: trio.Nursery, browser_node: str, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, web_chat=True, max_file_bytes=4096)
    picture = tmp_path / "sunset.png"
    picture.write_bytes(png(7, 5))
    assert picture.stat().st_size == 130
    notes = tmp_path / "notes.txt"
    notes.write_text("bring the map — and snacks\n", encoding="utf-8")
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(5000))
    args = [page_url(relay), str(picture), str(notes), str(big)]
    with trio.fail_after(120):
        async with scenario(browser_node, "files_chat.mjs", args, tmp_path / "stderr") as driver:
            sent = await driver.step("sent")
            # staged before sending, with the notice that files are not encrypted
            assert sent["staged"] == [
                "sunset.png (130 B)\N{MULTIPLICATION SIGN}",  # and its remove button
                "files are not end-to-end encrypted; the text is",
            ]
            assert sent["failed"] == 0
            # the picture, its caption (apart, since the conversation is encrypted), the notes
            assert len(sent["statuses"]) == 3
            shown = await driver.step("shown")
            assert shown["preview"] == "📎 notes.txt"
            assert shown["image"] == {
                "naturalWidth": 7,
                "naturalHeight": 5,
                "scheme": "blob:",
                "alt": "sunset.png",
            }
            assert shown["texts"] == ["a picture"]
            assert shown["links"] == ["sunset.png", "📎 notes.txt"]
            assert shown["download"] == {
                "name": "notes.txt",
                "text": "bring the map — and snacks\n",
            }
            step = await driver.step("too-large")
            assert step["reason"] == 'failed: "big.bin" is too large for the relay'
            assert step["toast"] == 'message not sent: "big.bin" is too large for the relay'
            assert step["bobLinks"] == 2
            await driver.done()
